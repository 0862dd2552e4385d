// The timeline: one row per engine, each request a bar split into queue wait, prefill
// and decode (or one "run" phase when the engine call was not streamed), lanes stacking
// requests that overlap (one batch). Wheel scrolls rows, ctrl+wheel zooms time, drag
// pans. Culled and batched like the DAG; follows the live edge until the user zooms.

import { COLORS, CRITICAL } from './model.js';

const LANE = 12;
const ROW_GAP = 10;
const LABEL_W = 150;
const AXIS_H = 22;
export const PHASE_COLORS = {
  queue: '#cbd5e1', prefill: '#f59e0b', decode: '#22a06b', run: '#4ba3c7',
};

export class GanttView {
  constructor(canvas, { onSelect, onHover } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.onSelect = onSelect || (() => {});
    this.onHover = onHover || (() => {});
    this.data = { rows: [], t0: 0, t1: 0 };
    this.critical = new Set();
    this.selected = null;
    this.follow = true;  // fit the whole time range until the user zooms or pans
    this.pxPerS = 100;
    this.offS = 0;       // time at the left edge, seconds after t0
    this.scrollY = 0;
    this.dirty = false;
    this.lastDrawMs = 0;
    this._bind();
    new ResizeObserver(() => this._resize()).observe(canvas);
    this._resize();
  }

  setData(data, critical) {
    this.data = data;
    this.critical = critical;
    let y = AXIS_H;
    for (const row of data.rows) { row.y = y; row.h = Math.max(32, row.lanes * LANE + ROW_GAP); y += row.h; }
    this.contentH = y;
    if (this.follow) this._fitTime();
    this.invalidate();
  }

  _fitTime() {
    const span = Math.max(0.001, this.data.t1 - this.data.t0);
    this.pxPerS = (this.cw - LABEL_W - 16) / span;
    this.offS = 0;
  }

