// Server-Sent Events parser for a fetch() body: EventSource cannot POST, so the
// playground reads the stream itself. Follows the WHATWG framing: messages end with a
// blank line; `event:` names the message, `data:` lines join with "\n", `:` is a comment.

export class SseParser {
  constructor() {
    this.buffer = "";
  }

  // Feed decoded text; returns the complete messages as [{event, data}].
  feed(text) {
    this.buffer += text;
    // Normalise CR LF / CR line ends; a CR at the very end may be half of a CR LF.
    let tail = "";
    if (this.buffer.endsWith("\r")) {
      tail = "\r";
      this.buffer = this.buffer.slice(0, -1);
    }
    this.buffer = this.buffer.replace(/\r\n?/g, "\n");
    const messages = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const message = parseBlock(block);
      if (message) messages.push(message);
    }
    this.buffer += tail;
    return messages;
  }
}

function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  return { event, data: data.join("\n") };
}
