// The DAG on a canvas: pan (drag), zoom (wheel), hover, click to select.
//
// Thousands of nodes stay smooth because a frame only draws what is on screen (culled
// against the viewport), batches shapes of one style into one path (a handful of fill
// and stroke calls per frame, not one per node), draws text only when it is readable,
// and frames happen only when something changed. Hit tests use a uniform grid.

import { COLORS, CRITICAL, OBJECTIVE, REQ } from './model.js';

const REQ_W = REQ.w;

const CELL = 256;

export class DagView {
  constructor(canvas, { onSelect, onHover } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.onSelect = onSelect || (() => {});
    this.onHover = onHover || (() => {});
    this.model = null;
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.selected = null;
    this.hovered = -1;
    this.grid = new Map();
    this.fitted = false;
    this.dirty = false;
    this.lastDrawMs = 0;
    this._bind();
    new ResizeObserver(() => this._resize()).observe(canvas);
    this._resize();
  }

  setModel(model, structure) {
    this.model = model;
    if (structure) {
      this._index();
      if (!this.fitted && model.nodes.length) { this.fit(); this.fitted = true; }
    }
    this.invalidate();
  }

  invalidate() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => { if (this.dirty) this.draw(); });
  }

  fit() {
    const b = this.model.bounds;
    const w = Math.max(1, b.x1 - b.x0);
    const h = Math.max(1, b.y1 - b.y0);
    const pad = 24;
    this.scale = Math.min(2, Math.max(0.005, Math.min((this.cw - 2 * pad) / w, (this.ch - 2 * pad) / h)));
    this.tx = (this.cw - w * this.scale) / 2 - b.x0 * this.scale;
    this.ty = (this.ch - h * this.scale) / 2 - b.y0 * this.scale;
    this.invalidate();
  }

  centerOn(i) {
    const n = this.model.nodes[i];
    if (!n) return;
    this.scale = Math.max(this.scale, 0.8);
    this.tx = this.cw / 2 - (n.x + n.w / 2) * this.scale;
    this.ty = this.ch / 2 - (n.y + n.h / 2) * this.scale;
    this.invalidate();
  }

  panBy(dx, dy) { this.tx += dx; this.ty += dy; this.invalidate(); }

  zoomAt(sx, sy, factor) {
    const s = Math.min(4, Math.max(0.002, this.scale * factor));
    const k = s / this.scale;
    this.tx = sx - (sx - this.tx) * k;
    this.ty = sy - (sy - this.ty) * k;
    this.scale = s;
    this.invalidate();
  }

  _resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    this.cw = Math.max(1, r.width);
    this.ch = Math.max(1, r.height);
    this.canvas.width = Math.round(this.cw * dpr);
    this.canvas.height = Math.round(this.ch * dpr);
    this.dpr = dpr;
    if (this.model && !this.fitted && this.model.nodes.length) { this.fit(); this.fitted = true; }
    this.invalidate();
  }

  _index() {
    this.grid = new Map();
    this.model.nodes.forEach((n, i) => {
      for (let gx = Math.floor(n.x / CELL); gx <= Math.floor((n.x + n.w) / CELL); gx++) {
        for (let gy = Math.floor(n.y / CELL); gy <= Math.floor((n.y + n.h) / CELL); gy++) {
          const k = gx + ',' + gy;
          let cell = this.grid.get(k);
          if (!cell) this.grid.set(k, (cell = []));
          cell.push(i);
        }
      }
    });
  }

  hit(sx, sy) {
    if (!this.model) return -1;
    const wx = (sx - this.tx) / this.scale;
    const wy = (sy - this.ty) / this.scale;
    const cell = this.grid.get(Math.floor(wx / CELL) + ',' + Math.floor(wy / CELL)) || [];
    for (const i of cell) {
      const n = this.model.nodes[i];
      if (wx >= n.x && wx <= n.x + n.w && wy >= n.y && wy <= n.y + n.h) return i;
    }
    return -1;
  }

  _bind() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener('wheel', (e) => {
      e.preventDefault();
      const r = c.getBoundingClientRect();
      this.zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    c.addEventListener('pointerdown', (e) => {
      drag = { x: e.clientX, y: e.clientY, moved: false };
      c.setPointerCapture(e.pointerId);
    });
    c.addEventListener('pointermove', (e) => {
      const r = c.getBoundingClientRect();
      if (drag) {
        const dx = e.clientX - drag.x;
        const dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
        drag.x = e.clientX;
        drag.y = e.clientY;
        if (drag.moved) this.panBy(dx, dy);
        return;
      }
      const i = this.hit(e.clientX - r.left, e.clientY - r.top);
      if (i !== this.hovered) {
        this.hovered = i;
        c.style.cursor = i >= 0 ? 'pointer' : 'grab';
        this.onHover(i >= 0 ? this.model.nodes[i] : null, e.clientX, e.clientY);
        this.invalidate();
      } else if (i >= 0) {
        this.onHover(this.model.nodes[i], e.clientX, e.clientY);
      }
    });
    c.addEventListener('pointerup', (e) => {
      const r = c.getBoundingClientRect();
      if (drag && !drag.moved) {
        const i = this.hit(e.clientX - r.left, e.clientY - r.top);
        this.select(i >= 0 ? this.model.nodes[i].id : null);
      }
      drag = null;
    });
    c.addEventListener('pointerleave', () => {
      if (this.hovered >= 0) { this.hovered = -1; this.onHover(null); this.invalidate(); }
    });
  }

  select(id, center = false) {
    this.selected = id;
    this.onSelect(id);
    if (center && id != null) this.centerOn(this.model.index.get(id));
    this.invalidate();
  }

  draw() {
    const t = performance.now();
    this.dirty = false;
    const ctx = this.ctx;
    const { dpr, scale: s } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.model || !this.model.nodes.length) { this.lastDrawMs = performance.now() - t; return; }
    ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * this.tx, dpr * this.ty);
    const x0 = -this.tx / s;
    const y0 = -this.ty / s;
    const x1 = x0 + this.cw / s;
    const y1 = y0 + this.ch / s;
    const { nodes, edges } = this.model;
    const visible = [];
    for (let i = 0; i < nodes.length; i++) {
      const n = nodes[i];
      if (n.x <= x1 && n.x + n.w >= x0 && n.y <= y1 && n.y + n.h >= y0) visible.push(i);
    }

    // Edges: three batches (plain, failed, critical), curves only when zoomed in.
    const curves = s > 0.25;
    const batches = [[], [], []];
    for (const e of edges) {
      const a = nodes[e.s];
      const b = nodes[e.t];
      const ax = a.x + a.w;
      const bx = b.x;
      const ay = a.y + a.h / 2;
      const by = b.y + b.h / 2;
      if (Math.max(ax, bx) < x0 || Math.min(ax, bx) > x1 || Math.max(ay, by) < y0 || Math.min(ay, by) > y1) continue;
      batches[e.critical ? 2 : e.failed ? 1 : 0].push(ax, ay, bx, by);
    }
    const strokeEdges = (pts, style, width) => {
      if (!pts.length) return;
      ctx.beginPath();
      for (let i = 0; i < pts.length; i += 4) {
        const [ax, ay, bx, by] = [pts[i], pts[i + 1], pts[i + 2], pts[i + 3]];
        ctx.moveTo(ax, ay);
        if (curves) {
          const mx = (ax + bx) / 2;
          ctx.bezierCurveTo(mx, ay, mx, by, bx, by);
        } else ctx.lineTo(bx, by);
      }
      ctx.strokeStyle = style;
      ctx.lineWidth = width / Math.max(s, 0.05);
      ctx.stroke();
    };
    strokeEdges(batches[0], '#9aa3b2', 1);
    strokeEdges(batches[1], '#e5484d', 1);
    strokeEdges(batches[2], CRITICAL, 2.5);

    // Node fills batched by colour; request nodes get an objective stripe and a
    // cached-share bar along the bottom.
    const byFill = new Map();
    for (const i of visible) {
      const n = nodes[i];
      const fill = COLORS[n.status] || '#ffffff';
      if (!byFill.has(fill)) byFill.set(fill, []);
      byFill.get(fill).push(n);
    }
    for (const [fill, list] of byFill) {
      ctx.beginPath();
      for (const n of list) {
        if (n.kind === 'var' && s > 0.3) ctx.roundRect(n.x, n.y, n.w, n.h, n.h / 2);
        else ctx.rect(n.x, n.y, n.w, n.h);
      }
      ctx.fillStyle = fill;
      ctx.fill();
    }
    const stripes = { latency: [], throughput: [] };
    const cacheBg = [];
    const cacheFg = [];
    for (const i of visible) {
      const n = nodes[i];
      if (n.kind !== 'req') continue;
      const obj = n.req.objective || n.req.criteria;
      if (stripes[obj]) stripes[obj].push(n);
      if (n.req.prompt_tokens) {
        cacheBg.push(n);
        if (n.req.cached_tokens) cacheFg.push(n);
      }
    }
    for (const [obj, list] of Object.entries(stripes)) {
      if (!list.length) continue;
      ctx.beginPath();
      for (const n of list) ctx.rect(n.x, n.y, 5, n.h);
      ctx.fillStyle = OBJECTIVE[obj];
      ctx.fill();
    }
    if (cacheBg.length) {
      ctx.beginPath();
      for (const n of cacheBg) ctx.rect(n.x + 5, n.y + n.h - 4, n.w - 5, 4);
      ctx.fillStyle = 'rgba(30, 41, 59, 0.15)';
      ctx.fill();
      ctx.beginPath();
      for (const n of cacheFg) {
        const share = Math.min(1, n.req.cached_tokens / n.req.prompt_tokens);
        ctx.rect(n.x + 5, n.y + n.h - 4, (n.w - 5) * share, 4);
      }
      ctx.fillStyle = '#1d4ed8';
      ctx.fill();
    }
    // Outlines: plain, then critical path, then hover/selection on top.
    const outline = (list, style, width) => {
      if (!list.length) return;
      ctx.beginPath();
      for (const n of list) {
        if (n.kind === 'var' && s > 0.3) ctx.roundRect(n.x, n.y, n.w, n.h, n.h / 2);
        else ctx.rect(n.x, n.y, n.w, n.h);
      }
      ctx.strokeStyle = style;
      ctx.lineWidth = width / Math.max(s, 0.05);
      ctx.stroke();
    };
    if (s > 0.15) outline(visible.map((i) => nodes[i]).filter((n) => !n.critical), '#64748b', 0.8);
    outline(visible.map((i) => nodes[i]).filter((n) => n.critical), CRITICAL, 3);
    const sel = this.selected != null ? this.model.index.get(this.selected) : undefined;
    if (sel !== undefined) outline([nodes[sel]], '#0f172a', 3.5);
    if (this.hovered >= 0) outline([nodes[this.hovered]], '#0f172a', 1.5);

    // Text in screen space (a constant, readable size), only on nodes wide enough for it.
    if (s * REQ_W >= 72 && visible.length < 4000) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.fillStyle = '#0f172a';
      ctx.textBaseline = 'middle';
      for (const i of visible) {
        const n = nodes[i];
        const sx = n.x * s + this.tx;
        const sy = n.y * s + this.ty;
        const sw = n.w * s;
        const sh = n.h * s;
        if (n.kind === 'var') {
          ctx.font = '10px system-ui, sans-serif';
          ctx.fillText(clip(ctx, '{{' + n.name + '}}', sw - 12), sx + 7, sy + sh / 2);
        } else {
          const r = n.req;
          const two = sh >= 26;
          ctx.font = '600 11px system-ui, sans-serif';
          ctx.fillText(clip(ctx, r.output ? '→ ' + r.output : r.id, sw - 12), sx + 9, two ? sy + sh / 2 - 7 : sy + sh / 2);
          if (two) {
            ctx.font = '10px system-ui, sans-serif';
            const obj = (r.objective || r.criteria || '')[0] || '';
            const second = [n.status, obj && obj.toUpperCase(), r.group ? 'group ' + r.group.slice(-6) : '']
              .filter(Boolean).join(' · ');
            ctx.fillText(clip(ctx, second, sw - 12), sx + 9, sy + sh / 2 + 7);
          }
        }
      }
    }
    this.lastDrawMs = performance.now() - t;
  }
}

function clip(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (ctx.measureText(text.slice(0, mid) + '…').width <= width) lo = mid;
    else hi = mid - 1;
  }
  return text.slice(0, lo) + '…';
}
