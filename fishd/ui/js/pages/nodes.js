// Nodes: state, capacity used of total, drivers, and (for admins) the maintenance
// switch. A user who is not an admin sees the state but no switch: the API would
// refuse it anyway.

import { api } from '../api.js';
import { live } from '../live.js';
import { h, replace } from '../dom.js';
import { ago } from '../format.js';
import { nodeState, nodeBars } from './overview.js';

function maintenanceSwitch(n, note) {
  const on = Boolean(n.status?.maintenance);
  const btn = h('button', { type: 'button', role: 'switch', class: 'switch', 'aria-checked': String(on),
    'data-node': n.metadata.name }, h('span', { class: 'knob', 'aria-hidden': 'true' }), on ? 'Maintenance on' : 'Maintenance off');
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    try {
      await api(`/api/v1/nodes/${encodeURIComponent(n.metadata.name)}/maintenance`, { method: 'POST', body: { enabled: !on } });
      note.textContent = `${n.metadata.name}: maintenance ${on ? 'off' : 'on'}.`;
    } catch (e) {
      note.textContent = `${n.metadata.name}: ${e.message}`;
      btn.disabled = false;
    }
  });
  return btn;
}

export function render(root, ctx) {
  const nodes = live('nodes');
  const list = h('div', { class: 'grid' });
  const note = h('p', { role: 'status', class: 'muted' });
  root.append(h('h1', {}, 'Nodes'), note, list);
  const draw = () => {
    const focused = document.activeElement?.dataset?.node;
    const ns = nodes.all().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
    replace(list, ns.length ? ns.map((n) => {
      const s = n.status || {};
      const drivers = (s.drivers || []).map((d) => h('li', { class: d.available ? '' : 'muted' },
        h('code', {}, d.name), d.available ? '' : ` unavailable: ${d.reason || ''}`));
      return h('article', { class: 'card node', 'data-node-card': n.metadata.name },
        h('header', {}, h('h2', {}, n.metadata.name), nodeState(n)),
        nodeBars(n),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Address'), h('dd', {}, s.address || ''),
          h('dt', {}, 'Version'), h('dd', {}, s.version || ''),
          h('dt', {}, 'Applications'), h('dd', {}, String(s.allocated?.applications ?? 0)),
          s.location ? [h('dt', {}, 'Location'), h('dd', {}, s.location)] : null,
          (s.identifiers || []).length ? [h('dt', {}, 'Identifiers'), h('dd', {}, s.identifiers.join(', '))] : null,
          h('dt', {}, 'Last seen'), h('dd', {}, s.lastSeen ? ago(s.lastSeen) : '')),
        h('h3', {}, 'Drivers'), h('ul', { class: 'drivers' }, drivers),
        ctx.admin ? maintenanceSwitch(n, note) : null);
    }) : h('p', { class: 'muted' }, nodes.status === 'live' ? 'No nodes yet.' : 'Loading…'));
    if (focused) list.querySelector(`[data-node="${CSS.escape(focused)}"]`)?.focus();
  };
  const off = nodes.subscribe(draw);
  draw();
  return off;
}
