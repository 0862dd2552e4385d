// The session as the page sees it: requests and variables as nodes, placeholder edges,
// and what changed since the last poll. No DOM here.

import { layeredLayout } from './layout.js';

export const REQ = { w: 156, h: 38 };
export const VAR = { w: 116, h: 22 };

// What a status looks like; `upstream_failed` is a failed request (or variable) whose
// failure came from an input, shown apart from the producer that failed first.
export const COLORS = {
  waiting: '#d5d9e0',
  queued: '#f4c152',
  done: '#54b882',
  failed: '#e5484d',
  upstream_failed: '#f7b2b4',
  cancelled: '#9a9ca6',
  pending: '#ffffff',
  ready: '#bfe8cf',
};
export const CRITICAL = '#7c3aed';
export const OBJECTIVE = { latency: '#f97316', throughput: '#3b82f6' };

export function displayStatus(status, error) {
  if (status === 'failed' && typeof error === 'string' && error.startsWith('upstream_failed')) {
    return 'upstream_failed';
  }
  return status;
}

export class SessionModel {
  constructor() {
    this.nodes = [];          // {id, kind, name, req|var, x, y, w, h, status, critical}
    this.index = new Map();   // node id -> index
    this.edges = [];          // {s, t, var, critical}
    this.requests = new Map();
    this.critical = [];
    this.criticalS = 0;
    this.payload = null;
    this.bounds = { x0: 0, y0: 0, x1: 0, y1: 0 };
  }

  // Fold in a new payload; relayout only when requests or variables were added.
  update(payload) {
    const changed = new Set();
    let structure = payload.requests.length !== this.requests.size;
    const vars = new Map(payload.variables.map((v) => [v.name, v]));
    const reqs = new Map();
    for (const r of payload.requests) {
      reqs.set(r.id, r);
      const old = this.requests.get(r.id);
      if (!old) structure = true;
      else if (old.status !== r.status || old.engine !== r.engine || old.objective !== r.objective
        || old.finished_at !== r.finished_at || old.cached_tokens !== r.cached_tokens
        || old.error !== r.error || old.group !== r.group) changed.add(r.id);
      for (const name of r.inputs) if (!vars.has(name)) vars.set(name, { name, status: 'pending' });
      if (r.output && !vars.has(r.output)) vars.set(r.output, { name: r.output, status: 'pending' });
    }
    for (const name of vars.keys()) if (!this.index.has('v:' + name)) structure = true;
    this.requests = reqs;
    this.vars = vars;
    this.payload = payload;
    if (structure) this._build();
    this._refresh(changed);
    return { structure, changed };
  }

  _build() {
    // Initial order for the layout: each request after its inputs, its output after it.
    const nodes = [];
    const index = new Map();
    const add = (node) => { index.set(node.id, nodes.length); nodes.push(node); };
    const addVar = (name) => {
      if (!index.has('v:' + name)) add({ id: 'v:' + name, kind: 'var', name, ...VAR });
    };
    for (const r of this.requests.values()) {
      r.inputs.forEach(addVar);
      add({ id: r.id, kind: 'req', name: r.output || r.id, ...REQ });
      if (r.output) addVar(r.output);
    }
    for (const name of this.vars.keys()) addVar(name);
    const edges = [];
    const succ = nodes.map(() => []);
    const pred = nodes.map(() => []);
    const link = (s, t, v) => { edges.push({ s, t, var: v, critical: false }); succ[s].push(t); pred[t].push(s); };
    for (const r of this.requests.values()) {
      const ri = index.get(r.id);
      for (const name of new Set(r.inputs)) link(index.get('v:' + name), ri, name);
      if (r.output) link(ri, index.get('v:' + r.output), r.output);
    }
    const t = performance.now();
    const lay = layeredLayout(nodes.length, succ, pred, nodes);
    this.layoutMs = performance.now() - t;
    nodes.forEach((node, i) => { node.x = lay.x[i]; node.y = lay.y[i]; node.rank = lay.rank[i]; });
    this.nodes = nodes;
    this.index = index;
    this.edges = edges;
    this.bounds = { x0: 0, y0: lay.minY, x1: lay.width, y1: lay.maxY };
  }

