// Overview: every node's capacity used of total, applications per phase, the queue
// and its waiting times. Everything is computed from the live application and node
// lists, so it updates as the watches deliver changes.

import { live } from '../live.js';
import { h, replace, bar, phase } from '../dom.js';
import { PHASES, duration, percentile, queueTime, ago } from '../format.js';

export function nodeState(n) {
  const s = n.status || {};
  if (!s.ready) return h('span', { class: 'state bad' }, 'not ready');
  if (s.maintenance) return h('span', { class: 'state warn' }, 'maintenance');
  return h('span', { class: 'state ok' }, 'ready');
}

export function nodeBars(n) {
  const c = n.status?.capacity || {};
  const a = n.status?.allocated || {};
  return h('div', { class: 'bars' },
    bar('CPU', a.cpu ?? 0, c.cpu ?? 0),
    bar('RAM', a.ram ?? 0, c.ram ?? 0, ' GiB'),
    bar('Slots', a.slots ?? 0, c.slots ?? 0));
}

function nodeCard(n) {
  return h('article', { class: 'card node' },
    h('header', {}, h('h3', {}, n.metadata.name), nodeState(n)),
    nodeBars(n),
    h('p', { class: 'muted' }, `${n.status?.allocated?.applications ?? 0} applications`));
}

export function render(root, ctx) {
  const apps = live('applications');
  const nodes = live('nodes');
  const phases = h('div', { class: 'tiles' });
  const queue = h('div', { class: 'tiles' });
  const nodeList = h('div', { class: 'grid' });
  const status = h('p', { class: 'live-status', role: 'status' });
  root.append(
    h('h1', {}, 'Overview'),
    status,
    h('section', { 'aria-labelledby': 'ov-nodes' }, h('h2', { id: 'ov-nodes' }, 'Nodes'), nodeList),
    h('section', { 'aria-labelledby': 'ov-phases' }, h('h2', { id: 'ov-phases' }, 'Applications by phase'), phases),
    h('section', { 'aria-labelledby': 'ov-queue' },
      h('h2', { id: 'ov-queue' }, 'Queue'), queue,
      h('p', { class: 'muted small' },
        `Queue time is creation to first ALLOCATED, from the history of the applications ${ctx.admin ? 'the API keeps' : 'of yours the API keeps'} (the last historyRetention).`)),
  );

  const draw = () => {
    const all = apps.all();
    const counts = Object.fromEntries(PHASES.map((p) => [p, 0]));
    for (const a of all) counts[a.status?.phase || 'NEW'] += 1;
    replace(phases, PHASES.map((p) =>
      h('a', { class: 'tile', href: `#/applications?phase=${p}` }, phase(p), h('strong', {}, String(counts[p])))));

    const waiting = all.filter((a) => (a.status?.phase || 'NEW') === 'NEW');
    const oldest = waiting.map((a) => a.metadata.createdAt).sort()[0];
    const times = all.map(queueTime).filter((t) => t !== null);
    replace(queue,
      h('div', { class: 'tile' }, h('span', {}, 'Waiting'), h('strong', { id: 'queue-length' }, String(waiting.length)),
        h('small', {}, oldest ? `oldest since ${ago(oldest)}` : 'none')),
      h('div', { class: 'tile' }, h('span', {}, 'Queue time p50'), h('strong', { id: 'queue-p50' }, duration(percentile(times, 50))),
        h('small', {}, `${times.length} allocated`)),
      h('div', { class: 'tile' }, h('span', {}, 'Queue time p95'), h('strong', { id: 'queue-p95' }, duration(percentile(times, 95))),
        h('small', {}, `${times.length} allocated`)));

    const ns = nodes.all().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    replace(nodeList, ns.length ? ns.map(nodeCard) : h('p', { class: 'muted' }, 'No nodes yet.'));
    const bad = [apps, nodes].find((l) => l.status !== 'live');
    status.textContent = bad ? `${bad.kind}: ${bad.status}${bad.error ? ` (${bad.error})` : ''}` : '';
  };
  const offs = [apps.subscribe(draw), nodes.subscribe(draw)];
  draw();
  return () => offs.forEach((off) => off());
}
