// Sessions on byte-level text models: open one, stream each turn from the session's KV
// cache (the reply shows how many prompt tokens came from the cache), close it.

import { deleteJson, postJson, postStream } from "./api.js";
import { StreamMeter, formatNumber } from "./meter.js";
import { $, clearError, intValue, setStatus, showError } from "./ui.js";

export const canHoldSession = (card) =>
  card && card.kind === "autoregressive" && card.tokenizer === "bytes";

export function setupSessionPanel() {
  const state = $("session-state");
  const transcript = $("transcript");
  let session = null; // {id, model}
  let selected = null;
  let busy = false;

  function sync() {
    const open = session !== null;
    $("session-open").disabled = open || !canHoldSession(selected);
    $("session-open").title = canHoldSession(selected) ? "" : "pick a text model to open a session";
    $("session-close").disabled = !open || busy;
    $("session-prompt").disabled = !open;
    $("session-send").disabled = !open || busy;
  }

  function closed(reason) {
    session = null;
    $("session-id").textContent = "–";
    setStatus(state, "closed", reason);
    sync();
  }

  async function open() {
    clearError();
    try {
      const info = await postJson("/v1/sessions", { model: selected.id });
      session = { id: info.session_id, model: info.model };
      transcript.replaceChildren();
      $("session-id").textContent = info.session_id;
      $("session-cached").textContent = "–";
      setStatus(state, "open", `open on ${info.model}`);
    } catch (error) {
      showError(error);
    }
    sync();
  }

  async function close() {
    if (!session) return;
    clearError();
    try {
      await deleteJson(`/v1/sessions/${encodeURIComponent(session.id)}`);
      closed("closed");
    } catch (error) {
      showError(error);
      if (error.status === 404) closed("expired");
    }
  }

  function turn(role, text) {
    const item = document.createElement("li");
    item.className = `turn ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "you" : session.model;
    const body = document.createElement("pre");
    body.textContent = text;
    item.append(who, body);
    transcript.append(item);
    return { item, body };
  }

  async function send(event) {
    event.preventDefault();
    if (!session || busy) return;
    clearError();
    const prompt = $("session-prompt").value;
    turn("user", prompt);
    const reply = turn("reply", "");
    const text = reply.body.appendChild(document.createTextNode(""));
    const meta = document.createElement("p");
    meta.className = "turn-meta";
    reply.item.append(meta);
    busy = true;
    sync();
    setStatus(state, "streaming", "streaming…");
    const meter = new StreamMeter();
    const body = {
      prompt,
      max_new_tokens: intValue($("session-max-new-tokens"), 48),
      temperature: Number($("session-temperature").value) || 0,
    };
    try {
      const done = await postStream(`/v1/sessions/${encodeURIComponent(session.id)}/generate`, body, (name, data) => {
        if (name !== "token") return;
        meter.tick();
        text.appendData(data.text ?? "");
        transcript.scrollTop = transcript.scrollHeight;
      });
      const u = done.usage;
      reply.item.dataset.cached = String(u.cached_tokens);
      meta.textContent =
        `prompt ${u.prompt_tokens} · cached ${u.cached_tokens} · new ${u.completion_tokens} · ` +
        `TTFT ${formatNumber(meter.ttftMs(), 0)} ms · ${formatNumber(meter.tokensPerSecond())} tokens/s`;
      $("session-cached").textContent = String(u.cached_tokens);
      setStatus(state, "open", `open on ${session.model}`);
    } catch (error) {
      showError(error);
      meta.textContent = "failed";
      if (error.status === 404) closed("expired");
      else setStatus(state, "open", `open on ${session.model}`);
    } finally {
      busy = false;
      sync();
    }
  }

  $("session-open").addEventListener("click", open);
  $("session-close").addEventListener("click", close);
  $("session-form").addEventListener("submit", send);

  return {
    show(card) {
      selected = card;
      sync();
    },
  };
}