  _refresh(changed) {
    const p = this.payload;
    const path = p.critical_path || [];
    const onPath = new Set(path);
    const critVars = new Set();
    for (let i = 0; i + 1 < path.length; i++) {
      const a = this.requests.get(path[i]);
      const b = this.requests.get(path[i + 1]);
      if (a && b && a.output && b.inputs.includes(a.output)) critVars.add(a.output);
    }
    this.critical = path;
    this.criticalS = p.critical_path_s || 0;
    for (const node of this.nodes) {
      let crit;
      if (node.kind === 'req') {
        const r = this.requests.get(node.id);
        node.req = r;
        node.status = displayStatus(r.status, r.error);
        crit = onPath.has(r.id);
      } else {
        const v = this.vars.get(node.name);
        node.var = v;
        node.status = displayStatus(v.status, v.error);
        crit = critVars.has(node.name);
      }
      if (crit !== node.critical) { node.critical = crit; changed.add(node.id); }
    }
    for (const e of this.edges) {
      const s = this.nodes[e.s];
      const t = this.nodes[e.t];
      e.critical = s.critical && t.critical;
      e.failed = s.status === 'failed' || s.status === 'upstream_failed';
    }
  }

  counts() {
    const c = {};
    for (const r of this.requests.values()) {
      const s = displayStatus(r.status, r.error);
      c[s] = (c[s] || 0) + 1;
    }
    return c;
  }

  // For tests and debugging: what is drawn, in plain data.
  snapshot() {
    return {
      requests: [...this.requests.values()].map((r) => {
        const node = this.nodes[this.index.get(r.id)];
        return {
          id: r.id, output: r.output, inputs: r.inputs, status: node.status,
          critical: node.critical, engine: r.engine, objective: r.objective, group: r.group,
        };
      }),
      variables: this.nodes.filter((n) => n.kind === 'var')
        .map((n) => ({ name: n.name, status: n.status, critical: n.critical })),
      edges: this.edges.map((e) => ({
        from: this.nodes[e.s].id, to: this.nodes[e.t].id, critical: e.critical,
      })),
      critical_path: this.critical,
    };
  }
}

// Timeline rows: one per engine (plus one for work not on an engine yet), each request a
// bar [ready, finished or now] split into queue / prefill / decode (or run), packed into
// lanes so overlapping requests (a batch) stack instead of hiding each other.
export function ganttRows(requests, now) {
  const byEngine = new Map();
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const r of requests) {
    if (r.ready_at == null) continue;
    const start = r.ready_at;
    const end = r.finished_at ?? now;
    const engine = r.engine || '(gateway queue / in flight)';
    const bar = {
      id: r.id, start, end, status: displayStatus(r.status, r.error), phases: phases(r, now),
      cached: r.prompt_tokens ? (r.cached_tokens || 0) / r.prompt_tokens : null,
    };
    if (!byEngine.has(engine)) byEngine.set(engine, []);
    byEngine.get(engine).push(bar);
    t0 = Math.min(t0, start);
    t1 = Math.max(t1, end);
  }
  const rows = [];
  for (const [engine, bars] of [...byEngine].sort((a, b) => a[0].localeCompare(b[0]))) {
    bars.sort((a, b) => a.start - b.start);
    const laneEnd = [];
    for (const bar of bars) {
      let lane = laneEnd.findIndex((end) => end <= bar.start);
      if (lane < 0) { lane = laneEnd.length; laneEnd.push(0); }
      laneEnd[lane] = bar.end;
      bar.lane = lane;
    }
    rows.push({ engine, bars, lanes: Math.max(1, laneEnd.length) });
  }
  return { rows, t0: Number.isFinite(t0) ? t0 : now, t1: Number.isFinite(t1) ? t1 : now };
}

export function phases(r, now) {
  const out = [];
  const end = r.finished_at ?? now;
  if (r.started_at == null) {
    out.push({ kind: 'queue', start: r.ready_at, end });
    return out;
  }
  out.push({ kind: 'queue', start: r.ready_at, end: r.started_at });
  if (r.first_token_at != null) {
    out.push({ kind: 'prefill', start: r.started_at, end: r.first_token_at });
    out.push({ kind: 'decode', start: r.first_token_at, end });
  } else {
    out.push({ kind: 'run', start: r.started_at, end });
  }
  return out;
}
