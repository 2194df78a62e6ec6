// The Treaty dashboard: transactions with filters and live counts, one transaction's graph and
// timeline, the stuck view with the operator's retry and abort, and the services' dead letters
// with replay, and the coordinator instances holding transactions. Hash routes (#/, #/stuck,
// #/dead-letters, #/instances, #/tx/<gid>); the page polls the API
// every 1.5 s while it is visible.

import { api, ApiError, Unauthorized, getKey, setKey, clearKey } from './api.js';
import { renderGraph, tone } from './graph.js';

const POLL_MS = 1500;
const STATUSES = ['prepared', 'pending', 'running', 'aborting', 'committed', 'aborted'];
const PROTOCOLS = ['saga', 'tcc', '2pc', '3pc', 'msg', 'choreography'];
const PAGE_SIZE = 50;

const main = document.getElementById('main');
const loginSection = document.getElementById('login');
const loginForm = document.getElementById('login-form');
const loginError = document.getElementById('login-error');
const keyInput = document.getElementById('key');
const logoutButton = document.getElementById('logout');
const live = document.getElementById('live');
const stuckBadge = document.getElementById('stuck-badge');

let settings = { timelineBodyBytes: 2048 };
let view = null; // { refresh(): Promise<void>, dispose?(): void }
let polling = null;
let busy = false;
let needsLogin = false;

// ---------- small DOM helpers (values become text nodes, never parsed as HTML) ----------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else if (name === 'class') node.className = value;
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pad(n, width = 2) {
  return String(n).padStart(width, '0');
}

/** Local time with milliseconds: 2026-03-01 12:00:00.123 */
function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function statusBadge(status, stuck) {
  return h('span', { class: `status status-${status}${stuck ? ' is-stuck' : ''}`, 'data-status': status }, status, stuck ? ' · stuck' : '');
}

function txLink(gid) {
  return h('a', { href: `#/tx/${encodeURIComponent(gid)}`, class: 'gid', 'data-gid': gid }, gid);
}

function pretty(text) {
  if (text === undefined || text === null) return '';
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return String(text);
  }
}

/** Clips text to the server's timeline size in UTF-8 bytes, as the server clips answers. */
function clip(text, maxBytes) {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= maxBytes) return text;
  let cut = new TextDecoder().decode(bytes.slice(0, maxBytes));
  if (cut.endsWith('\uFFFD')) cut = cut.slice(0, -1);
  return `${cut}…[clipped]`;
}

function flash(message, kind = 'info') {
  const box = h('div', { class: `flash flash-${kind}`, role: 'status' }, message);
  document.body.append(box);
  setTimeout(() => box.remove(), 4000);
}

function problemText(error) {
  if (error instanceof ApiError) return `${error.status}: ${error.message}`;
  return error?.message || String(error);
}

// ---------- routing and polling ----------

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = raw.split('?');
  return { path, params: new URLSearchParams(search) };
}

function setHashParams(path, params) {
  const text = params.toString();
  // replaceState: the filters are remembered in the address without re-rendering the page.
  history.replaceState(null, '', `#${path}${text ? `?${text}` : ''}`);
}

async function route() {
  view?.dispose?.();
  view = null;
  const { path, params } = parseHash();
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.remove('active'));
  main.replaceChildren();
  if (path.startsWith('/tx/')) {
    view = transactionView(decodeURIComponent(path.slice(4)));
  } else if (path === '/dead-letters') {
    document.querySelector('[data-nav="dead-letters"]').classList.add('active');
    view = deadLettersView(params);
  } else if (path === '/instances') {
    document.querySelector('[data-nav="instances"]').classList.add('active');
    view = instancesView();
  } else if (path === '/stuck') {
    document.querySelector('[data-nav="stuck"]').classList.add('active');
    view = stuckView();
  } else {
    document.querySelector('[data-nav="list"]').classList.add('active');
    view = listView(params);
  }
  await tick();
}

