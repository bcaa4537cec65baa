// bitsd console: polls /admin/sessions and /admin/activity with the admin token and redraws.
// Every value shown is client-controlled text somewhere (file names, user names), so nodes are
// built with textContent only, never HTML strings.
'use strict';

const POLL_MS = 1000;
// Records read per refresh at most: the listing reads each one from storage.
const SESSION_LIMIT = 500;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem('bitsd-admin-token') || '';
// Session id -> {received, at}: the previous reading, for the rate.
const previous = new Map();
let cancelEnabled = false;

class Unauthorized extends Error {}

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (className) e.className = className;
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + ' ' + units[i];
}

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

async function getJson(path) {
  const headers = token ? { Authorization: 'Bearer ' + token } : {};
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function cell(row, text, className) {
  const td = el('td', text, className);
  row.appendChild(td);
  return td;
}

// Sessions still receiving; a complete one (committed, waiting for the client's Close) is
// listed among the completions instead.
function drawSessions(all, now) {
  const rows = [];
  const seen = new Set();
  const sessions = all.filter((s) => s.state === 'receiving');
  sessions.sort((a, b) => a.created_at - b.created_at);
  for (const s of sessions) {
    seen.add(s.id);
    const tr = el('tr');
    tr.dataset.id = s.id;
    cell(tr, s.url, 'path');
    const td = cell(tr, undefined, 'progress');
    const bar = el('progress');
    bar.max = s.total || 1;
    bar.value = s.total ? s.received : 0;
    td.dataset.received = s.received;
    td.dataset.total = s.total === null ? '' : s.total;
    td.appendChild(bar);
    const pct = s.total ? ' (' + Math.floor((100 * s.received) / s.total) + ' %)' : '';
    td.appendChild(el('span', bytes(s.received) + ' / ' + (s.total === null ? '?' : bytes(s.total)) + pct));
    const before = previous.get(s.id);
    let rate = '–';
    if (before && now > before.at && s.received >= before.received) {
      rate = bytes(((s.received - before.received) * 1000) / (now - before.at)) + '/s';
    }
    previous.set(s.id, { received: s.received, at: now });
    cell(tr, rate, 'rate');
    cell(tr, s.owner || 'anonymous');
    cell(tr, s.client || '–');
    cell(tr, s.vdir);
    cell(tr, duration(now - s.created_at));
    cell(tr, duration(now - s.last_activity) + ' ago');
    const actions = cell(tr);
    if (cancelEnabled) {
      const b = el('button', 'Cancel', 'cancel');
      b.type = 'button';
      b.addEventListener('click', () => cancel(s));
      actions.appendChild(b);
    }
    rows.push(tr);
  }
  for (const id of previous.keys()) if (!seen.has(id)) previous.delete(id);
  replaceRows($('sessions').tBodies[0], rows);
  $('no-sessions').hidden = sessions.length > 0;
  $('sessions-limited').hidden = all.length < SESSION_LIMIT;
  $('sessions-limited').textContent = 'Showing the uploads among the first ' + SESSION_LIMIT + ' sessions read; ' +
    'bitsd sessions list shows them all.';
}

async function cancel(s) {
  if (!window.confirm('Cancel the upload of ' + s.url + ' (' + bytes(s.received) + ' received)? The client will have to start over.')) return;
  const headers = token ? { Authorization: 'Bearer ' + token } : {};
  const r = await fetch('/admin/sessions/' + encodeURIComponent(s.id) + '/cancel', { method: 'POST', headers });
  setStatus(r.ok ? 'cancelled ' + s.url : 'cancel failed: HTTP ' + r.status, !r.ok);
}

function drawChart(series, bucketMs) {
  const svg = $('chart');
  const ns = 'http://www.w3.org/2000/svg';
  const w = 600;
  const h = 160;
  const perSec = (v) => (v * 1000) / bucketMs;
  const maxBytes = Math.max(1, ...series.map((b) => perSec(b.bytes)));
  const maxReqs = Math.max(1, ...series.map((b) => perSec(b.requests)));
  const step = series.length > 1 ? w / (series.length - 1) : w;
  const line = (f, max, cls) => {
    const p = document.createElementNS(ns, 'polyline');
    p.setAttribute('class', cls);
    p.setAttribute('points', series.map((b, i) => (i * step).toFixed(1) + ',' + (h - 14 - (f(b) / max) * (h - 28)).toFixed(1)).join(' '));
    return p;
  };
  const label = (text, x, y) => {
    const t = document.createElementNS(ns, 'text');
    t.setAttribute('x', x);
    t.setAttribute('y', y);
    t.textContent = text;
    return t;
  };
  svg.replaceChildren(
    line((b) => perSec(b.bytes), maxBytes, 'bytes'),
    line((b) => perSec(b.requests), maxReqs, 'reqs'),
    label('max ' + bytes(maxBytes) + '/s, ' + maxReqs.toFixed(1) + ' req/s', 4, 11),
    label('5 min ago', 4, h - 2),
    label('now', w - 22, h - 2),
  );
  const last = series[series.length - 1] || { bytes: 0, requests: 0 };
  $('rate-now').textContent = bytes(perSec(last.bytes)) + '/s';
  $('req-now').textContent = perSec(last.requests).toFixed(1);
}

function drawActivity(a) {
  cancelEnabled = a.cancel_enabled;
  $('open-count').textContent = a.open_sessions;
  drawChart(a.series, a.bucket_ms);
  replaceRows($('completions').tBodies[0], a.completions.map((c) => {
    const tr = el('tr');
    tr.dataset.id = c.id;
    cell(tr, clock(c.at_ms));
    cell(tr, c.url, 'path');
    cell(tr, bytes(c.size), 'size').dataset.bytes = c.size;
    const sha = cell(tr, c.sha256 ? c.sha256.slice(0, 16) + '…' : '–', 'sha256');
    if (c.sha256) sha.title = c.sha256;
    cell(tr, duration(c.duration_ms));
    cell(tr, c.owner || 'anonymous');
    return tr;
  }));
  replaceRows($('errors').tBodies[0], a.errors.map((e) => {
    const tr = el('tr');
    cell(tr, clock(e.at_ms));
    cell(tr, e.status, 'bad');
    cell(tr, e.code || '–');
    cell(tr, e.packet);
    cell(tr, e.path, 'path');
    cell(tr, e.client || '–');
    cell(tr, e.message, 'path');
    return tr;
  }));
  replaceRows($('vdirs').tBodies[0], a.vdirs.map((v) => {
    const tr = el('tr');
    tr.dataset.prefix = v.prefix;
    cell(tr, v.prefix + (v.upload_enabled ? '' : ' (disabled)'));
    cell(tr, v.open);
    cell(tr, v.completed);
    cell(tr, bytes(v.bytes_completed));
    cell(tr, bytes(v.bytes_received));
    cell(tr, v.errors);
    return tr;
  }));
  const st = a.storage;
  const state = $('storage-state');
  state.textContent = st.backend + (st.ready ? ' ready' : ' NOT READY');
  state.className = 'big ' + (st.ready ? 'ok' : 'bad');
  const free = st.free_bytes === null ? '' : ' · ' + bytes(st.free_bytes) + ' free of ' + bytes(st.total_bytes);
  $('storage-detail').textContent = st.location + free + (st.error ? ' · ' + st.error : '');
}

function setStatus(text, bad) {
  const s = $('status');
  s.textContent = text;
  s.className = bad ? 'bad' : '';
}

function askForToken(reason) {
  $('main').hidden = true;
  $('login').hidden = false;
  $('login-reason').textContent = reason;
  setStatus('token required', true);
}

async function refresh() {
  try {
    const [activity, sessions] = await Promise.all([getJson('/admin/activity'), getJson('/admin/sessions?limit=' + SESSION_LIMIT)]);
    drawActivity(activity);
    drawSessions(sessions, activity.now_ms);
    $('login').hidden = true;
    $('main').hidden = false;
    setStatus('updated ' + clock(activity.now_ms), false);
  } catch (e) {
    if (e instanceof Unauthorized) {
      askForToken(token ? 'The token was refused. Enter the admin token ([admin] token).' : 'This console needs the admin token ([admin] token).');
      return; // polling resumes when a token is entered
    }
    setStatus('update failed: ' + e.message, true);
  }
  setTimeout(refresh, POLL_MS);
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('bitsd-admin-token', token);
  $('token').value = '';
  refresh();
});

refresh();
