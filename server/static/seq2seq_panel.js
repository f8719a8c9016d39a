// Encoder-decoder models over digit tokens (ids 0-9 are the digits): the source digits,
// decoded to digits and the card's special tokens.

import { postStream } from "./api.js";
import { $, clearError, isAbort, setStatus, showError } from "./ui.js";

// How special tokens read in the output: the separator as "=", others by name.
const SHOWN = { separator: "=" };

export function tokenLabels(card) {
  const labels = new Map();
  for (const [name, id] of Object.entries(card.special_tokens || {})) {
    labels.set(id, name in SHOWN ? SHOWN[name] : `<${name}>`);
  }
  return labels;
}

export function setupSeq2seqPanel() {
  const form = $("panel-seq2seq");
  const status = $("seq2seq-status");
  const output = $("seq2seq-output");
  let card = null;
  let running = false;

  function sourceIds() {
    const digits = $("source").value.trim();
    if (!/^[0-9]+$/.test(digits)) throw new Error("the source must be digits 0-9, at least one");
    return [...digits].map(Number); // the server pads sources when the card says to
  }

  async function decode(event) {
    event.preventDefault();
    if (running || !card) return;
    clearError();
    let input;
    try {
      input = sourceIds();
    } catch (error) {
      showError(error);
      return;
    }
    const labels = tokenLabels(card);
    const eos = (card.special_tokens || {}).eos;
    const ids = [];
    output.textContent = "";
    $("seq2seq-tokens").textContent = "–";
    running = true;
    $("seq2seq-run").disabled = true;
    setStatus(status, "streaming", "decoding…");
    try {
      const body = { model: card.id, input, max_new_tokens: card.limits.max_new_tokens };
      const done = await postStream("/v1/seq2seq", body, (name, data) => {
        if (name !== "token") return;
        ids.push(data.token);
        if (data.token !== eos) output.textContent += labels.get(data.token) ?? String(data.token);
      });
      $("seq2seq-tokens").textContent = `[${ids.join(", ")}]`;
      setStatus(status, "done", `done (${done.finish_reason})`);
    } catch (error) {
      if (!isAbort(error)) showError(error);
      setStatus(status, "error", "error");
    } finally {
      running = false;
      $("seq2seq-run").disabled = false;
    }
  }

  form.addEventListener("submit", decode);

  return {
    show(selected) {
      card = selected;
      $("seq2seq-hint").textContent = card.task || "";
    },
  };
}