async function tick() {
  if (busy || needsLogin || !view) return;
  busy = true;
  const current = view;
  try {
    await Promise.all([current.refresh(), refreshStuckBadge()]);
    live.textContent = `live · ${formatTime(new Date().toISOString()).slice(11, 19)}`;
    live.className = 'live ok';
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(error.message);
    } else {
      live.textContent = `offline: ${problemText(error)}`;
      live.className = 'live down';
    }
  } finally {
    busy = false;
  }
}

async function refreshStuckBadge() {
  const counts = await api.counts({ stuck: true });
  stuckBadge.hidden = counts.total === 0;
  stuckBadge.textContent = String(counts.total);
}

function startPolling() {
  stopPolling();
  polling = setInterval(() => {
    if (document.visibilityState === 'visible') tick();
  }, POLL_MS);
}

function stopPolling() {
  if (polling !== null) clearInterval(polling);
  polling = null;
}

// ---------- login ----------

function showLogin(message) {
  needsLogin = true;
  stopPolling();
  main.hidden = true;
  loginSection.hidden = false;
  logoutButton.hidden = true;
  loginError.textContent = getKey() ? message : '';
  clearKey();
  live.textContent = 'signed out';
  live.className = 'live';
  keyInput.focus();
}

function hideLogin() {
  needsLogin = false;
  loginSection.hidden = true;
  main.hidden = false;
  logoutButton.hidden = !getKey();
}

loginForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  setKey(key);
  keyInput.value = '';
  hideLogin();
  await route();
  if (!needsLogin) startPolling();
});

logoutButton.addEventListener('click', () => {
  clearKey();
  showLogin('');
});

// ---------- the list ----------

function listView(params) {
  const filters = {
    status: params.get('status') || '',
    protocol: params.get('protocol') || '',
    stuck: params.get('stuck') || '',
    since: params.get('since') || '',
    until: params.get('until') || '',
    gid: params.get('gid') || '',
  };
  const pages = [null]; // cursors of the pages seen so far: pages[i] opens page i
  let page = 0;
  let nextCursor = null;

  const select = (name, options, label) => h('label', {}, label,
    h('select', { name, id: `filter-${name}`, onchange: (e) => update(name, e.target.value) },
      h('option', { value: '' }, 'any'),
      options.map((o) => h('option', { value: o, selected: filters[name] === o }, o))));

  const timeInput = (name, label) => h('label', {}, label,
    h('input', {
      type: 'datetime-local', step: 1, name, id: `filter-${name}`,
      value: filters[name] ? toLocalInput(filters[name]) : '',
      onchange: (e) => update(name, e.target.value ? new Date(e.target.value).toISOString() : ''),
    }));

  let searchTimer = null;
  const form = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    select('status', STATUSES, 'Status'),
    select('protocol', PROTOCOLS, 'Protocol'),
    h('label', {}, 'Stuck',
      h('select', { name: 'stuck', id: 'filter-stuck', onchange: (e) => update('stuck', e.target.value) },
        h('option', { value: '' }, 'any'),
        h('option', { value: 'true', selected: filters.stuck === 'true' }, 'stuck only'),
        h('option', { value: 'false', selected: filters.stuck === 'false' }, 'not stuck'))),
    timeInput('since', 'Since'),
    timeInput('until', 'Until'),
    h('label', {}, 'Gid contains',
      h('input', {
        type: 'search', name: 'gid', id: 'filter-gid', value: filters.gid, maxlength: 128, placeholder: 'order-42',
        oninput: (e) => {
          clearTimeout(searchTimer);
          searchTimer = setTimeout(() => update('gid', e.target.value.trim()), 250);
        },
      })),
    h('button', { type: 'button', class: 'link', id: 'filter-clear', onclick: () => { history.replaceState(null, '', '#/'); route(); } }, 'Clear'));

  const counts = h('div', { class: 'counts', id: 'counts' });
  const error = h('p', { class: 'error', role: 'alert' });
  const body = h('tbody', { id: 'tx-rows' });
  const table = h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, ['Gid', 'Protocol', 'Status', 'Phase', 'Branches', 'Created', 'Updated', 'Reason'].map((c) => h('th', {}, c)))),
    body);
  const prev = h('button', { type: 'button', onclick: () => { if (page > 0) { page -= 1; refresh(); } } }, '← Newer');
  const next = h('button', { type: 'button', onclick: () => { if (nextCursor) { pages[page + 1] = nextCursor; page += 1; refresh(); } } }, 'Older →');
  const pager = h('div', { class: 'pager' }, prev, h('span', { id: 'page-number' }), next);

  main.append(h('h1', {}, 'Transactions'), form, counts, error, table, pager);

  function update(name, value) {
    filters[name] = value;
    pages.length = 1;
    page = 0;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) params.set(k, v);
    setHashParams('/', params);
    tick();
  }

  async function refresh() {
    const query = { ...filters, limit: PAGE_SIZE, cursor: pages[page] };
    let list;
    let byStatus;
    try {
      [list, byStatus] = await Promise.all([api.list(query), api.counts(filters)]);
      error.textContent = '';
    } catch (e) {
      if (e instanceof ApiError && e.status === 400) {
        error.textContent = problemText(e);
        return;
      }
      throw e;
    }
    renderCounts(byStatus);
    nextCursor = list.nextCursor;
    prev.disabled = page === 0;
    next.disabled = !nextCursor;
    pager.querySelector('#page-number').textContent = `page ${page + 1}`;
    body.replaceChildren(...(list.items.length === 0
      ? [h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'No transactions match.'))]
      : list.items.map((t) => h('tr', { 'data-gid': t.gid, class: t.stuck ? 'stuck' : '' },
        h('td', {}, txLink(t.gid)),
        h('td', {}, t.protocol),
        h('td', {}, statusBadge(t.status, t.stuck)),
        h('td', {}, t.phase || ''),
        h('td', { class: 'num' }, t.branches),
        h('td', {}, formatTime(t.createdAt)),
        h('td', {}, formatTime(t.updatedAt)),
        h('td', { class: 'reason' }, t.reason || '')))));
  }

  function renderCounts(c) {
    const chip = (status, n, label) => h('button', {
      type: 'button',
      class: `count${filters.status === status ? ' selected' : ''} status-${status || 'all'}`,
      'data-count': status || 'all',
      onclick: () => { update('status', status); counts.querySelectorAll('.count').forEach((b) => b.classList.toggle('selected', b.dataset.count === (status || 'all'))); },
    }, h('span', { class: 'label' }, label), h('span', { class: 'n' }, n));
    counts.replaceChildren(
      chip('', c.total, 'all'),
      ...STATUSES.map((s) => chip(s, c.byStatus[s] ?? 0, s)),
      h('span', { class: 'count stuck-count', 'data-count': 'stuck' }, h('span', { class: 'label' }, 'stuck'), h('span', { class: 'n' }, c.stuck)));
  }

  return { refresh, dispose: () => clearTimeout(searchTimer) };
}

