// The session page: poll the session's graph, fold it into the model, redraw what
// changed. The layout runs only when requests or variables were added; a status change
// is a repaint. Polling slows down while nothing changes and pauses in a hidden tab.

import { COLORS, CRITICAL, OBJECTIVE, SessionModel, displayStatus, ganttRows } from './model.js';
import { DagView } from './dag.js';
import { GanttView, PHASE_COLORS } from './gantt.js';
import { RequestList, fmtMs } from './table.js';

const cfg = JSON.parse(document.getElementById('config').textContent);
const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const IDLE_POLL_MS = 5000;

const model = new SessionModel();
const stats = { polls: 0, lastFetchMs: 0, lastApplyMs: 0, lastLayoutMs: 0, firstRenderMs: null };
const tooltip = $('tooltip');
let selected = null;
let unchanged = 0;
let stopped = false;

const dag = new DagView($('dag'), {
  onSelect: (id) => select(id, false),
  onHover: (node, x, y) => showTip(node && describeNode(node), x, y),
});
const gantt = new GanttView($('gantt'), {
  onSelect: (id) => select(id, true),
  onHover: (bar, x, y) => showTip(bar && describeRequest(model.requests.get(bar.id)), x, y),
});
const list = new RequestList($('list'), { onSelect: (id) => select(id, true) });
$('filter').addEventListener('input', (e) => list.setFilter(e.target.value));
$('fit').addEventListener('click', () => dag.fit());
$('sid').textContent = cfg.session;
document.title = `${cfg.session} · parrot session`;
legend();

function apply(payload) {
  const t = performance.now();
  const { structure, changed } = model.update(payload);
  if (structure) stats.lastLayoutMs = model.layoutMs;
  const t1 = performance.now();
  dag.setModel(model, structure);
  const critical = new Set(model.critical);
  const requests = [...model.requests.values()];
  gantt.setData(ganttRows(requests, payload.now), critical);
  const t2 = performance.now();
  list.setRequests(requests, critical);
  summary();
  if (selected && (changed.has(selected) || structure)) details(selected);
  document.body.dataset.state = 'live';
  const t3 = performance.now();
  stats.lastApplyMs = t3 - t;
  stats.breakdown = { model: t1 - t, views: t2 - t1, list: t3 - t2 };
  return { structure, changed: changed.size };
}

// Draw now instead of on the next animation frame (for measurements).
function flush() {
  dag.draw();
  gantt.draw();
}

