// Byte-level text models: stream a generation (optionally speculative, with a draft
// model) token by token, with live time to first token and tokens/s.

import { postStream } from "./api.js";
import { StreamMeter, formatNumber } from "./meter.js";
import { $, clearError, intValue, isAbort, setStatus, showError } from "./ui.js";

// Models that can draft for `target`: other byte-level autoregressive models sharing its
// vocabulary, smallest first (a draft should be cheaper than its target).
export function draftCandidates(target, cards) {
  return cards
    .filter((c) => c.id !== target.id && c.kind === "autoregressive" && c.tokenizer === "bytes")
    .filter((c) => c.vocab_size === target.vocab_size)
    .sort((a, b) => a.parameters - b.parameters);
}

export function setupTextPanel() {
  const form = $("panel-text");
  const output = $("output");
  const status = $("gen-status");
  const speculative = $("speculative");
  const draftSelect = $("draft-select");
  const draftSteps = $("draft-steps");
  let card = null;
  let controller = null;

  function syncSpeculative() {
    const on = speculative.checked && !speculative.disabled;
    draftSelect.disabled = !on;
    draftSteps.disabled = !on;
  }
  speculative.addEventListener("change", syncSpeculative);

  function resetStats() {
    for (const id of ["ttft", "tps", "finish-reason", "usage", "spec-stats"]) $(id).textContent = "–";
    $("token-count").textContent = "0";
    $("spec-box").hidden = true;
  }

  function showMeter(meter) {
    $("ttft").textContent = formatNumber(meter.ttftMs(), 0);
    $("tps").textContent = formatNumber(meter.tokensPerSecond(), 1);
    $("token-count").textContent = String(meter.count);
  }

  function showDone(done) {
    const u = done.usage || {};
    $("finish-reason").textContent = done.finish_reason;
    $("usage").textContent = `prompt ${u.prompt_tokens} · completion ${u.completion_tokens} · cached ${u.cached_tokens}`;
    if (done.speculative) {
      const s = done.speculative;
      $("spec-box").hidden = false;
      $("spec-stats").textContent =
        `accepted ${s.accepted}/${s.proposed} (${(100 * s.acceptance_rate).toFixed(1)}%) in ${s.rounds} rounds, α ${s.alpha.toFixed(2)}`;
    }
  }

  async function generate(event) {
    event.preventDefault();
    if (controller || !card) return;
    clearError();
    const body = {
      model: card.id,
      prompt: $("prompt").value,
      max_new_tokens: intValue($("max-new-tokens"), 64),
      temperature: Number($("temperature").value) || 0,
    };
    const seed = intValue($("seed"), null);
    if (seed !== null) body.seed = seed;
    let path = "/v1/generate";
    if (speculative.checked && !speculative.disabled) {
      path = "/v1/speculative";
      body.draft_model = draftSelect.value;
      body.draft_steps = intValue(draftSteps, 4);
    }
    output.textContent = "";
    const text = output.appendChild(document.createTextNode(""));
    resetStats();
    controller = new AbortController();
    $("generate").disabled = true;
    $("stop").disabled = false;
    output.setAttribute("aria-busy", "true");
    setStatus(status, "streaming", "streaming…");
    const meter = new StreamMeter();
    try {
      const done = await postStream(
        path,
        body,
        (name, data) => {
          if (name !== "token") return;
          meter.tick();
          text.appendData(data.text ?? "");
          showMeter(meter);
          output.scrollTop = output.scrollHeight;
        },
        controller.signal,
      );
      showMeter(meter);
      showDone(done);
      setStatus(status, "done", `done (${done.finish_reason})`);
    } catch (error) {
      if (isAbort(error)) {
        setStatus(status, "stopped", "stopped");
      } else {
        showError(error);
        setStatus(status, "error", "error");
      }
    } finally {
      controller = null;
      $("generate").disabled = false;
      $("stop").disabled = true;
      output.setAttribute("aria-busy", "false");
    }
  }

  form.addEventListener("submit", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());

  return {
    show(selected, cards) {
      card = selected;
      const max = card.limits.max_new_tokens;
      const tokens = $("max-new-tokens");
      tokens.max = String(max);
      if (intValue(tokens, 0) > max) tokens.value = String(max);
      const drafts = draftCandidates(card, cards);
      draftSelect.replaceChildren(...drafts.map((c) => new Option(c.id, c.id)));
      speculative.disabled = drafts.length === 0;
      speculative.title = drafts.length ? "" : "no other model shares this model's vocabulary";
      syncSpeculative();
    },
  };
}