function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// ---------- operator actions ----------

function actionButtons(tx, after) {
  const terminal = tx.status === 'committed' || tx.status === 'aborted';
  if (terminal) return null;
  // Past its point of no return (the commit is decided) or already aborting, an abort would be refused (409).
  const canAbort = tx.decision !== 'commit' && tx.status !== 'aborting';
  const reason = h('input', { type: 'text', class: 'reason-input', placeholder: 'reason for abort (optional)', maxlength: 500, 'aria-label': 'Reason for abort' });
  let armed = false;
  const abort = h('button', {
    type: 'button', class: 'danger', 'data-action': 'abort',
    onclick: async () => {
      // Two clicks: an abort cannot be taken back (window.confirm is unavailable to some operators' browsers and to tests).
      if (!armed) {
        armed = true;
        abort.textContent = 'Confirm abort';
        setTimeout(() => { armed = false; abort.textContent = 'Abort'; }, 5000);
        return;
      }
      await act(() => api.abort(tx.gid, reason.value.trim()), `Abort of ${tx.gid} requested.`, after);
    },
  }, 'Abort');
  const retry = h('button', {
    type: 'button', class: 'primary', 'data-action': 'retry',
    onclick: () => act(() => api.retry(tx.gid), `Retry of ${tx.gid} requested.`, after),
  }, 'Retry now');
  return canAbort ? h('div', { class: 'actions' }, retry, abort, reason) : h('div', { class: 'actions' }, retry);
}

