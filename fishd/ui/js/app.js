// The dashboard's entry: sign-in, the page router (#/page/arg) and the header.

import { api, session, setUnauthorizedHandler } from './api.js';
import { stopAll } from './live.js';
import { replace } from './dom.js';
import * as overview from './pages/overview.js';
import * as applications from './pages/applications.js';
import * as detail from './pages/detail.js';
import * as labels from './pages/labels.js';
import * as nodes from './pages/nodes.js';

const $ = (id) => document.getElementById(id);
const ctx = { user: null, admin: false };
let current = null; // { cleanup }

function showSignIn(message = '') {
  stopAll();
  if (current?.cleanup) current.cleanup();
  current = null;
  ctx.user = null;
  $('nav').hidden = true;
  $('who').hidden = true;
  replace($('page'));
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('token').value = '';
  $('token').focus();
}

async function signIn() {
  try {
    const user = await api('/api/v1/whoami');
    ctx.user = user;
    ctx.admin = (user.spec?.roles || []).includes('admin');
    $('who-name').textContent = `${user.metadata.name} (${ctx.admin ? 'admin' : 'user'})`;
    $('sign-in').hidden = true;
    $('nav').hidden = false;
    $('who').hidden = false;
    route();
  } catch (e) {
    session.clear();
    showSignIn(e.status === 401 ? 'That token was not accepted.' : `Cannot reach the API: ${e.message}`);
  }
}

function route() {
  if (!ctx.user) return;
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [page = 'overview', ...rest] = path.split('/');
  const arg = rest.map(decodeURIComponent).join('/');
  const params = new URLSearchParams(query);
  const pages = { overview, applications, labels, nodes };
  let mod = pages[page] || overview;
  if (page === 'applications' && arg) mod = detail;
  if (current?.cleanup) current.cleanup();
  const root = $('page');
  replace(root);
  current = { cleanup: mod.render(root, ctx, arg, params) };
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === (pages[page] ? page : 'overview')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function init() {
  setUnauthorizedHandler(() => {
    session.clear();
    showSignIn('Your token is no longer accepted; sign in again.');
  });
  $('sign-in-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    session.set(t);
    signIn();
  });
  $('sign-out').addEventListener('click', () => {
    session.clear();
    showSignIn();
  });
  window.addEventListener('hashchange', () => {
    route();
    $('main').focus({ preventScroll: true });
  });
  if (session.token()) signIn();
  else showSignIn();
}

init();
