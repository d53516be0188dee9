// fulfilld operator console: a dependency-free single page over the admin JSON API
// (/admin/overview, /admin/orders/{id}, /admin/jobs, /admin/dead-letters, /admin/components).
// Served under a strict CSP: no inline code or styles, nothing from another origin.
// Everything the API returns is treated as hostile text: the DOM is built with createElement
// and textContent only, never innerHTML, and API values never become class names unchecked.
'use strict';

(() => {
  const TOKEN_KEY = 'fulfilld.console.adminToken';
  const REFRESH_MS = 5000;
  const JOB_STATES = ['queued', 'running', 'failed', 'dead'];
  const NO_REGISTRY = 'no component registry on this host (FULFILLD_REGISTRY_DIR)';
  // Values that have a colour of their own; anything else is drawn neutral.
  const TONES = new Set([
    'ok', 'degraded', 'queued', 'running', 'completed', 'skipped', 'failed', 'dead',
    'leader', 'follower', 'disabled', 'yes', 'no', 'job', 'undecodable', 'damaged',
    'active', 'running-version', 'enqueued', 'claimed', 'call', 'finished', 'dead_lettered',
    'requeued', 'error',
  ]);

  const state = {
    seq: 0,            // bumps on every navigation; a stale load never paints
    route: null,
    overview: null,    // last /admin/overview answer
    signature: null,   // JSON of the data the current view shows (auto-refresh skips no-ops)
    busy: false,       // a write is in flight: auto-refresh waits
    refreshing: false,
    rseq: 0,           // bumps on every refresh; only the newest one paints
  };

  // ---------------------------------------------------------------- small helpers

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
  const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

  /** Creates an element. Props: class, text, data-*, aria-*, plain attributes, on<event>. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'disabled' || k === 'hidden' || k === 'open') el[k] = true;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  /** Any API value as display text. */
  function txt(v) {
    if (v === null || v === undefined || v === '') return '—';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  const tone = (v) => (TONES.has(String(v)) ? String(v) : 'other');

  function badge(value, extra) {
    return h('span', Object.assign({ class: `badge tone-${tone(value)}` }, extra || {}), txt(value));
  }

  function mono(v, props) {
    return h('code', Object.assign({ class: 'mono' }, props || {}), txt(v));
  }

  function short(sha) {
    const s = typeof sha === 'string' ? sha : txt(sha);
    return s.length > 14 ? s.slice(0, 12) + '…' : s;
  }

  function orderLink(id) {
    if (id === null || id === undefined || id === '') return h('span', { class: 'muted' }, '—');
    return h('a', { href: '#/orders/' + encodeURIComponent(String(id)), class: 'mono' }, String(id));
  }

  // ---------------------------------------------------------------- time

  function toMs(v) {
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    if (typeof v === 'string' && v) {
      const n = Date.parse(v);
      return Number.isNaN(n) ? null : n;
    }
    return null;
  }

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function localTime(d, withMs) {
    let s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (withMs) s += '.' + pad(d.getMilliseconds(), 3);
    return s;
  }

  function span(s) {
    if (s < 90) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 90) return `${m} min`;
    const hr = Math.round(m / 60);
    if (hr < 36) return `${hr} h`;
    return `${Math.round(hr / 24)} d`;
  }

  function ago(ms) {
    const s = Math.round((Date.now() - ms) / 1000);
    return s < 0 ? `in ${span(-s)}` : `${span(s)} ago`;
  }

  /** A <time>: local time, "N s ago", the ISO form as tooltip. */
  function when(v, opts = {}) {
    const ms = toMs(v);
    const d = ms === null ? null : new Date(ms);
    if (!d || Number.isNaN(d.getTime())) return h('span', { class: 'muted' }, txt(v));
    const iso = d.toISOString();
    return h('time', { datetime: iso, title: iso },
      localTime(d, opts.ms),
      opts.ago === false ? null : h('span', { class: 'ago' }, ago(ms)));
  }

  function duration(ms) {
    if (typeof ms !== 'number' || !Number.isFinite(ms)) return txt(ms);
    return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function bytes(n) {
    if (typeof n !== 'number' || !Number.isFinite(n)) return txt(n);
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }

  async function api(path, method = 'GET') {
    const headers = { Accept: 'application/json' };
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store', credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(`cannot reach the host (${e.message})`, 0);
    }
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!res.ok) {
      const err = obj(body).error;
      throw new ApiError(typeof err === 'string' && err ? err : `HTTP ${res.status} ${res.statusText}`.trim(), res.status);
    }
    if (!body || typeof body !== 'object') throw new ApiError('the host answered something other than a JSON object', res.status);
    return body;
  }

  // ---------------------------------------------------------------- message line

  function showMessage(kind, text) {
    const box = $('#message');
    box.dataset.kind = kind;
    box.className = `message message-${kind === 'ok' || kind === 'error' ? kind : 'info'}`;
    $('#message-text').textContent = text;
    box.hidden = false;
  }

  function clearMessage() {
    const box = $('#message');
    box.hidden = true;
    delete box.dataset.kind;
    $('#message-text').textContent = '';
  }

  // ---------------------------------------------------------------- token and write buttons

  const writable = () => obj(obj(state.overview).admin).writable !== false;

  /** A button that changes something: disabled without a token, titled with the hint. */
  function writeButton(label, verb, props, action) {
    const b = h('button', Object.assign({ type: 'button', 'data-write': verb }, props || {}), label);
    b.addEventListener('click', async () => {
      if (b.disabled) return;
      state.busy = true;
      b.dataset.busy = '1';
      applyWriteState();
      try { await action(b); } finally {
        state.busy = false;
        delete b.dataset.busy;
        applyWriteState();
      }
    });
    return b;
  }

  function applyWriteState() {
    const t = token();
    for (const b of $$('[data-write]')) {
      b.disabled = !t || b.dataset.busy === '1' || state.busy;
      b.title = t ? (b.dataset.hint || '') : `enter the admin token to ${b.dataset.write}`;
    }
    for (const el of $$('[data-token-hint]')) el.hidden = !!t;
    const st = $('#token-state');
    st.textContent = t ? 'saved for this tab' : 'no token';
    st.className = 'token-state ' + (t ? 'token-set' : 'token-unset');
    $('#token-input').placeholder = t ? '•••••• (saved)' : 'not set';
    $('#token-forget').disabled = !t;
  }

  /** The note shown instead of write buttons when the host cannot change anything. */
  function readOnlyNote(what) {
    return h('p', { class: 'note note-readonly', 'data-testid': 'read-only-note', id: 'read-only-note' },
      `Read-only host: ${what} is off because this host has no admin token (FULFILLD_ADMIN_TOKEN) ` +
      'or no component registry (FULFILLD_REGISTRY_DIR) configured.');
  }

  function tokenHint(what) {
    return h('p', { class: 'note note-token', 'data-token-hint': '', hidden: !!token() },
      `Enter the admin token in the header to ${what}.`);
  }

  function initToken() {
    $('#token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('#token-input');
      const v = input.value.trim();
      if (!v) {
        showMessage('error', 'Type the admin token first, then Save.');
        input.focus();
        return;
      }
      try { sessionStorage.setItem(TOKEN_KEY, v); } catch (_) {
        showMessage('error', 'This browser does not allow sessionStorage; the token cannot be kept.');
        return;
      }
      input.value = '';
      applyWriteState();
      showMessage('ok', 'Admin token saved for this tab (sessionStorage only).');
    });
    $('#token-forget').addEventListener('click', () => {
      try { sessionStorage.removeItem(TOKEN_KEY); } catch (_) { /* nothing kept */ }
      $('#token-input').value = '';
      applyWriteState();
      showMessage('info', 'Admin token forgotten.');
    });
  }

  // ---------------------------------------------------------------- header: health pill

  async function loadOverview() {
    let ov;
    try { ov = await api('/admin/overview'); } catch (e) { paintHeader(e.message); throw e; }
    state.overview = ov;
    paintHeader();
    return ov;
  }

  function paintHeader(error) {
    const pill = $('#health-pill');
    const sub = $('#brand-sub');
    if (error) {
      pill.className = 'pill pill-error';
      pill.textContent = 'unreachable';
      pill.title = error;
      return;
    }
    const ov = obj(state.overview);
    const status = obj(ov.health).status;
    pill.className = `pill pill-${tone(status)}`;
    pill.textContent = txt(status);
    pill.title = arr(obj(ov.health).problems).map(txt).join('\n') || 'no problems';
    sub.textContent = [ov.replica, ov.environment].filter((x) => typeof x === 'string' && x).join(' · ');
  }

  // ---------------------------------------------------------------- views

  function pageHead(title, ...rest) {
    return h('div', { class: 'page-head' }, h('h1', null, title), ...rest);
  }

  function errorPanel(title, text, testid) {
    return h('div', { class: 'panel panel-error', 'data-testid': testid || 'view-error' },
      h('h2', null, title), h('p', { class: 'error-text' }, text));
  }

  function empty(text) {
    return h('p', { class: 'empty' }, text);
  }

  function kv(rows) {
    return h('dl', { class: 'kv' }, rows.filter(Boolean).map(([k, v, props]) =>
      h('div', Object.assign({ class: 'kv-row' }, props || {}), h('dt', null, k),
        h('dd', null, v instanceof Node ? v : txt(v)))));
  }

  function stat(label, value, props, href) {
    const num = h('span', { class: 'stat-value' }, txt(value));
    return h('div', Object.assign({ class: 'stat' }, props || {}),
      href ? h('a', { href }, num) : num, h('span', { class: 'stat-label' }, label));
  }

  function yesNo(v) {
    if (v === true) return badge('yes');
    if (v === false) return badge('no');
    return h('span', { class: 'muted' }, txt(v));
  }

  // --- overview

  async function overviewLoad() {
    return loadOverview();
  }

  function overviewView(ov) {
    const health = obj(ov.health);
    const sub = obj(ov.subscription);
    const lease = obj(ov.lease);
    const queue = obj(ov.queue);
    const rates = obj(ov.rates);
    const comp = obj(ov.component);
    const problems = arr(health.problems);
    return h('div', { 'data-testid': 'overview' },
      pageHead('Overview',
        h('p', { class: 'sub' },
          `replica ${txt(ov.replica)} · ${txt(ov.environment)} · fulfilld ${txt(ov.version)} · refreshed `,
          h('span', { id: 'refreshed-at' }, localTime(new Date()).slice(11)),
          ', every 5 s')),
      h('div', { class: 'stats' },
        stat('queue depth', queue.depth, { 'data-testid': 'queue-depth', id: 'queue-depth' }, '#/jobs/queued'),
        stat('dead letters', queue.dead_letters, { 'data-testid': 'dead-letter-count', id: 'dead-letter-count' }, '#/dead-letters'),
        stat('jobs last minute', rates.jobs_last_minute, { id: 'rate-1m' }),
        stat('jobs last 5 minutes', rates.jobs_last_5_minutes, { id: 'rate-5m' })),
      h('div', { class: 'grid' },
        h('section', { class: 'card' },
          h('h2', null, 'Health'),
          h('div', { class: 'health-line' },
            badge(health.status, { id: 'health-status', 'data-testid': 'health-status', 'data-status': txt(health.status) })),
          problems.length
            ? h('ul', { class: 'problems', id: 'health-problems', 'data-testid': 'health-problems' },
              problems.map((p) => h('li', null, txt(p))))
            : h('p', { class: 'muted', id: 'health-problems' }, 'No problems reported.')),
        h('section', { class: 'card card-wide' },
          h('h2', null, 'Subscription'),
          kv([
            ['channel', mono(sub.channel, { id: 'sub-channel', 'data-testid': 'sub-channel' })],
            ['enabled', yesNo(sub.enabled)],
            ['role', badge(sub.role, { id: 'sub-role' })],
            ['connected', yesNo(sub.connected)],
            ['lease epoch', sub.lease_epoch],
            ['cursor', mono(sub.cursor, { id: 'sub-cursor' })],
            ['latest replay id', mono(sub.latest_replay_id)],
            ['last event', when(sub.last_event_at)],
            ['reconnects', sub.reconnects],
            sub.last_error !== null && sub.last_error !== undefined
              ? ['last error', h('span', { class: 'error-text' }, txt(sub.last_error))] : null,
          ])),
        h('section', { class: 'card' },
          h('h2', null, 'Lease'),
          kv([
            ['holder', mono(lease.holder, { id: 'lease-holder' })],
            ['epoch', lease.epoch],
            ['expires in', typeof lease.expires_in_ms === 'number' ? duration(lease.expires_in_ms) : txt(lease.expires_in_ms)],
          ])),
        h('section', { class: 'card' },
          h('h2', null, 'Active component'),
          kv([
            ['name', h('span', { id: 'component-name' }, `${txt(comp.name)} ${txt(comp.version)}`)],
            ['sha256', mono(short(comp.sha256), { title: txt(comp.sha256) })],
          ]),
          h('p', null, h('a', { href: '#/components' }, 'All versions →'))),
        h('section', { class: 'card' },
          h('h2', null, 'Admin'),
          obj(ov.admin).writable === false
            ? readOnlyNote('requeue, activate and rollback')
            : h('p', { class: 'muted' }, 'Writes enabled: requeue, activate and rollback need the admin token.'))));
  }

  // --- order

  const EVENT_KEYS = {
    enqueued: ['replay_id'],
    claimed: ['worker', 'delivery'],
    finished: ['delivery', 'outcome', 'code', 'message', 'component', 'elapsed_ms'],
    dead_lettered: ['reason'],
    requeued: ['dead_letter_id'],
  };
  const SKIP_KEYS = new Set(['at_ms', 'replica', 'event', 'request', 'answer']);

  function detailsBlock(label, value, key) {
    let body;
    try { body = JSON.stringify(value, null, 2); } catch (_) { body = txt(value); }
    return h('details', { class: 'payload', 'data-key': key, 'data-testid': `journal-${label}` },
      h('summary', null, label), h('pre', null, body === undefined ? 'undefined' : body));
  }

  function field(k, v) {
    let shown;
    if (k === 'outcome') shown = badge(v);
    else if (k.endsWith('_ms') && k !== 'at_ms') shown = h('span', null, duration(v));
    else if (k === 'message' || k === 'reason') shown = h('span', { class: 'msg' }, txt(v));
    else shown = mono(v);
    return h('span', { class: `field field-${k === 'message' || k === 'reason' ? 'long' : 'short'}` },
      h('span', { class: 'field-key' }, k.replace(/_/g, ' ')), shown);
  }

  function journalEntry(e, jobKey, index) {
    e = obj(e);
    const ev = typeof e.event === 'string' ? e.event : txt(e.event);
    const what = h('div', { class: 'entry-what' });
    const used = new Set(SKIP_KEYS);
    if (ev === 'call') {
      ['interface', 'action', 'target', 'duration_ms', 'outcome', 'code'].forEach((k) => used.add(k));
      what.append(h('div', { class: 'call-line' },
        h('span', { class: 'call-sig', 'data-testid': 'call-sig' }, `${txt(e.interface)}.${txt(e.action)}`),
        e.outcome === undefined ? null
          : h('span', { class: `badge tone-${e.outcome === 'ok' ? 'ok' : 'error'}`, 'data-testid': 'call-outcome' }, txt(e.outcome)),
        e.code !== null && e.code !== undefined ? h('span', { class: 'code' }, `code ${txt(e.code)}`) : null,
        h('span', { class: 'call-duration' }, duration(e.duration_ms)),
        h('code', { class: 'mono call-target', title: txt(e.target) }, txt(e.target))));
    }
    const fields = h('div', { class: 'fields' });
    // Fields without a value (null) say nothing on a timeline: left out.
    const shown = (k) => e[k] !== null && e[k] !== undefined;
    for (const k of EVENT_KEYS[ev] || []) {
      if (has(e, k)) { if (shown(k)) fields.append(field(k, e[k])); used.add(k); }
    }
    for (const k of Object.keys(e)) if (!used.has(k) && shown(k)) fields.append(field(k, e[k]));
    if (fields.childNodes.length) what.append(fields);
    if (has(e, 'request')) what.append(detailsBlock('request', e.request, `${jobKey}/${index}/request`));
    if (has(e, 'answer')) what.append(detailsBlock('answer', e.answer, `${jobKey}/${index}/answer`));
    const failed = ev === 'finished' && e.outcome !== undefined && e.outcome !== 'completed' && e.outcome !== 'skipped';
    return h('li', { class: `entry ev-${tone(ev)}${failed ? ' entry-failed' : ''}`, 'data-testid': 'journal-entry', 'data-event': ev },
      h('span', { class: 'dot', 'aria-hidden': 'true' }),
      h('div', { class: 'entry-when' }, when(e.at_ms, { ms: true, ago: false })),
      h('div', { class: 'entry-replica mono', title: 'replica' }, txt(e.replica)),
      h('div', { class: 'entry-event' }, badge(ev)),
      what);
  }

  function jobCard(job) {
    job = obj(job);
    const rec = job.record === null || job.record === undefined ? null : obj(job.record);
    const journal = arr(job.journal);
    const key = txt(job.event_uuid);
    return h('section', { class: 'card job', 'data-testid': 'job', 'data-state': txt(job.state), 'data-event-uuid': key },
      h('div', { class: 'job-head' },
        badge(job.state, { 'data-testid': 'job-state', class: `badge badge-lg tone-${tone(job.state)}` }),
        h('div', { class: 'job-ids' },
          h('div', null, h('span', { class: 'label' }, 'EventUuid'),
            h('a', { class: 'mono', href: '#/orders/' + encodeURIComponent(key), 'data-testid': 'event-uuid' }, key)),
          h('div', null, h('span', { class: 'label' }, 'replay id'), mono(job.replay_id)),
          h('div', null, h('span', { class: 'label' }, 'Order'), orderLink(job.order_id)))),
      rec
        ? h('div', { class: 'record', 'data-testid': 'record' },
          kv([
            ['outcome', badge(rec.outcome)],
            ['code', mono(rec.code)],
            ['deliveries', rec.deliveries],
            ['finished', when(rec.finished_at_ms)],
            ['component', h('span', null, mono(rec.component), ' ',
              h('span', { class: 'muted mono', title: txt(rec.component_sha256) }, short(rec.component_sha256)))],
            ['message', h('span', { class: 'msg' }, txt(rec.message)), { class: 'kv-row kv-wide' }],
          ]))
        : h('p', { class: 'muted record-none' }, 'No record yet: the job has not finished.'),
      h('h3', { class: 'journal-title' }, `Journal · ${journal.length} ${journal.length === 1 ? 'entry' : 'entries'}`),
      journal.length
        ? h('ol', { class: 'timeline', 'data-testid': 'journal' }, journal.map((e, i) => journalEntry(e, key, i)))
        : empty('The journal has no entries for this job.'));
  }

  async function orderLoad(id) {
    return api('/admin/orders/' + encodeURIComponent(id));
  }

  function orderView(data, id) {
    const jobs = arr(data.jobs);
    const title = data.order_id ? `Order ${txt(data.order_id)}` : `Search ${txt(data.query || id)}`;
    return h('div', { 'data-testid': 'order', id: 'order' },
      pageHead(title, h('p', { class: 'sub' },
        `${jobs.length} ${jobs.length === 1 ? 'job' : 'jobs'}, newest first · query `, mono(data.query || id),
        ' · refreshed every 5 s')),
      jobs.length ? jobs.map(jobCard) : empty('No jobs for this query.'));
  }

  // --- jobs

  const JOB_COLUMNS = {
    common: [
      ['EventUuid', (j) => h('a', { class: 'mono', href: '#/orders/' + encodeURIComponent(txt(j.event_uuid)) }, short(txt(j.event_uuid)))],
      ['Order', (j) => orderLink(j.order_id)],
      ['replay id', (j) => mono(j.replay_id)],
      ['deliveries', (j) => txt(j.deliveries)],
      ['enqueued', (j) => when(j.enqueued_at_ms)],
    ],
    queued: [],
    running: [['worker', (j) => mono(j.worker)]],
    failed: [
      ['code', (j) => mono(j.code)],
      ['message', (j) => h('span', { class: 'msg' }, txt(j.message))],
      ['finished', (j) => when(j.finished_at_ms)],
    ],
    dead: [
      ['dead letter', (j) => (j.dead_letter_id ? h('a', { class: 'mono', href: '#/dead-letters' }, txt(j.dead_letter_id)) : '—')],
      ['reason', (j) => h('span', { class: 'msg' }, txt(j.reason))],
    ],
  };

  async function jobsLoad(st) {
    if (!JOB_STATES.includes(st)) throw new ApiError(`unknown job state '${st}': one of ${JOB_STATES.join(', ')}`, 400);
    return api(`/admin/jobs?state=${encodeURIComponent(st)}&limit=100`);
  }

  function jobsTabs(current) {
    return h('div', { class: 'tabs', role: 'tablist' }, JOB_STATES.map((s) =>
      h('a', { href: `#/jobs/${s}`, role: 'tab', class: 'tab', 'data-testid': 'jobs-tab', 'data-state': s,
        'aria-selected': s === current ? 'true' : 'false' }, s)));
  }

  function jobsView(data, st) {
    const jobs = arr(data.jobs);
    const cols = JOB_COLUMNS.common.concat(JOB_COLUMNS[st] || []);
    return h('div', { 'data-testid': 'jobs' },
      pageHead('Jobs', h('p', { class: 'sub' }, `${jobs.length} ${st} (at most 100) · refreshed every 5 s`)),
      jobsTabs(st),
      jobs.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'table', 'data-testid': 'jobs-table' },
          h('thead', null, h('tr', null, cols.map(([t]) => h('th', null, t)))),
          h('tbody', null, jobs.map((j) => {
            j = obj(j);
            return h('tr', { 'data-testid': 'job-row', 'data-event-uuid': txt(j.event_uuid) },
              cols.map(([, cell]) => h('td', null, cell(j))));
          }))))
        : empty(`No ${st} jobs.`));
  }

  // --- dead letters

  async function deadLettersLoad() {
    if (!state.overview) await loadOverview().catch(() => null);
    return api('/admin/dead-letters?limit=100');
  }

  async function requeue(dl, button) {
    button.textContent = 'Requeuing…';
    try {
      const r = obj(await api(`/admin/dead-letters/${encodeURIComponent(txt(dl.id))}/requeue`, 'POST'));
      showMessage('ok', `Requeued dead letter ${txt(r.requeued || dl.id)} as job ${txt(r.job_id)}.`);
    } catch (e) {
      showMessage('error', `Requeue of ${txt(dl.id)} failed${e.status ? ` (HTTP ${e.status})` : ''}: ${e.message}`);
    }
    await refresh(true);
    loadOverview().catch(() => null);
  }

  function deadLettersView(data) {
    const rows = arr(data.dead_letters);
    const canWrite = writable();
    return h('div', { 'data-testid': 'dead-letters' },
      pageHead('Dead letters', h('p', { class: 'sub' }, `${rows.length} shown (at most 100) · refreshed every 5 s`)),
      canWrite ? tokenHint('requeue') : readOnlyNote('requeue'),
      rows.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'table', 'data-testid': 'dead-letters-table' },
          h('thead', null, h('tr', null,
            ['Dead at', 'Kind', 'Order', 'EventUuid', 'replay id', 'deliveries', 'reason'].map((t) => h('th', null, t)),
            canWrite ? h('th', { class: 'actions' }, '') : null)),
          h('tbody', null, rows.map((dl) => {
            dl = obj(dl);
            return h('tr', { 'data-testid': 'dead-letter', 'data-id': txt(dl.id), 'data-kind': txt(dl.kind), 'data-order-id': txt(dl.order_id) },
              h('td', null, when(dl.dead_at_ms), h('div', { class: 'muted mono small' }, txt(dl.id))),
              h('td', null, badge(dl.kind)),
              h('td', null, orderLink(dl.order_id)),
              h('td', null, dl.event_uuid
                ? h('a', { class: 'mono', href: '#/orders/' + encodeURIComponent(txt(dl.event_uuid)), title: txt(dl.event_uuid) }, short(txt(dl.event_uuid)))
                : '—'),
              h('td', null, mono(dl.replay_id)),
              h('td', null, txt(dl.deliveries)),
              h('td', null, h('span', { class: 'msg' }, txt(dl.reason))),
              canWrite ? h('td', { class: 'actions' }, dl.kind === 'job'
                ? writeButton('Requeue', 'requeue', { 'data-testid': 'requeue', 'data-hint': 'put this job back on the queue' },
                  (b) => requeue(dl, b))
                : h('span', { class: 'muted small', title: 'only a dead job can be requeued' }, 'cannot requeue')) : null);
          }))))
        : empty('No dead letters.'));
  }

  // --- components

  async function componentsLoad() {
    if (!state.overview) await loadOverview().catch(() => null);
    return api('/admin/components');
  }

  function componentLabel(meta) {
    meta = obj(meta);
    return `${txt(meta.name)} ${txt(meta.version)} (${short(meta.sha256)})`;
  }

  async function activate(c) {
    if (!window.confirm(`Activate ${componentLabel(c)}? New jobs run on it at once; jobs in flight finish on their version.`)) return;
    try {
      const r = obj(await api(`/admin/components/${encodeURIComponent(txt(c.sha256))}/activate`, 'POST'));
      showMessage('ok', `Activated ${componentLabel(r.active || c)}.`);
    } catch (e) {
      showMessage('error', `Activate failed${e.status ? ` (HTTP ${e.status})` : ''}: ${e.message}`);
    }
    await refresh(true);
    loadOverview().catch(() => null);
  }

  async function rollback() {
    if (!window.confirm('Roll back to the previously active component version?')) return;
    try {
      const r = obj(await api('/admin/rollback', 'POST'));
      showMessage('ok', `Rolled back: active is now ${componentLabel(r.active)}.`);
    } catch (e) {
      showMessage('error', `Rollback failed${e.status ? ` (HTTP ${e.status})` : ''}: ${e.message}`);
    }
    await refresh(true);
    loadOverview().catch(() => null);
  }

  function componentsView(data) {
    const comps = arr(data.components);
    const history = arr(data.history);
    const canWrite = writable();
    const byShaName = new Map(comps.map((c) => [obj(c).sha256, obj(c)]));
    return h('div', { 'data-testid': 'components' },
      pageHead('Components', h('p', { class: 'sub' },
        'active ', mono(short(data.active), { title: txt(data.active), id: 'components-active' }),
        ' · running ', mono(short(data.running), { title: txt(data.running), id: 'components-running' }))),
      canWrite
        ? h('div', { class: 'toolbar' },
          writeButton('Roll back', 'roll back', { id: 'rollback-button', 'data-testid': 'rollback', class: 'secondary',
            'data-hint': 'activate the previously active version' }, () => rollback()),
          tokenHint('activate or roll back'))
        : readOnlyNote('activate and rollback'),
      comps.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'table', 'data-testid': 'components-table' },
          h('thead', null, h('tr', null,
            ['', 'Component', 'sha256', 'size', 'deployed', 'by', 'source', 'signed'].map((t) => h('th', null, t)),
            canWrite ? h('th', { class: 'actions' }, '') : null)),
          h('tbody', null, comps.map((c) => {
            c = obj(c);
            const isActive = c.sha256 === data.active;
            const isRunning = c.sha256 === data.running;
            return h('tr', { 'data-testid': 'component', 'data-sha256': txt(c.sha256),
              'data-active': String(isActive), 'data-running': String(isRunning), class: isActive ? 'row-active' : null },
            h('td', { class: 'marks' },
              isActive ? badge('active', { 'data-testid': 'active-mark' }) : null,
              isRunning ? h('span', { class: 'badge tone-running-version', 'data-testid': 'running-mark' }, 'running') : null),
            h('td', { class: 'nowrap' }, h('strong', null, txt(c.name)), ' ', txt(c.version)),
            h('td', null, mono(short(c.sha256), { title: txt(c.sha256) })),
            h('td', { class: 'nowrap' }, bytes(c.size)),
            h('td', null, when(c.deployed_at_ms)),
            h('td', null, txt(c.deployed_by)),
            h('td', null, h('span', { class: 'msg' }, txt(c.source))),
            h('td', null, yesNo(c.signed)),
            canWrite ? h('td', { class: 'actions' }, isActive ? null
              : writeButton('Activate', 'activate', { 'data-testid': 'activate', 'data-hint': 'make this the version new jobs run on' },
                () => activate(c))) : null);
          }))))
        : empty('The registry holds no component versions.'),
      history.length
        ? h('section', { class: 'history' }, h('h2', null, 'Activation history'),
          h('ol', { class: 'history-list', 'data-testid': 'history' }, history.map((sha) => {
            const m = byShaName.get(sha);
            return h('li', null, mono(short(sha), { title: txt(sha) }), m ? ` ${txt(m.name)} ${txt(m.version)}` : '');
          })))
        : null);
  }

  // ---------------------------------------------------------------- router

  function parseRoute() {
    const raw = location.hash.replace(/^#/, '');
    const parts = raw.split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
    const [head, arg] = parts;
    if (!head) return { name: 'overview', nav: 'overview', load: overviewLoad, view: overviewView, auto: true };
    if (head === 'orders' && arg) {
      return { name: 'order', nav: null, arg, load: () => orderLoad(arg), view: (d) => orderView(d, arg), auto: true };
    }
    if (head === 'orders') return { name: 'order-empty', nav: null, static: () => empty('Search for an Order Id or an EventUuid in the header.') };
    if (head === 'jobs') {
      const st = arg || 'queued';
      return { name: 'jobs', nav: 'jobs', arg: st, load: () => jobsLoad(st), view: (d) => jobsView(d, st), auto: true };
    }
    if (head === 'dead-letters') return { name: 'dead-letters', nav: 'dead-letters', load: deadLettersLoad, view: deadLettersView, auto: true };
    if (head === 'components') return { name: 'components', nav: 'components', load: componentsLoad, view: componentsView, auto: false };
    return { name: 'unknown', nav: null, static: () => errorPanel('Unknown page', `Nothing lives at #${raw}.`) };
  }

  function openDetails() {
    return new Set($$('#view details[open]').map((d) => d.dataset.key).filter(Boolean));
  }

  function paint(content, open) {
    const view = $('#view');
    view.replaceChildren(content);
    for (const d of $$('details[data-key]', view)) if (open && open.has(d.dataset.key)) d.open = true;
    applyWriteState();
    view.dataset.state = 'ready';
  }

  function loadError(route, e) {
    if (route.name === 'components' && e.status === 404) {
      return h('div', { class: 'panel panel-note', 'data-testid': 'components-error' },
        h('h2', null, NO_REGISTRY), h('p', { class: 'muted error-text' }, e.message));
    }
    const title = route.name === 'order' && e.status === 404 ? 'Not found' : 'Could not load this page';
    return errorPanel(title, e.message, route.name === 'order' ? 'order-error' : 'view-error');
  }

  /** Navigation: a fresh load with a loading state. */
  async function navigate() {
    const seq = ++state.seq;
    const route = parseRoute();
    state.route = route;
    state.signature = null;
    clearMessage();
    for (const a of $$('#nav a')) {
      if (a.dataset.nav === route.nav) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    if (route.name === 'order') $('#search-input').value = route.arg;
    const view = $('#view');
    view.dataset.view = route.name;
    view.dataset.state = 'loading';
    if (route.static) { paint(route.static()); return; }
    view.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
    try {
      const data = await route.load();
      if (seq !== state.seq) return;
      state.signature = JSON.stringify(data);
      paint(route.view(data));
    } catch (e) {
      if (seq !== state.seq) return;
      paint(loadError(route, e));
      view.dataset.state = 'error';
    }
  }

  /** Reload the current view's data; repaint only when it changed (or when forced). */
  async function refresh(force) {
    const route = state.route;
    if (!route || route.static) return;
    if (!force && (state.refreshing || state.busy)) return;
    const seq = state.seq;
    const rseq = ++state.rseq;
    state.refreshing = true;
    try {
      const data = await route.load();
      if (seq !== state.seq || rseq !== state.rseq) return;
      const sig = JSON.stringify(data);
      if (!force && sig === state.signature) {
        const r = $('#refreshed-at');
        if (r) r.textContent = localTime(new Date()).slice(11);
        return;
      }
      state.signature = sig;
      paint(route.view(data), openDetails());
    } catch (e) {
      if (seq !== state.seq || rseq !== state.rseq) return;
      if (force) { paint(loadError(route, e)); $('#view').dataset.state = 'error'; }
      else showMessage('error', `Refresh failed: ${e.message}`);
    } finally {
      if (rseq === state.rseq) state.refreshing = false;
    }
  }

  /** Every 5 s: the view's data (when the view refreshes itself) and the header's health. */
  function tick() {
    if (document.hidden) return;
    const route = state.route;
    if (route && route.auto) refresh(false);
    if (!route || route.name !== 'overview') loadOverview().catch(() => null);
  }

  // ---------------------------------------------------------------- start

  function initSearch() {
    $('#search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('#search-input');
      const q = input.value.trim();
      if (!q) { input.focus(); return; }
      const target = '#/orders/' + encodeURIComponent(q);
      if (location.hash === target) navigate();
      else location.hash = target;
    });
    document.addEventListener('keydown', (ev) => {
      const t = ev.target;
      const typing = t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA');
      if (ev.key === '/' && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
        ev.preventDefault();
        $('#search-input').focus();
      }
    });
  }

  function start() {
    initToken();
    initSearch();
    $('#message-close').addEventListener('click', clearMessage);
    applyWriteState();
    window.addEventListener('hashchange', navigate);
    if (parseRoute().name !== 'overview') loadOverview().catch(() => null);
    navigate();
    setInterval(tick, REFRESH_MS);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