async function act(call, message, after) {
  try {
    await call();
    flash(message, 'ok');
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(error.message);
      return;
    }
    flash(error instanceof ApiError && error.status === 403 ? 'This key may read but not act: use an operator key.' : problemText(error), 'error');
  }
  await after?.();
}

// ---------- the stuck view ----------

function stuckView() {
  const body = h('tbody', { id: 'stuck-rows' });
  main.append(
    h('h1', {}, 'Stuck transactions'),
    h('p', { class: 'hint' }, 'These wait for an operator: an operation ran out of retries (or the deadline passed). Fix the participant, then retry; or abort while the transaction has not passed its point of no return. Every action is recorded in the transaction\'s timeline.'),
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Gid', 'Protocol', 'Status', 'Waiting on', 'Attempts', 'Last error', 'Updated', 'Actions'].map((c) => h('th', {}, c)))),
      body));

  let last = '';
  async function refresh() {
    // The listing carries what each one waits on: one request per poll, however many are stuck.
    const list = await api.list({ stuck: true, limit: 100 });
    const txs = list.items;
    const signature = JSON.stringify(txs.map((t) => [t.gid, t.status, t.updatedAt]));
    if (signature === last) return; // keep the operator's half-typed reason and armed button
    last = signature;
    body.replaceChildren(...(txs.length === 0
      ? [h('tr', {}, h('td', { colspan: 8, class: 'empty' }, 'Nothing is stuck.'))]
      : txs.map((t) => h('tr', { 'data-gid': t.gid },
        h('td', {}, txLink(t.gid)),
        h('td', {}, t.protocol),
        h('td', {}, statusBadge(t.status, true)),
        h('td', {}, t.stuckOn ? `${t.stuckOn.branch ? `${t.stuckOn.branch}.` : ''}${t.stuckOn.op}` : ''),
        h('td', { class: 'num' }, t.stuckOn?.attempts ?? ''),
        h('td', { class: 'reason' }, t.stuckOn?.lastError || (t.stuckOn?.lastStatusCode ? `HTTP ${t.stuckOn.lastStatusCode}` : '')),
        h('td', {}, formatTime(t.updatedAt)),
        h('td', {}, actionButtons(t, async () => { last = ''; await tick(); }))))));
  }
  return { refresh };
}

// ---------- coordinator instances (from the leases in the store; no registry) ----------

function instancesView() {
  const body = h('tbody', { id: 'instance-rows' });
  const summary = h('p', { class: 'hint', id: 'instances-summary' });
  main.append(
    h('h1', {}, 'Coordinator instances'),
    h('p', { class: 'hint' }, 'The instances that hold unfinished transactions, read from the leases in the store. A live instance renews its leases; one whose leases ran out has stopped (crashed, paused or cut off from the database), and the others take its transactions over as they come due. An idle instance holds nothing and is not listed.'),
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Instance', 'Holds', 'Lease until', 'Lease'].map((c) => h('th', {}, c)))),
      body),
    summary);

  async function refresh() {
    const list = await api.instances();
    body.replaceChildren(...(list.instances.length === 0
      ? [h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No instance holds an unfinished transaction.'))]
      : list.instances.map((i) => h('tr', { 'data-instance': i.instance },
        h('td', {}, i.instance, i.instance === list.self ? h('span', { class: 'hint', 'data-self': true }, ' (this one)') : null),
        h('td', { class: 'num', 'data-held': i.held }, String(i.held)),
        h('td', {}, formatTime(i.leaseUntil)),
        h('td', {}, h('span', { class: `tone ${i.expired ? 'tone-bad' : 'tone-ok'}`, 'data-lease': i.expired ? 'expired' : 'live' }, i.expired ? 'expired' : 'live'))))));
    summary.textContent = `Answered by ${list.self}.`;
  }
  return { refresh };
}

// ---------- dead letters (they live in each service's database; the coordinator asks them) ----------

const DEAD_LETTER_STATUSES = ['dead', 'replaying', 'replayed'];

