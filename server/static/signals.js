// Example inputs for the value models, drawn like their training data (see each model's
// card): the forecaster continues a noisy sum of 2-3 sines, the regressor recovers
// (amplitude, frequency, phase) of one noisy sine.

// Standard normal draw (Box-Muller).
function gauss() {
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

const uniform = (lo, hi) => lo + (hi - lo) * Math.random();

// {values, clean(t)}: `length` noisy steps and the noiseless signal as a function of t.
export function multiSine(length = 96, components = 2, sigma = 0.05) {
  const parts = Array.from({ length: components }, () => ({
    a: uniform(0.2, 1.0),
    f: uniform(0.02, 0.1),
    phi: uniform(0, 2 * Math.PI),
  }));
  const clean = (t) => parts.reduce((sum, p) => sum + p.a * Math.sin(2 * Math.PI * p.f * t + p.phi), 0);
  const values = Array.from({ length }, (_, t) => clean(t) + sigma * gauss());
  return { values, clean };
}

export function oneSine(length = 64, sigma = 0.1) {
  const truth = { amplitude: uniform(0.5, 2.0), frequency: uniform(0.0625, 0.25), phase: uniform(0, Math.PI) };
  const values = Array.from(
    { length },
    (_, t) => sineAt(truth.amplitude, truth.frequency, truth.phase, t) + sigma * gauss(),
  );
  return { values, truth };
}

export function sineAt(amplitude, frequency, phase, t) {
  return amplitude * Math.sin(2 * Math.PI * frequency * t + phase);
}

export function parseValues(text) {
  const items = text.split(/[\s,;]+/).filter((s) => s !== "");
  const values = items.map(Number);
  const bad = items.findIndex((s, i) => !Number.isFinite(values[i]));
  if (bad >= 0) throw new Error(`input value ${bad + 1} (“${items[bad]}”) is not a finite number`);
  return values;
}

export const formatValues = (values) => values.map((v) => v.toFixed(3)).join(", ");
