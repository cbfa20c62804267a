// One application: its facts, the resource, the history as a timeline (every
// allocation attempt with its node and message), the tail of its log (followed while
// it grows) and a Deallocate button that asks first. The application itself comes
// from the shared live list, so the page changes as the watch reports.

import { api, stream, ApiError } from '../api.js';
import { live } from '../live.js';
import { h, replace, phase, confirmDialog } from '../dom.js';
import { time, ago, duration } from '../format.js';

/** How much log the page keeps: the tail, not the whole output. */
const LOG_TAIL_BYTES = 64 * 1024;

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** The node an ELECTED entry names ("elected node a with definition 0 (test)"). */
function entryNode(e) {
  if (e.node) return e.node;
  const m = /\bnode ([A-Za-z0-9._-]+)/.exec(e.message || '');
  return m ? m[1] : '';
}

function timeline(app) {
  const hist = app.status?.history || [];
  let attempt = 0;
  return h('ol', { class: 'timeline' }, hist.map((e, i) => {
    if (e.phase === 'ELECTED') attempt += 1;
    const next = hist[i + 1];
    const node = entryNode(e);
    return h('li', { class: `ev ev-${e.phase.toLowerCase()}` },
      h('div', { class: 'ev-head' }, phase(e.phase),
        e.phase === 'ELECTED' ? h('span', { class: 'attempt' }, `attempt ${attempt}`) : null,
        node ? h('span', { class: 'chip' }, `node ${node}`) : null,
        h('time', { datetime: e.at, title: e.at }, time(e.at)),
        next ? h('span', { class: 'muted small' }, `+${duration(Date.parse(next.at) - Date.parse(e.at))}`) : null),
      e.message ? h('p', { class: 'ev-msg' }, e.message) : null);
  }));
}

function resourceView(app) {
  const r = app.status?.resource;
  if (!r) return h('p', { class: 'muted' }, 'No resource is allocated.');
  const details = r.details && Object.keys(r.details).length ? h('pre', { class: 'json' }, JSON.stringify(r.details, null, 2)) : null;
  return [facts([['Driver', r.driver], ['Identifier', r.identifier], ['IP address', r.ipAddr], ['MAC address', r.hwAddr],
    ['Expires', r.expiresAt ? `${time(r.expiresAt)}` : '']]), details];
}

/**
 * Follows the log into `pre` while the page is open; keeps the last LOG_TAIL_BYTES.
 * A dropped connection (the browser saw the network change, fishd restarted) is
 * reconnected after a pause; the log comes again from its start, so the text starts over.
 * An answer of the API (404: no log) ends it.
 */
async function followLog(name, pre, state, signal) {
  for (let attempt = 0; !signal.aborted; attempt++) {
    let text = '';
    state.textContent = attempt ? 'following (reconnected)' : 'following';
    try {
      for await (const chunk of stream(`/api/v1/applications/${encodeURIComponent(name)}/logs?follow=true`, signal)) {
        const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        text = (text + chunk).slice(-LOG_TAIL_BYTES);
        pre.textContent = text;
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
      state.textContent = 'ended';
      return;
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError) {
        state.textContent = e.status === 404 ? 'no log' : `stopped: ${e.message}`;
        return;
      }
      state.textContent = `reconnecting: ${e.message}`;
      await new Promise((resolve) => setTimeout(resolve, Math.min(1000 * 2 ** attempt, 10000)));
    }
  }
}

const ACTIVE = new Set(['NEW', 'ELECTED', 'ALLOCATED']);

export function render(root, ctx, name) {
  const apps = live('applications');
  const ctrl = new AbortController();
  const title = h('h1', {}, name);
  const badge = h('span');
  const btn = h('button', { type: 'button', class: 'danger', id: 'deallocate' }, 'Deallocate');
  const note = h('p', { role: 'status', class: 'muted', id: 'detail-note' });
  const about = h('div');
  const res = h('div', { id: 'resource' });
  const hist = h('div', { id: 'history' });
  const logState = h('span', { class: 'muted small' }, 'not started');
  const logPre = h('pre', { class: 'log', id: 'log', tabindex: '0', 'aria-label': 'log tail' });
  const logSection = h('section', { 'aria-labelledby': 'd-log' }, h('h2', { id: 'd-log' }, 'Log ', logState), logPre);
  let logStarted = false;
  let app = null;

  root.append(
    h('p', {}, h('a', { href: '#/applications' }, '← Applications')),
    h('div', { class: 'title-row' }, title, badge, btn), note,
    h('div', { class: 'detail' },
      h('section', { 'aria-labelledby': 'd-about' }, h('h2', { id: 'd-about' }, 'Application'), about),
      h('section', { 'aria-labelledby': 'd-res' }, h('h2', { id: 'd-res' }, 'Resource'), res),
      h('section', { 'aria-labelledby': 'd-hist', class: 'wide' }, h('h2', { id: 'd-hist' }, 'History'), hist)),
    logSection);

  btn.addEventListener('click', async () => {
    if (!app) return;
    const ok = await confirmDialog(`Deallocate ${app.metadata.name}?`,
      'Its resource is released and cannot be brought back.', 'Deallocate');
    if (!ok) { btn.focus(); return; }
    btn.disabled = true;
    try {
      await api(`/api/v1/applications/${encodeURIComponent(app.metadata.uid)}/deallocate`, { method: 'POST' });
      note.textContent = 'Deallocation requested.';
    } catch (e) {
      note.textContent = `Deallocation failed: ${e.message}`;
      btn.disabled = false;
    }
    btn.focus();
  });

  const draw = () => {
    app = apps.all().find((a) => a.metadata.name === name || a.metadata.uid === name) || null;
    if (!app) {
      replace(badge);
      btn.hidden = true;
      replace(about, h('p', { class: 'muted' }, apps.status === 'live' ? 'No such application (or not yours).' : 'Loading…'));
      return;
    }
    const s = app.status || {};
    replace(badge, phase(s.phase));
    btn.hidden = false;
    btn.disabled = !ACTIVE.has(s.phase || 'NEW') || Boolean(s.deallocateRequested);
    replace(about, facts([
      ['Name', app.metadata.name], ['UID', app.metadata.uid], ['Owner', app.metadata.owner],
      ['Label', `${app.spec.label}${s.labelVersion ? ` (version ${s.labelVersion})` : ''}`],
      ['Node', s.node], ['Definition', s.definition ?? ''], ['Created', `${time(app.metadata.createdAt)} (${ago(app.metadata.createdAt)})`],
      ['Lifetime', app.spec.lifetime], ['Message', s.message],
      ['Metadata keys', Object.keys(app.spec.metadata || {}).join(', ')],
    ]));
    replace(res, resourceView(app));
    replace(hist, timeline(app));
    // The log exists once a driver holds a resource (the test driver keeps none).
    const driver = s.resource?.driver;
    if (!logStarted && driver && driver !== 'test') {
      logStarted = true;
      followLog(app.metadata.name, logPre, logState, ctrl.signal);
    } else if (!logStarted) {
      logState.textContent = driver === 'test' ? 'the test driver keeps no log' : 'no resource yet';
    }
  };
  const off = apps.subscribe(draw);
  draw();
  return () => { off(); ctrl.abort(); };
}