function deadLettersView(params) {
  const filters = { status: params.get('status') || '' };
  const sources = h('div', { class: 'counts', id: 'dl-sources' });
  const error = h('p', { class: 'error', role: 'alert', id: 'dl-error' });
  const body = h('tbody', { id: 'dl-rows' });
  const openAttempts = new Set();
  const form = h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
    h('label', {}, 'Status',
      h('select', {
        name: 'status', id: 'dl-filter-status',
        onchange: (e) => {
          filters.status = e.target.value;
          setHashParams('/dead-letters', new URLSearchParams(filters.status ? { status: filters.status } : {}));
          last = '';
          tick();
        },
      },
      h('option', { value: '' }, 'any'),
      DEAD_LETTER_STATUSES.map((s) => h('option', { value: s, selected: filters.status === s }, s)))));
  main.append(
    h('h1', {}, 'Dead letters'),
    h('p', { class: 'hint' }, 'Messages a service gave up on after its handler failed every attempt, read from each service named by --dead-letter-source (they stay in the service\'s own database). Fix the cause, then replay: the service delivers the message to its handler again, once.'),
    form, sources, error,
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Source', 'Type', 'Correlation id', 'Consumer', 'Error', 'Attempts', 'Dead-lettered', 'Status', 'Actions'].map((c) => h('th', {}, c)))),
      body));

  let last = '';
  async function refresh() {
    let list;
    try {
      list = await api.deadLetters(filters);
      error.textContent = '';
    } catch (e) {
      if (e instanceof ApiError && (e.status === 403 || e.status === 400)) {
        error.textContent = e.status === 403 ? 'Dead letters are for operator keys.' : problemText(e);
        body.replaceChildren();
        sources.replaceChildren();
        last = '';
        return;
      }
      throw e;
    }
    const signature = JSON.stringify(list);
    if (signature === last) return; // keep the operator's open attempt lists as they are
    last = signature;
    sources.replaceChildren(...(list.sources.length === 0
      ? [h('span', { class: 'hint' }, 'No dead-letter sources are configured: start the coordinator with --dead-letter-source NAME=URL.')]
      : list.sources.map((s) => h('span', {
        class: `count source ${s.reachable ? 'source-ok' : 'source-down'}`, 'data-source': s.name, title: s.url,
      }, h('span', { class: 'label' }, s.name), h('span', { class: 'n' }, s.reachable ? s.count : `unreachable: ${s.error}`)))));
    body.replaceChildren(...(list.deadLetters.length === 0
      ? [h('tr', {}, h('td', { colspan: 9, class: 'empty' }, 'No dead letters.'))]
      : list.deadLetters.map((d) => {
        const key = `${d.source}/${d.id}`;
        const attempts = h('details', { class: 'body attempts', 'data-attempts': key, open: openAttempts.has(key) },
          h('summary', {}, `${d.attempts.length} attempt${d.attempts.length === 1 ? '' : 's'}`),
          h('ol', { class: 'attempt-list' }, d.attempts.map((a) => h('li', { class: a.archived ? 'archived' : '' },
            h('span', { class: 'time' }, formatTime(a.at)), a.archived ? ' (before a replay) ' : ' ', h('pre', {}, a.error)))));
        attempts.addEventListener('toggle', () => (attempts.open ? openAttempts.add(key) : openAttempts.delete(key)));
        const replay = d.status === 'dead'
          ? h('button', {
            type: 'button', class: 'primary', 'data-action': 'replay',
            onclick: async (e) => {
              e.target.disabled = true;
              await act(() => api.replayDeadLetter(d.source, d.id), `Replay of ${d.type} (${d.correlationId}) from ${d.source} requested.`, async () => { last = ''; await tick(); });
            },
          }, 'Replay')
          : null;
        return h('tr', { 'data-source': d.source, 'data-id': d.id, 'data-message-id': d.messageId, 'data-status': d.status },
          h('td', {}, d.source),
          h('td', {}, d.type),
          h('td', { class: 'correlation' }, d.transactionExists ? txLink(d.correlationId) : h('span', { class: 'gid' }, d.correlationId)),
          h('td', {}, d.consumer),
          h('td', { class: 'reason dl-error' }, firstLine(d.error)),
          h('td', {}, attempts),
          h('td', {}, formatTime(d.deadLetteredAt)),
          h('td', {}, h('span', { class: `status dl-status-${d.status}` }, d.status), d.replayedAt ? h('div', { class: 'hint' }, formatTime(d.replayedAt)) : null),
          h('td', {}, replay));
      })));
  }
  return { refresh };
}

