// Labels: every label with its versions (newest first) and each version's
// definitions, as the API lists them (every version is its own object).

import { live } from '../live.js';
import { h, replace } from '../dom.js';
import { time } from '../format.js';

function definition(d, i) {
  const r = d.resources || {};
  const facts = [
    ['cpu', r.cpu], ['ram', r.ram !== undefined ? `${r.ram} GiB` : undefined], ['slots', r.slots],
    ['network', r.network === '' || r.network === undefined ? 'isolated' : r.network], ['lifetime', r.lifetime],
    ['disks', r.disks && Object.keys(r.disks).length ? Object.entries(r.disks).map(([k, v]) => `${k}: ${v.size} GiB`).join(', ') : undefined],
    ['allow', (r.allow || []).join(', ')], ['nodeFilter', (r.nodeFilter || []).join(', ')],
    ['images', (d.images || []).map((im) => `${im.name}${im.tag ? `:${im.tag}` : ''}`).join(', ')],
  ].filter(([, v]) => v !== undefined && v !== '');
  const options = d.options && Object.keys(d.options).length ? h('pre', { class: 'json' }, JSON.stringify(d.options, null, 2)) : null;
  return h('li', { class: 'definition' },
    h('h4', {}, `#${i} `, h('code', {}, d.driver)),
    h('dl', { class: 'facts inline' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])),
    options);
}

function version(l, open) {
  const meta = l.spec.metadata && Object.keys(l.spec.metadata).length ? `metadata: ${Object.keys(l.spec.metadata).join(', ')}` : '';
  return h('details', { class: 'version', open },
    h('summary', {}, `version ${l.metadata.version}`, h('span', { class: 'muted small' },
      ` · ${time(l.metadata.createdAt)}${l.spec.removeAt ? ` · removed at ${time(l.spec.removeAt)}` : ''}`)),
    meta ? h('p', { class: 'muted small' }, meta) : null,
    h('ol', { class: 'definitions' }, (l.spec.definitions || []).map(definition)));
}

export function render(root) {
  const labels = live('labels');
  const list = h('div', { class: 'grid labels' });
  const status = h('p', { class: 'live-status', role: 'status' });
  root.append(h('h1', {}, 'Labels'), status, list);
  const draw = () => {
    const byName = new Map();
    for (const l of labels.all()) {
      if (!byName.has(l.metadata.name)) byName.set(l.metadata.name, []);
      byName.get(l.metadata.name).push(l);
    }
    const names = [...byName.keys()].sort();
    replace(list, names.length ? names.map((n) => {
      const versions = byName.get(n).sort((a, b) => b.metadata.version - a.metadata.version);
      return h('article', { class: 'card label', 'data-label': n },
        h('header', {}, h('h2', {}, n), h('span', { class: 'muted' }, `${versions.length} version${versions.length > 1 ? 's' : ''}`)),
        versions.map((v, i) => version(v, i === 0)));
    }) : h('p', { class: 'muted' }, labels.status === 'live' ? 'No labels yet.' : 'Loading…'));
    status.textContent = labels.status === 'live' ? '' : `${labels.status}${labels.error ? ` (${labels.error})` : ''}`;
  };
  const off = labels.subscribe(draw);
  draw();
  return off;
}
