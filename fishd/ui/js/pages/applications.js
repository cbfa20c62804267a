// Applications: a live table fed by the watch API (see live.js), filtered by phase,
// label and name in the page (the filters are kept in the address, so a filtered
// view can be bookmarked). Rows are updated in place, so focus and scroll survive
// a change arriving.

import { live } from '../live.js';
import { h, replace, phase } from '../dom.js';
import { PHASES, ago, labelName } from '../format.js';

function newestFirst(a, b) {
  return (b.metadata.createdAt || '').localeCompare(a.metadata.createdAt || '')
    || (b.metadata.uid || '').localeCompare(a.metadata.uid || '');
}

export function render(root, ctx, _arg, params) {
  const apps = live('applications');
  const filter = { phase: params.get('phase') || '', label: params.get('label') || '', q: params.get('q') || '' };

  const phaseSel = h('select', { id: 'filter-phase' }, h('option', { value: '' }, 'all phases'),
    PHASES.map((p) => h('option', { value: p }, p)));
  const labelSel = h('select', { id: 'filter-label' });
  const search = h('input', { id: 'filter-name', type: 'search', placeholder: 'name contains', autocomplete: 'off' });
  phaseSel.value = filter.phase;
  search.value = filter.q;

  const columns = ['Name', 'Phase', 'Label', 'Node', ...(ctx.admin ? ['Owner'] : []), 'Created', 'Message'];
  const tbody = h('tbody');
  const table = h('table', { class: 'apps responsive', id: 'apps-table' },
    h('caption', { class: 'sr-only' }, 'Applications, newest first'),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))), tbody);
  const count = h('p', { class: 'muted', id: 'apps-count', role: 'status' });
  const empty = h('p', { class: 'muted', hidden: true }, 'No applications match.');

  root.append(
    h('h1', {}, 'Applications'),
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('label', {}, 'Phase ', phaseSel), h('label', {}, 'Label ', labelSel), h('label', {}, 'Name ', search)),
    count, h('div', { class: 'table-wrap' }, table), empty);

  const rows = new Map(); // uid -> { tr, cells }
  function row(app) {
    const uid = app.metadata.uid;
    let r = rows.get(uid);
    if (!r) {
      const link = h('a', { href: `#/applications/${encodeURIComponent(app.metadata.name)}` }, app.metadata.name);
      const cells = columns.map((c) => h('td', { 'data-label': c }));
      cells[0].append(link);
      r = { tr: h('tr', { 'data-name': app.metadata.name }, cells), cells, key: '' };
      rows.set(uid, r);
    }
    const s = app.status || {};
    const key = `${app.metadata.resourceVersion}`;
    if (r.key !== key) {
      r.key = key;
      r.tr.dataset.phase = s.phase || 'NEW';
      const values = [null, phase(s.phase), String(app.spec?.label || ''), s.node || '',
        ...(ctx.admin ? [app.metadata.owner || ''] : []),
        h('time', { datetime: app.metadata.createdAt, title: app.metadata.createdAt }, ago(app.metadata.createdAt)),
        s.message || ''];
      values.forEach((v, i) => { if (v !== null) replace(r.cells[i], v); });
    }
    return r.tr;
  }

  const draw = () => {
    const all = apps.all();
    const labels = [...new Set(all.map(labelName))].sort();
    if (filter.label && !labels.includes(filter.label)) labels.push(filter.label);
    const want = ['', ...labels].join('\n');
    if (labelSel.dataset.options !== want) {
      labelSel.dataset.options = want;
      replace(labelSel, h('option', { value: '' }, 'all labels'), labels.map((l) => h('option', { value: l }, l)));
      labelSel.value = filter.label;
    }
    const shown = all.filter((a) => (!filter.phase || (a.status?.phase || 'NEW') === filter.phase)
      && (!filter.label || labelName(a) === filter.label)
      && (!filter.q || a.metadata.name.includes(filter.q))).sort(newestFirst);
    for (const uid of rows.keys()) {
      if (!apps.items.has(uid)) rows.delete(uid);
    }
    const trs = shown.map(row);
    const same = trs.length === tbody.children.length && trs.every((tr, i) => tbody.children[i] === tr);
    if (!same) tbody.replaceChildren(...trs);
    empty.hidden = shown.length > 0 || apps.status !== 'live';
    table.hidden = shown.length === 0;
    const state = apps.status === 'live' ? 'live' : `${apps.status}${apps.error ? ` (${apps.error})` : ''}`;
    count.textContent = `${shown.length} of ${all.length} applications · ${state}`;
  };

  const onFilter = () => {
    filter.phase = phaseSel.value;
    filter.label = labelSel.value;
    filter.q = search.value.trim();
    const q = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
    history.replaceState(null, '', `#/applications${q.toString() ? `?${q}` : ''}`);
    draw();
  };
  phaseSel.addEventListener('change', onFilter);
  labelSel.addEventListener('change', onFilter);
  search.addEventListener('input', onFilter);

  const off = apps.subscribe(draw);
  draw();
  return off;
}
