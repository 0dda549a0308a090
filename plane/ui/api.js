// The dashboard's one way to the API: same origin, the key (if any) as a bearer
// header, both error body shapes understood, and the SSE feed read with fetch
// streaming (EventSource cannot send a header).

const KEY = "plane.apiKey";

export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

function headers(extra) {
  const h = new Headers(extra || {});
  const key = auth.key;
  if (key) h.set("authorization", `Bearer ${key}`);
  return h;
}

// Plane's ApiError {"id","kind","message"} or the older {"error":{"code","message"}}.
async function failure(response) {
  let kind = `HTTP${response.status}`;
  let message = response.statusText || kind;
  try {
    const body = await response.json();
    if (body && typeof body === "object") {
      const inner = body.error && typeof body.error === "object" ? body.error : body;
      kind = inner.kind || inner.code || kind;
      message = inner.message || message;
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, kind, message);
}

export async function request(method, path, { signal, accept } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(accept ? { accept } : undefined),
    signal,
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path, options) {
  return (await request("GET", path, options)).json();
}

export async function post(path) {
  const response = await request("POST", path);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export async function publicJson(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Reads a text stream chunk by chunk; calls onText for each decoded piece.
export async function readText(path, onText, signal) {
  const response = await request("GET", path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(value);
  }
}

// Server-sent events over fetch: calls onEvent(data, id) per event; returns when
// the server ends the stream.  Comments (keep-alives) are skipped.
export async function readEvents(path, onEvent, signal) {
  let buffer = "";
  await readText(path, (text) => {
    buffer += text.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = [];
      let id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (data.length) onEvent(JSON.parse(data.join("\n")), id);
    }
  }, signal);
}

export const isAbort = (error) => error && error.name === "AbortError";