/** An exception's text starts with its message; the stack trace is in the attempts. */
function firstLine(text) {
  const line = String(text || '').split('\n')[0];
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}

// ---------- one transaction ----------

const KIND_CLASS = {
  vote: 'vote',
  committing: 'decision commit',
  committed: 'decision commit',
  aborting: 'decision abort',
  aborted: 'decision abort',
  'operator-retry': 'operator',
  'operator-abort': 'operator',
  stuck: 'bad',
  'attempt-failed': 'bad',
  'attempt-unknown': 'warn',
  'attempt-succeeded': 'ok',
  phase: 'phase',
};

function transactionView(gid) {
  const header = h('div', { class: 'tx-header' });
  const actions = h('div', { id: 'tx-actions' });
  const graph = h('div', { class: 'graph-box', id: 'graph' });
  const branches = h('div', { id: 'branches' });
  const timeline = h('tbody', { id: 'timeline' });
  const missing = h('p', { class: 'error', role: 'alert' });
  const openBodies = new Set();
  main.append(
    h('p', {}, h('a', { href: '#/' }, '← all transactions')),
    missing, header, actions,
    h('h2', {}, 'Branches'), graph, branches,
    h('h2', {}, 'Timeline'),
    h('table', { class: 'timeline' },
      h('thead', {}, h('tr', {}, ['Time', '+ms', 'Event', 'Branch · op', 'Attempt', 'Status / detail', 'Latency', 'Bodies'].map((c) => h('th', {}, c)))),
      timeline));

  let last = '';
  async function refresh() {
    let tx;
    let events;
    try {
      [tx, events] = await Promise.all([api.get(gid), api.events(gid)]);
      missing.textContent = '';
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        missing.textContent = `No transaction '${gid}'.`;
        return;
      }
      throw e;
    }
    const signature = JSON.stringify([tx, events.events.length]);
    if (signature === last) return;
    last = signature;
    renderHeader(tx);
    actions.replaceChildren(actionButtons(tx, async () => { last = ''; await tick(); }) || '');
    graph.replaceChildren(renderGraph(tx));
    renderBranches(tx);
    renderTimeline(tx, events.events);
  }

  function renderHeader(tx) {
    const field = (label, value, id) => value === undefined || value === null || value === '' ? null
      : h('div', { class: 'field' }, h('dt', {}, label), h('dd', id ? { id } : {}, value));
    header.replaceChildren(
      h('h1', {}, h('span', { class: 'gid', id: 'tx-gid' }, tx.gid), ' ', statusBadge(tx.status, tx.stuck)),
      h('dl', { class: 'fields' },
        field('Protocol', tx.protocol, 'tx-protocol'),
        field('Phase', tx.phase, 'tx-phase'),
        field('Decision', tx.decision, 'tx-decision'),
        field('Created', formatTime(tx.createdAt)),
        field('Updated', formatTime(tx.updatedAt)),
        field('Deadline', tx.deadline ? formatTime(tx.deadline) : null),
        field('Next wake-up', tx.nextWakeAt ? formatTime(tx.nextWakeAt) : null),
        field('Reason', tx.reason, 'tx-reason'),
        field('Stuck on', tx.stuck && tx.stuckOn && tx.protocol === 'choreography' ? `${tx.stuckOn.lastError} (${tx.stuckOn.attempts} events, last from ${tx.stuckOn.branch || '-'})` : tx.stuck && tx.stuckOn ? `${tx.stuckOn.branch ? `${tx.stuckOn.branch}.` : ''}${tx.stuckOn.op} after ${tx.stuckOn.attempts} attempts: ${tx.stuckOn.lastError || `HTTP ${tx.stuckOn.lastStatusCode}`}` : null, 'tx-stuck-on'),
        field('Writes', tx.writes ? `${tx.writes.total} (${tx.writes.forced} forced before a call)` : null)),
      h('details', { class: 'payload' }, h('summary', {}, 'Payload'), h('pre', {}, JSON.stringify(tx.payload, null, 2))));
  }

  function renderBranches(tx) {
    const rows = [];
    for (const b of tx.branches) {
      for (const [op, o] of Object.entries(b.ops)) {
        rows.push(h('tr', { 'data-branch': b.name, 'data-op': op },
          h('td', {}, b.name, b.pivot ? ' ◆' : ''),
          h('td', {}, h('span', { class: `tone tone-${tone(b.status)}` }, b.status)),
          h('td', {}, b.vote || ''),
          h('td', {}, op),
          h('td', {}, h('span', { class: `tone tone-${tone(o.status)}` }, o.status)),
          h('td', { class: 'num' }, o.attempts),
          h('td', {}, o.lastStatusCode ?? ''),
          h('td', { class: 'reason' }, o.lastError || ''),
          h('td', { class: 'url' }, o.url)));
      }
    }
    for (const [op, o] of Object.entries(tx.ops || {})) {
      rows.push(h('tr', { 'data-op': op },
        h('td', {}, '(transaction)'), h('td', {}), h('td', {}), h('td', {}, op),
        h('td', {}, h('span', { class: `tone tone-${tone(o.status)}` }, o.status)),
        h('td', { class: 'num' }, o.attempts), h('td', {}, o.lastStatusCode ?? ''), h('td', { class: 'reason' }, o.lastError || ''), h('td', { class: 'url' }, o.url)));
    }
    branches.replaceChildren(h('table', { class: 'list branches' },
      h('thead', {}, h('tr', {}, ['Branch', 'State', 'Vote', 'Operation', 'Op state', 'Attempts', 'Last status', 'Last error', 'URL'].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows)));
  }

  function requestBody(tx, e) {
    const envelope = { gid: tx.gid };
    if (e.branch) envelope.branch = e.branch;
    envelope.op = e.op;
    envelope.attempt = e.attempt;
    envelope.payload = tx.payload;
    return clip(JSON.stringify(envelope, null, 2), settings.timelineBodyBytes);
  }

  function bodyDetails(key, label, text) {
    const details = h('details', { class: 'body', 'data-body': key, open: openBodies.has(key) }, h('summary', {}, label), h('pre', {}, text));
    details.addEventListener('toggle', () => (details.open ? openBodies.add(key) : openBodies.delete(key)));
    return details;
  }

  function renderTimeline(tx, events) {
    const start = events.length ? new Date(events[0].at).getTime() : 0;
    timeline.replaceChildren(...events.map((e) => {
      const bodies = [];
      if (e.kind === 'attempt-started' && e.op) bodies.push(bodyDetails(`${e.sequence}-req`, 'request', requestBody(tx, e)));
      if (e.body) bodies.push(bodyDetails(`${e.sequence}-res`, e.kind === 'event' ? 'payload' : 'response', pretty(e.body)));
      const result = [e.statusCode ? `HTTP ${e.statusCode}` : '', e.detail || ''].filter(Boolean).join(' · ');
      return h('tr', { class: `kind-${e.kind} ${KIND_CLASS[e.kind] || ''}`, 'data-kind': e.kind, 'data-seq': e.sequence },
        h('td', { class: 'time' }, formatTime(e.at)),
        h('td', { class: 'num' }, new Date(e.at).getTime() - start),
        h('td', {}, e.kind),
        h('td', {}, [e.branch, e.op].filter(Boolean).join(' · ')),
        h('td', { class: 'num' }, e.attempt ?? ''),
        h('td', { class: 'reason' }, result),
        h('td', { class: 'num latency' }, e.durationMs !== undefined && e.durationMs !== null ? `${e.durationMs} ms` : ''),
        h('td', {}, bodies));
    }));
  }

  return { refresh };
}

// ---------- start ----------

window.addEventListener('hashchange', route);
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') tick(); });

(async () => {
  logoutButton.hidden = !getKey();
  try {
    settings = await api.settings();
  } catch {
    // The defaults do.
  }
  await route();
  if (!needsLogin) startPolling();
})();
