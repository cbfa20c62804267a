// Building DOM nodes without innerHTML: every value from the API becomes text, never markup.

/** `h('a', {href: '#/x', class: 'y'}, 'text', child)`; `on*` keys add listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A bar of `used` of `total`, with the figures as text for readers and narrow screens. */
export function bar(name, used, total, unit = '') {
  const pct = total > 0 ? Math.min(100, Math.round((used / total) * 100)) : 0;
  const fill = h('span', { class: `fill${pct >= 90 ? ' full' : pct >= 70 ? ' high' : ''}` });
  // CSSOM, not a style attribute: allowed under the CSP.
  fill.style.width = `${pct}%`;
  return h('div', { class: 'bar-row' },
    h('span', { class: 'bar-name' }, name),
    h('span', { class: 'bar', role: 'img', 'aria-label': `${name}: ${used} of ${total}${unit} used` }, fill),
    h('span', { class: 'bar-figure' }, `${used} / ${total}${unit}`));
}

/** A phase badge. */
export function phase(p) {
  return h('span', { class: `phase phase-${(p || 'NEW').toLowerCase()}` }, p || 'NEW');
}

/** Asks for confirmation in the page's modal dialog; resolves true on Confirm. */
export function confirmDialog(title, text, action) {
  const dlg = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
  });
}
