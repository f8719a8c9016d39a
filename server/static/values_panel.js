// Value models with one number per step: the forecaster (autoregressive, streamed
// forecast plotted after its context) and the sine regressor (POST /v1/predict; the
// input plotted with the fitted A*sin(2*pi*f*t + phi)).

import { postJson, postStream } from "./api.js";
import { drawPlot } from "./plot.js";
import { formatValues, multiSine, oneSine, parseValues, sineAt } from "./signals.js";
import { $, clearError, intValue, setStatus, showError } from "./ui.js";

const isForecaster = (card) => card.kind === "autoregressive";
// A regressor with 3 outputs over a 1-d signal reads as (amplitude, frequency, phase).
const isSineFit = (card) => card.kind === "regression" && card.output_dim === 3;

export function setupValuesPanel() {
  const form = $("panel-values");
  const input = $("values-input");
  const status = $("values-status");
  const plot = $("plot");
  const caption = $("plot-caption");
  const prediction = $("prediction");
  let card = null;
  let example = null; // the generated example (its clean signal or true parameters)
  let running = false;

  input.addEventListener("input", () => {
    example = null;
  });

  function contextSeries(values) {
    return { label: "input", cls: "context", dots: !isForecaster(card), points: values.map((v, t) => [t, v]) };
  }

  function fillExample() {
    clearError();
    example = isForecaster(card) ? multiSine(96, 2 + Math.floor(Math.random() * 2)) : oneSine(64);
    input.value = formatValues(example.values);
    prediction.hidden = true;
    drawPlot(plot, [contextSeries(example.values)]);
    caption.textContent = `Example input: ${example.values.length} noisy steps. Now run the model.`;
  }

  function drawForecast(values, forecast) {
    const series = [contextSeries(values)];
    if (example && example.clean) {
      const n = values.length;
      const truth = Array.from({ length: forecast.length + 1 }, (_, i) => [n - 1 + i, example.clean(n - 1 + i)]);
      series.push({ label: "true continuation", cls: "truth", points: truth });
    }
    const start = [values.length - 1, values[values.length - 1]];
    series.push({ label: "forecast", cls: "forecast", points: [start, ...forecast.map((v, i) => [values.length + i, v])] });
    drawPlot(plot, series);
  }

  async function forecast(values) {
    const steps = intValue($("forecast-steps"), 32);
    const outputs = [];
    let pending = false;
    const body = { model: card.id, input: values.map((v) => [v]), max_new_tokens: steps };
    const done = await postStream("/v1/generate", body, (name, data) => {
      if (name !== "token") return;
      outputs.push(data.value[0]);
      if (!pending) {
        pending = true; // redraw at most once a frame while values stream in
        requestAnimationFrame(() => {
          pending = false;
          drawForecast(values, outputs);
        });
      }
    });
    drawForecast(values, outputs);
    caption.textContent = `${values.length} input steps, then ${outputs.length} forecast steps (${done.finish_reason}).`;
  }

  function showPrediction(rows) {
    prediction.replaceChildren();
    for (const [term, value, truth] of rows) {
      const item = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value.toFixed(4);
      dd.dataset.value = String(value);
      if (truth !== undefined) dd.title = `example's true value: ${truth.toFixed(4)}`;
      item.append(dt, dd);
      if (truth !== undefined) {
        const note = document.createElement("dd");
        note.className = "truth-note";
        note.textContent = `true ${truth.toFixed(4)}`;
        item.append(note);
      }
      prediction.append(item);
    }
    prediction.hidden = false;
  }

  async function predict(values) {
    const answer = await postJson("/v1/predict", { model: card.id, inputs: [values.map((v) => [v])] });
    const out = answer.outputs[0];
    const series = [contextSeries(values)];
    if (isSineFit(card)) {
      const [a, f, phi] = out;
      const fine = Array.from({ length: (values.length - 1) * 4 + 1 }, (_, i) => [i / 4, sineAt(a, f, phi, i / 4)]);
      series.push({ label: "fitted A·sin(2πft+φ)", cls: "forecast", points: fine });
      const t = example && example.truth;
      showPrediction([
        ["Amplitude A", a, t?.amplitude],
        ["Frequency f (cycles/step)", f, t?.frequency],
        ["Phase φ (rad)", phi, t?.phase],
      ]);
    } else {
      showPrediction(out.map((v, i) => [`output ${i}`, v]));
    }
    drawPlot(plot, series);
    caption.textContent = `${values.length} input steps and the model's prediction.`;
  }

  async function run(event) {
    event.preventDefault();
    if (running || !card) return;
    clearError();
    let values;
    try {
      values = parseValues(input.value);
      if (values.length === 0) throw new Error("enter input values, or pick “Example input”");
    } catch (error) {
      showError(error);
      return;
    }
    running = true;
    $("run-values").disabled = true;
    setStatus(status, "streaming", "running…");
    try {
      await (isForecaster(card) ? forecast(values) : predict(values));
      setStatus(status, "done", "done");
    } catch (error) {
      showError(error);
      setStatus(status, "error", "error");
    } finally {
      running = false;
      $("run-values").disabled = false;
    }
  }

  $("example-input").addEventListener("click", fillExample);
  form.addEventListener("submit", run);

  return {
    supports: (c) => c.input_form === "values" && c.input_dim === 1 && (isForecaster(c) || c.kind === "regression"),
    show(selected) {
      if (card && card.id === selected.id) return;
      card = selected;
      example = null;
      input.value = "";
      plot.replaceChildren();
      prediction.hidden = true;
      setStatus(status, "idle", "idle");
      $("forecast-steps-label").hidden = !isForecaster(card);
      $("forecast-steps").max = String(card.limits.max_new_tokens);
      $("run-values").textContent = isForecaster(card) ? "Forecast" : "Predict";
      caption.textContent = "Pick “Example input”, then run the model.";
    },
  };
}