  invalidate() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => { if (this.dirty) this.draw(); });
  }

  _resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    this.cw = Math.max(1, r.width);
    this.ch = Math.max(1, r.height);
    this.canvas.width = Math.round(this.cw * dpr);
    this.canvas.height = Math.round(this.ch * dpr);
    this.dpr = dpr;
    if (this.follow) this._fitTime();
    this.invalidate();
  }

  _xOf(t) { return LABEL_W + (t - this.data.t0 - this.offS) * this.pxPerS; }

  hit(sx, sy) {
    if (sx < LABEL_W || sy < AXIS_H) return null;
    const y = sy + this.scrollY;
    const t = this.data.t0 + this.offS + (sx - LABEL_W) / this.pxPerS;
    for (const row of this.data.rows) {
      if (y < row.y || y >= row.y + row.h) continue;
      const lane = Math.floor((y - row.y) / LANE);
      for (const b of row.bars) if (b.lane === lane && b.start <= t && t <= b.end) return b;
      return null;
    }
    return null;
  }

  _bind() {
    const c = this.canvas;
    let drag = null;
    c.addEventListener('wheel', (e) => {
      e.preventDefault();
      if (e.ctrlKey || e.metaKey) {
        const r = c.getBoundingClientRect();
        const sx = Math.max(LABEL_W, e.clientX - r.left);
        const t = this.offS + (sx - LABEL_W) / this.pxPerS;
        this.pxPerS *= Math.exp(-e.deltaY * 0.002);
        this.offS = t - (sx - LABEL_W) / this.pxPerS;
        this.follow = false;
      } else {
        this._scrollBy(e.deltaY);
      }
      this.invalidate();
    }, { passive: false });
    c.addEventListener('dblclick', () => { this.follow = true; this._fitTime(); this.invalidate(); });
    c.addEventListener('pointerdown', (e) => { drag = { x: e.clientX, y: e.clientY, moved: false }; c.setPointerCapture(e.pointerId); });
    c.addEventListener('pointermove', (e) => {
      const r = c.getBoundingClientRect();
      if (drag) {
        const dx = e.clientX - drag.x;
        const dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
        drag.x = e.clientX;
        drag.y = e.clientY;
        if (drag.moved) {
          this.offS -= dx / this.pxPerS;
          this.follow = false;
          this._scrollBy(-dy);
          this.invalidate();
        }
        return;
      }
      const b = this.hit(e.clientX - r.left, e.clientY - r.top);
      this.onHover(b, e.clientX, e.clientY);
    });
    c.addEventListener('pointerup', (e) => {
      const r = c.getBoundingClientRect();
      if (drag && !drag.moved) {
        const b = this.hit(e.clientX - r.left, e.clientY - r.top);
        if (b) this.onSelect(b.id);
      }
      drag = null;
    });
    c.addEventListener('pointerleave', () => this.onHover(null));
  }

  _scrollBy(dy) {
    const max = Math.max(0, (this.contentH || 0) - this.ch + 8);
    this.scrollY = Math.min(max, Math.max(0, this.scrollY + dy));
  }

  draw() {
    const t = performance.now();
    this.dirty = false;
    const ctx = this.ctx;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.cw, this.ch);
    const { rows, t0 } = this.data;
    const tl = t0 + this.offS;
    const tr = tl + (this.cw - LABEL_W) / this.pxPerS;
    // Bars, batched by phase.
    const batches = new Map();
    const crit = [];
    const failed = [];
    const sel = [];
    const cache = [];
    const cacheFg = [];
    ctx.save();
    ctx.beginPath();
    ctx.rect(LABEL_W, AXIS_H, this.cw - LABEL_W, this.ch - AXIS_H);
    ctx.clip();
    for (const row of rows) {
      const ry = row.y - this.scrollY;
      if (ry > this.ch || ry + row.h < AXIS_H) continue;
      for (const b of row.bars) {
        if (b.end < tl || b.start > tr) continue;
        const y = ry + b.lane * LANE + 1;
        for (const p of b.phases) {
          if (p.end <= p.start) continue;
          if (!batches.has(p.kind)) batches.set(p.kind, []);
          batches.get(p.kind).push(this._xOf(p.start), y, Math.max(1, (p.end - p.start) * this.pxPerS), LANE - 4);
        }
        const x = this._xOf(b.start);
        const w = Math.max(1, (b.end - b.start) * this.pxPerS);
        if (this.critical.has(b.id)) crit.push(x, y, w, LANE - 4);
        if (b.status === 'failed' || b.status === 'upstream_failed') failed.push(x, y, w, LANE - 4);
        if (b.id === this.selected) sel.push(x, y, w, LANE - 4);
        if (b.cached != null) {
          cache.push(x, y + LANE - 3, w, 2);
          if (b.cached > 0) cacheFg.push(x, y + LANE - 3, w * Math.min(1, b.cached), 2);
        }
      }
    }
    const rects = (pts, mode, style, width = 1) => {
      if (!pts.length) return;
      ctx.beginPath();
      for (let i = 0; i < pts.length; i += 4) ctx.rect(pts[i], pts[i + 1], pts[i + 2], pts[i + 3]);
      if (mode === 'fill') { ctx.fillStyle = style; ctx.fill(); } else { ctx.strokeStyle = style; ctx.lineWidth = width; ctx.stroke(); }
    };
    for (const [kind, pts] of batches) rects(pts, 'fill', PHASE_COLORS[kind]);
    rects(cache, 'fill', 'rgba(30, 41, 59, 0.18)');
    rects(cacheFg, 'fill', '#1d4ed8');
    rects(failed, 'stroke', COLORS.failed, 1.5);
    rects(crit, 'stroke', CRITICAL, 2);
    rects(sel, 'stroke', '#0f172a', 2.5);
    ctx.restore();

    // Row labels and separators.
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    ctx.fillStyle = '#f8fafc';
    ctx.fillRect(0, AXIS_H, LABEL_W, this.ch - AXIS_H);
    ctx.strokeStyle = '#e2e8f0';
    ctx.lineWidth = 1;
    for (const row of rows) {
      const ry = row.y - this.scrollY;
      if (ry > this.ch || ry + row.h < AXIS_H) continue;
      ctx.beginPath();
      ctx.moveTo(0, ry + row.h - ROW_GAP / 2);
      ctx.lineTo(this.cw, ry + row.h - ROW_GAP / 2);
      ctx.stroke();
      if (ry >= AXIS_H - 6) {
        ctx.fillStyle = '#0f172a';
        ctx.fillText(shorten(row.engine, 24), 6, ry + 7);
        ctx.fillStyle = '#64748b';
        ctx.fillText(`${row.bars.length} req · ${row.lanes} lane${row.lanes > 1 ? 's' : ''}`, 6, ry + 20);
      }
    }
    // Time axis.
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, this.cw, AXIS_H);
    ctx.strokeStyle = '#cbd5e1';
    ctx.beginPath();
    ctx.moveTo(0, AXIS_H - 0.5);
    ctx.lineTo(this.cw, AXIS_H - 0.5);
    ctx.stroke();
    const step = niceStep(90 / this.pxPerS);
    ctx.fillStyle = '#475569';
    for (let s = Math.ceil(this.offS / step) * step; s <= this.offS + (this.cw - LABEL_W) / this.pxPerS; s += step) {
      const x = LABEL_W + (s - this.offS) * this.pxPerS;
      ctx.fillRect(x, AXIS_H - 5, 1, 5);
      ctx.fillText(fmtS(s, step), x + 3, 9);
    }
    if (!rows.length) {
      ctx.fillStyle = '#64748b';
      ctx.fillText('No request has reached the queue yet.', LABEL_W + 10, AXIS_H + 18);
    }
    this.lastDrawMs = performance.now() - t;
  }
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-6))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function fmtS(s, step) {
  if (step >= 1) return s.toFixed(0) + ' s';
  if (step >= 0.01) return s.toFixed(2) + ' s';
  return (s * 1000).toFixed(1) + ' ms';
}

function shorten(text, n) {
  return text.length <= n ? text : '…' + text.slice(-(n - 1));
}
