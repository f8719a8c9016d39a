// The HTTP API as the playground uses it: JSON calls and streamed (SSE) calls, with the
// optional API key sent as a bearer token. Errors become ApiError with the server's
// {"error": {"type", "message", "param"}} fields.

import { SseParser } from "./sse.js";

const KEY_STORAGE = "kvserve.apiKey";

export class ApiError extends Error {
  constructor(status, type, message, param = null) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param;
  }

  describe() {
    const where = this.param ? ` (${this.param})` : "";
    const hint = this.status === 401 ? " Enter an API key at the top right." : "";
    return `${this.status || ""} ${this.type}: ${this.message}${where}.${hint}`.trim();
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function headers(withBody) {
  const h = { Accept: "application/json" };
  if (withBody) h["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const e = body && body.error;
  if (e) return new ApiError(response.status, e.type, e.message, e.param);
  return new ApiError(response.status, "http_error", response.statusText || "request failed");
}

export async function request(method, path, body = undefined, signal = undefined) {
  const init = { method, headers: headers(body !== undefined), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export const getJson = (path) => request("GET", path);
export const postJson = (path, body, signal) => request("POST", path, body, signal);
export const deleteJson = (path) => request("DELETE", path);

// POST with `stream: true`; calls onEvent(name, data) for every SSE message and resolves
// with the `done` event's data. An `error` event rejects with its ApiError.
export async function postStream(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: { ...headers(true), Accept: "text/event-stream" },
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const message of parser.feed(value)) {
      const data = JSON.parse(message.data);
      if (message.event === "error") {
        const e = data.error || {};
        throw new ApiError(0, e.type || "stream_error", e.message || "the stream failed", e.param);
      }
      onEvent(message.event, data);
      if (message.event === "done") {
        reader.cancel().catch(() => {});
        return data;
      }
    }
  }
  throw new ApiError(0, "stream_error", "the stream ended without a done event");
}
