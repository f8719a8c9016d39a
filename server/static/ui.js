// Small DOM helpers shared by the panels: element lookup, the error banner, status chips.

import { ApiError } from "./api.js";

export function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no #${id}`);
  return node;
}

export function showError(error) {
  const banner = $("error");
  banner.textContent = error instanceof ApiError ? error.describe() : String(error.message || error);
  banner.hidden = false;
}

export function clearError() {
  const banner = $("error");
  banner.hidden = true;
  banner.textContent = "";
}

// A status chip: `state` (idle, streaming, done, error, stopped...) drives its colour
// and is what tests wait on; `text` is what a reader sees.
export function setStatus(node, state, text = state) {
  node.dataset.state = state;
  node.textContent = text;
}

export function isAbort(error) {
  return error && error.name === "AbortError";
}

export function intValue(input, fallback) {
  const v = Number.parseInt(input.value, 10);
  return Number.isFinite(v) ? v : fallback;
}

export function formatCount(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}
