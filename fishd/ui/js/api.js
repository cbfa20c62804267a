// The public REST API, called with the signed-in user's token: the dashboard has no
// other way in, so it can do nothing the API would refuse that user.

const KEY = 'aquarium.token';

/** The token of this tab (session storage: gone when the tab closes). */
export const session = {
  token: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** An answer other than 2xx, with the API's error body when it sent one. */
export class ApiError extends Error {
  constructor(status, body, text) {
    super(body?.message || text || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** A watch ended with 410 Expired: list again, then resume. */
export class Expired extends Error {}

let onUnauthorized = () => {};
/** Called when the API refuses the token (revoked, rotated): back to sign-in. */
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

function headers(extra = {}) {
  return { Authorization: `Bearer ${session.token()}`, ...extra };
}

/**
 * `fetch`, sent again (GETs only, at most 3 more times, 0.3 s doubling) when it got no
 * answer at all: a browser drops requests in flight when it sees the network change
 * (a VPN, a new interface), and a GET is safe to repeat. Answers, even errors, are final.
 */
async function send(path, init) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch(path, init);
    } catch (e) {
      if ((init.method ?? 'GET') !== 'GET' || init.signal?.aborted || attempt >= 3) throw e;
      await new Promise((resolve) => setTimeout(resolve, 300 * 2 ** attempt));
    }
  }
}

/** One JSON request; throws ApiError on anything but 2xx. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const init = { method, headers: headers({ Accept: 'application/json' }), signal, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await send(path, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (res.status === 401) onUnauthorized();
  if (!res.ok) throw new ApiError(res.status, data, text);
  return data;
}

/** Opens a streaming GET; yields decoded text chunks until the server ends it. */
export async function* stream(path, signal) {
  const res = await send(path, { headers: headers(), signal, cache: 'no-store' });
  if (!res.ok) {
    const text = await res.text();
    let data = null;
    try { data = JSON.parse(text); } catch { data = null; }
    if (res.status === 401) onUnauthorized();
    throw new ApiError(res.status, data, text);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield decoder.decode(value, { stream: true });
    }
  } finally {
    reader.releaseLock();
  }
}

/** A watch: calls `onEvent` for each newline-delimited event; throws Expired on 410. */
export async function watch(path, onEvent, signal) {
  let buf = '';
  for await (const chunk of stream(path, signal)) {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const ev = JSON.parse(line);
      if (ev.type === 'ERROR') {
        if (ev.object?.code === 410) throw new Expired(ev.object.message || 'expired');
        throw new ApiError(ev.object?.code || 500, ev.object, 'watch error');
      }
      onEvent(ev);
    }
  }
}
