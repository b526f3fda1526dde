// The API as the page uses it: fetch with the API key (asked once when a route answers 401, kept in
// sessionStorage), OpenAI's error message as the error, and chat streams read as Server-Sent Events.

const KEY = "hotlora.apiKey";
let askForKey = null;

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// `ask(message)` shows `message` and resolves true once a key is stored (false: the user gave up).
export function onKeyNeeded(ask) {
  askForKey = ask;
}

export function storeKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export function hasKey() {
  return sessionStorage.getItem(KEY) !== null;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code ?? null;
    }
  } catch {
    // not JSON: the status line says it
  }
  return new ApiError(response.status, message, code);
}

// `fetch(path)` with the key; a 401 asks for a key and tries again; any other error status throws its
// OpenAI error message as an ApiError.
export async function call(path, { method = "GET", json, form, signal } = {}) {
  for (;;) {
    const headers = new Headers();
    const key = sessionStorage.getItem(KEY);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const init = { method, headers, signal };
    if (json !== undefined) {
      headers.set("Content-Type", "application/json");
      init.body = JSON.stringify(json);
    } else if (form !== undefined) {
      init.body = form;
    }
    const response = await fetch(path, init);
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401 && askForKey && (await askForKey(error.message))) continue;
    throw error;
  }
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

// The chunks of a streamed chat completion, as parsed JSON objects, until `data: [DONE]`. An error sent
// inside the stream (`data: {"error": ...}`) throws.
export async function* streamChat(body, signal) {
  const response = await call("/v1/chat/completions", {
    method: "POST",
    json: { ...body, stream: true, stream_options: { include_usage: true } },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    if (buffer.endsWith("\r")) continue; // the "\n" of a "\r\n" may be in the next piece
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code ?? null);
      yield chunk;
    }
  }
}
