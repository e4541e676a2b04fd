// The API client: JSON requests and the live feed (Server-Sent Events read with fetch, so the
// token travels in the Authorization header, never in a URL).

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

export function apiUrl(path) {
  return new URL(`api/${path}`, document.baseURI);
}

export async function getJson(path, token, signal) {
  const response = await fetch(apiUrl(path), {
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    cache: "no-store",
    signal,
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Yields {event, data} for every message of the feed until it ends or `signal` aborts it.
export async function* events(path, token, signal) {
  const response = await fetch(apiUrl(path), {
    headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" },
    cache: "no-store",
    signal,
  });
  if (!response.ok) {
    throw new ApiError(response.status, await response.json().catch(() => null));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // Lines end in \r\n, \n or \r; a \r at the very end may be half of a \r\n still coming.
    const complete = buffer.endsWith("\r") ? buffer.slice(0, -1) : buffer;
    const rest = buffer.slice(complete.length);
    const normalised = complete.replace(/\r\n|\r/g, "\n");
    const blocks = normalised.split("\n\n");
    buffer = blocks.pop() + rest;
    for (const block of blocks) {
      const message = parse(block);
      if (message) yield message;
    }
  }
}

function parse(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { event, data: JSON.parse(data.join("\n")) };
}
