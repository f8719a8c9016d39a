// Client-side timing of a stream: time to first token from the request's start, and
// the decode rate (tokens after the first over the time since the first).

export class StreamMeter {
  constructor() {
    this.start = performance.now();
    this.first = null;
    this.last = null;
    this.count = 0;
  }

  tick() {
    const now = performance.now();
    if (this.first === null) this.first = now;
    this.last = now;
    this.count += 1;
  }

  ttftMs() {
    return this.first === null ? null : this.first - this.start;
  }

  tokensPerSecond() {
    if (this.count < 2 || this.last <= this.first) return null;
    return (this.count - 1) / ((this.last - this.first) / 1000);
  }
}

export function formatNumber(value, digits = 1) {
  return value === null || value === undefined ? "–" : value.toFixed(digits);
}