async function poll() {
  if (stopped) return;
  if (document.hidden) { setTimeout(poll, POLL_MS); return; }
  const t = performance.now();
  let delay = POLL_MS;
  try {
    const headers = cfg.token ? { 'X-Parrot-View-Token': cfg.token } : {};
    const res = await fetch(cfg.data, { headers, cache: 'no-store', credentials: 'same-origin' });
    if (res.status === 401 || res.status === 404) {
      const body = await res.json().catch(() => ({}));
      const msg = (body.error && body.error.message) || res.statusText;
      setConn(res.status === 404 ? 'session gone: ' + msg : 'not authorised: ' + msg, 'bad');
      document.body.dataset.state = res.status === 404 ? 'gone' : 'unauthorized';
      stopped = true;
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const payload = await res.json();
    stats.lastFetchMs = performance.now() - t;
    const { structure, changed } = apply(payload);
    stats.polls += 1;
    if (stats.firstRenderMs === null) {
      requestAnimationFrame(() => { stats.firstRenderMs = performance.now(); });
    }
    unchanged = structure || changed ? 0 : unchanged + 1;
    const settled = model.requests.size > 0 && [...model.requests.values()]
      .every((r) => r.status === 'done' || r.status === 'failed' || r.status === 'cancelled');
    delay = settled && unchanged >= 3 ? IDLE_POLL_MS : POLL_MS;
    // Never spend more than about a third of the time polling a huge session.
    delay = Math.max(delay, 3 * (performance.now() - t));
    setConn(`live · updated ${new Date().toLocaleTimeString()}`, 'ok');
  } catch (err) {
    setConn(`retrying: ${err.message}`, 'bad');
    delay = 2000;
  }
  setTimeout(poll, delay);
}

function select(id, center) {
  selected = id;
  list.selected = id;
  gantt.selected = id;
  gantt.invalidate();
  if (id && center && model.index.has(id)) dag.select(id, true);
  else if (dag.selected !== id) dag.select(id);
  list.scrollTo(id);
  details(id);
}

function summary() {
  const counts = model.counts();
  const box = $('counts');
  box.replaceChildren();
  for (const s of ['waiting', 'queued', 'done', 'failed', 'upstream_failed', 'cancelled']) {
    if (!counts[s]) continue;
    const chip = document.createElement('span');
    chip.className = 'chip';
    chip.id = 'count-' + s;
    chip.dataset.status = s;
    const dot = document.createElement('i');
    dot.style.background = COLORS[s];
    chip.append(dot, `${s} ${counts[s]}`);
    box.append(chip);
  }
  const objectives = {};
  for (const r of model.requests.values()) {
    const o = r.objective || r.criteria;
    objectives[o] = (objectives[o] || 0) + 1;
  }
  $('meta').textContent = [
    `${model.requests.size} requests`,
    `${model.vars.size} variables`,
    `${model.edges.length} edges`,
    Object.entries(objectives).map(([k, v]) => `${v} ${k}`).join(', '),
    `critical path ${model.critical.length} steps ≈ ${model.criticalS.toFixed(2)} s (estimate)`,
  ].join(' · ');
}

function details(id) {
  const box = $('details');
  box.replaceChildren();
  if (!id) {
    box.append(para('Click a node, a bar or a row for details.'));
    return;
  }
  const node = model.nodes[model.index.get(id)];
  if (!node) return;
  const h = document.createElement('h2');
  h.textContent = node.kind === 'req' ? (node.req.output ? '→ ' + node.req.output : node.req.id) : `{{${node.name}}}`;
  box.append(h);
  const dl = document.createElement('dl');
  for (const [k, v] of detailRows(node)) {
    if (v == null || v === '') continue;
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    if (k === 'status') dd.className = 's-' + v;
    dl.append(dt, dd);
  }
  box.append(dl);
}

function detailRows(node) {
  if (node.kind === 'var') {
    const v = node.var;
    return [
      ['status', node.status], ['error', v.error],
      ['value', v.preview != null ? v.preview + (v.chars > v.preview.length ? ' …' : '') : null],
      ['length', v.chars != null ? `${v.chars} chars` : null],
      ['critical path', node.critical ? 'yes' : null],
    ];
  }
  const r = node.req;
  const ph = (a, b) => (a != null && b != null ? fmtMs(1000 * (b - a)) : null);
  return [
    ['request', r.id], ['status', node.status], ['error', r.error],
    ['inputs', r.inputs.map((n) => `{{${n}}}`).join(' ')], ['output', r.output],
    ['criteria', r.criteria], ['objective', r.objective], ['task group', r.group],
    ['engine', r.engine], ['critical path', node.critical ? 'yes' : null],
    ['prompt tokens', r.prompt_tokens], ['cached tokens', r.cached_tokens != null
      ? `${r.cached_tokens} (${r.prompt_tokens ? Math.round(100 * r.cached_tokens / r.prompt_tokens) : 0}%)` : null],
    ['completion tokens', r.completion_tokens],
    ['waited for inputs', ph(r.created_at, r.ready_at)],
    ['queue wait', r.queued_ms != null ? fmtMs(r.queued_ms) : null],
    ['prefill (to first token)', ph(r.started_at, r.first_token_at)],
    ['decode', ph(r.first_token_at, r.finished_at)],
    ['engine time', r.run_ms != null ? fmtMs(r.run_ms) : null],
  ];
}

function describeNode(node) {
  if (node.kind === 'var') return `{{${node.name}}} · ${node.status}`;
  return describeRequest(node.req);
}

function describeRequest(r) {
  if (!r) return null;
  const parts = [r.output ? '→ ' + r.output : r.id, displayStatus(r.status, r.error)];
  if (r.engine) parts.push(r.engine);
  if (r.queued_ms != null) parts.push('queue ' + fmtMs(r.queued_ms));
  if (r.run_ms != null) parts.push('run ' + fmtMs(r.run_ms));
  if (r.prompt_tokens) parts.push(`cached ${Math.round(100 * (r.cached_tokens || 0) / r.prompt_tokens)}%`);
  if (r.error) parts.push(r.error);
  return parts.join(' · ');
}

function showTip(text, x, y) {
  if (!text) { tooltip.hidden = true; return; }
  tooltip.textContent = text;
  tooltip.hidden = false;
  tooltip.style.left = Math.min(x + 14, window.innerWidth - 340) + 'px';
  tooltip.style.top = y + 14 + 'px';
}

function setConn(text, cls) {
  const el = $('conn');
  el.textContent = text;
  el.className = cls;
}

function para(text) {
  const p = document.createElement('p');
  p.textContent = text;
  return p;
}

function legend() {
  const box = $('legend');
  const item = (color, label, ring) => {
    const s = document.createElement('span');
    const i = document.createElement('i');
    i.style.background = color;
    if (ring) i.style.outline = `2px solid ${ring}`;
    s.append(i, label);
    box.append(s);
  };
  for (const s of ['waiting', 'queued', 'done', 'failed', 'upstream_failed']) item(COLORS[s], s);
  item('#ffffff', 'critical path', CRITICAL);
  item(OBJECTIVE.latency, 'latency');
  item(OBJECTIVE.throughput, 'throughput');
  item('#1d4ed8', 'cached share');
  const g = $('gantt-legend');
  for (const [k, c] of Object.entries(PHASE_COLORS)) {
    const s = document.createElement('span');
    const i = document.createElement('i');
    i.style.background = c;
    s.append(i, k === 'run' ? 'engine (not streamed)' : k === 'queue' ? 'queue wait' : k);
    g.append(s);
  }
}

// For tests and measurements: the model, a synchronous apply/draw, and a way to stop polling.
window.parrotView = {
  model, apply, flush, stats, dag, gantt, list,
  snapshot: () => model.snapshot(),
  stop: () => { stopped = true; },
};
poll();
