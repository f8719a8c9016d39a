// The playground: loads the model list, shows the panel that fits the picked model,
// and wires the API key. Each panel lives in its own module.

import { apiKey, getJson, setApiKey } from "./api.js";
import { setupSeq2seqPanel } from "./seq2seq_panel.js";
import { setupSessionPanel } from "./session_panel.js";
import { setupTextPanel } from "./text_panel.js";
import { $, clearError, formatCount, setStatus, showError } from "./ui.js";
import { setupValuesPanel } from "./values_panel.js";

const KIND_WORDS = {
  regression: "regression",
  autoregressive: "autoregressive",
  encoder_decoder: "encoder-decoder",
};
const CARD_FIELDS = [
  ["kind", "kind"],
  ["input_form", "input"],
  ["tokenizer", "tokenizer"],
  ["vocab_size", "vocabulary"],
  ["input_dim", "input dim"],
  ["output_dim", "output dim"],
  ["parameters", "parameters"],
  ["num_layers", "layers"],
  ["embed_dim", "embed dim"],
  ["num_heads", "heads"],
  ["attention_type", "attention"],
  ["num_groups", "KV groups"],
  ["max_seq_len", "max seq len"],
  ["window", "window"],
  ["devices", "devices"],
  ["moe", "MoE"],
  ["limits", "limits"],
  ["special_tokens", "special tokens"],
  ["metrics", "metrics"],
];

const panels = {
  text: setupTextPanel(),
  seq2seq: setupSeq2seqPanel(),
  values: setupValuesPanel(),
};
const sessionPanel = setupSessionPanel();
let cards = [];

function panelFor(card) {
  if (card.kind === "autoregressive" && card.tokenizer === "bytes") return "text";
  if (card.kind === "encoder_decoder" && card.input_form === "tokens") return "seq2seq";
  if (panels.values.supports(card)) return "values";
  return null;
}

function fieldText(value) {
  if (Array.isArray(value)) return value.join(", ");
  if (value && typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
  }
  return typeof value === "number" && value >= 1000 ? formatCount(value) : String(value);
}

function showCard(card) {
  const words = [
    KIND_WORDS[card.kind] || card.kind,
    card.tokenizer === "bytes" ? "byte-level text" : card.input_form,
    `${formatCount(card.parameters)} parameters`,
    `${card.num_layers} layers`,
    card.attention_type.toUpperCase(),
  ];
  $("model-summary").textContent = words.join(" · ") + (card.task ? ` — ${card.task}` : "");
  const list = $("model-card");
  list.replaceChildren();
  for (const [key, term] of CARD_FIELDS) {
    const value = card[key];
    if (value === null || value === undefined) continue;
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = fieldText(value);
    list.append(dt, dd);
  }
}

function select(id) {
  const card = cards.find((c) => c.id === id);
  if (!card) return;
  clearError();
  $("model-select").value = id;
  for (const button of $("models").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.model === id));
  }
  showCard(card);
  const which = panelFor(card);
  $("panel-text").hidden = which !== "text";
  $("panel-seq2seq").hidden = which !== "seq2seq";
  $("panel-values").hidden = which !== "values";
  $("panel-none").hidden = which !== null;
  if (which) panels[which].show(card, cards);
  sessionPanel.show(card);
  history.replaceState(null, "", `#model=${encodeURIComponent(id)}`);
}

function listModels() {
  const list = $("models");
  list.replaceChildren();
  for (const card of cards) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "model-item";
    button.dataset.model = card.id;
    button.setAttribute("aria-pressed", "false");
    const name = document.createElement("span");
    name.className = "model-name";
    name.textContent = card.id;
    const kind = document.createElement("span");
    kind.className = `badge ${card.kind}`;
    kind.textContent = KIND_WORDS[card.kind] || card.kind;
    const facts = document.createElement("span");
    facts.className = "model-facts";
    facts.textContent = `${card.tokenizer === "bytes" ? "text" : card.input_form} · ${formatCount(card.parameters)} params · ${card.devices.join(", ")}`;
    button.append(name, kind, facts);
    button.addEventListener("click", () => select(card.id));
    item.append(button);
    list.append(item);
  }
  $("model-select").replaceChildren(...cards.map((c) => new Option(`${c.id} (${KIND_WORDS[c.kind] || c.kind})`, c.id)));
}

async function checkHealth() {
  const health = $("health");
  try {
    const response = await fetch("/health/ready");
    setStatus(health, response.ok ? "ready" : "unready", response.ok ? "server ready" : "server not ready");
  } catch {
    setStatus(health, "unready", "server unreachable");
  }
}

async function loadModels() {
  try {
    const answer = await getJson("/v1/models");
    cards = answer.data.sort((a, b) => a.id.localeCompare(b.id));
  } catch (error) {
    cards = [];
    showError(error);
  }
  listModels();
  document.body.dataset.models = String(cards.length);
  if (cards.length === 0) return;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("model");
  const first = cards.find((c) => c.id === wanted) || cards.find((c) => panelFor(c) === "text") || cards[0];
  select(first.id);
}

$("model-select").addEventListener("change", (e) => select(e.target.value));
$("models-refresh").addEventListener("click", loadModels);
$("api-key").value = apiKey();
$("api-key-save").addEventListener("click", () => {
  setApiKey($("api-key").value.trim());
  loadModels();
});
$("api-key").addEventListener("keydown", (e) => {
  if (e.key === "Enter") $("api-key-save").click();
});

checkHealth();
loadModels();
