// A live collection: list once, then follow the watch API from the list's
// resourceVersion. When the stream ends it resumes from the last revision seen; on
// 410 Expired it lists again. No polling: changes arrive as the server sends them.

import { api, watch, Expired, ApiError } from './api.js';

// Waits `ms`, or less when the page is aborted or the browser comes back online.
const sleep = (ms, signal) => new Promise((resolve) => {
  const done = () => {
    clearTimeout(t);
    window.removeEventListener('online', done);
    resolve();
  };
  const t = setTimeout(done, ms);
  window.addEventListener('online', done);
  signal.addEventListener('abort', done, { once: true });
});

export class LiveList {
  /** `kind` is the API path segment: applications, nodes, labels. */
  constructor(kind, key = (o) => o.metadata.uid || o.metadata.name) {
    this.kind = kind;
    this.key = key;
    this.items = new Map();
    this.rv = null;
    this.status = 'connecting';
    this.error = null;
    this.listeners = new Set();
    this.ctrl = null;
    this.pending = false;
  }

  /** Calls `f()` on every change (batched per frame); returns an unsubscribe. */
  subscribe(f) {
    this.listeners.add(f);
    if (!this.ctrl) this.start();
    return () => this.listeners.delete(f);
  }

  all() { return [...this.items.values()]; }

  start() {
    this.ctrl = new AbortController();
    this.run(this.ctrl.signal);
  }

  stop() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
  }

  notify() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      for (const f of this.listeners) f();
    });
  }

  setStatus(status, error = null) {
    this.status = status;
    this.error = error;
    this.notify();
  }

  async relist(signal) {
    const list = await api(`/api/v1/${this.kind}`, { signal });
    this.items = new Map(list.items.map((o) => [this.key(o), o]));
    this.rv = Number(list.metadata.resourceVersion);
    this.notify();
  }

  apply(ev) {
    const o = ev.object;
    const rv = Number(o.metadata?.resourceVersion);
    if (rv > this.rv) this.rv = rv;
    if (ev.type === 'DELETED') this.items.delete(this.key(o));
    else this.items.set(this.key(o), o);
    if (this.status !== 'live') this.status = 'live';
    this.notify();
  }

  async run(signal) {
    let backoff = 500;
    while (!signal.aborted) {
      try {
        if (this.rv === null) await this.relist(signal);
        this.setStatus('live');
        await watch(`/api/v1/${this.kind}?watch=true&resourceVersion=${this.rv}`, (ev) => this.apply(ev), signal);
        backoff = 500; // the server ended the stream: resume from this.rv
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof Expired) { this.rv = null; continue; }
        if (e instanceof ApiError && e.status === 401) { this.stop(); return; }
        this.setStatus('reconnecting', e.message);
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  }
}

const lists = new Map();

/** The one live list of `kind` for this tab, shared by every page. */
export function live(kind) {
  if (!lists.has(kind)) {
    // Every label version is its own object.
    const key = kind === 'labels' ? (o) => `${o.metadata.name}:${o.metadata.version}` : undefined;
    lists.set(kind, new LiveList(kind, key));
  }
  return lists.get(kind);
}

/** Stops every watch (sign-out). */
export function stopAll() {
  for (const l of lists.values()) l.stop();
  lists.clear();
}
