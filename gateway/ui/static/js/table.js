// The request list: a virtualised table (only the rows in view exist in the DOM), so
// thousands of requests cost a few dozen elements. Rows carry data-id and data-status.

import { displayStatus } from './model.js';

const ROW_H = 24;

export class RequestList {
  constructor(scroller, { onSelect } = {}) {
    this.scroller = scroller;
    this.onSelect = onSelect || (() => {});
    this.spacer = document.createElement('div');
    this.spacer.className = 'spacer';
    this.body = document.createElement('div');
    this.body.className = 'rows';
    this.spacer.append(this.body);
    scroller.append(this.spacer);
    this.rows = [];
    this.filter = '';
    this.critical = new Set();
    this.selected = null;
    scroller.addEventListener('scroll', () => this.render());
    this.body.addEventListener('click', (e) => {
      const row = e.target.closest('.row');
      if (row) this.onSelect(row.dataset.id);
    });
    new ResizeObserver(() => this.render()).observe(scroller);
  }

  setRequests(requests, critical) {
    this.all = requests;
    this.critical = critical;
    this._apply();
  }

  setFilter(text) {
    this.filter = text.trim().toLowerCase();
    this._apply();
  }

  _apply() {
    const f = this.filter;
    this.rows = !f ? this.all : this.all.filter((r) => [
      r.id, r.output || '', displayStatus(r.status, r.error), r.engine || '', r.group || '',
      r.objective || '', r.error || '',
    ].some((s) => s.toLowerCase().includes(f)));
    this.spacer.style.height = this.rows.length * ROW_H + 'px';
    this.render();
  }

  scrollTo(id) {
    const i = this.rows.findIndex((r) => r.id === id);
    if (i < 0) return;
    const top = i * ROW_H;
    if (top < this.scroller.scrollTop || top > this.scroller.scrollTop + this.scroller.clientHeight - ROW_H) {
      this.scroller.scrollTop = Math.max(0, top - this.scroller.clientHeight / 2);
    }
    this.render();
  }

  render() {
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / ROW_H) - 5);
    const last = Math.min(this.rows.length, first + Math.ceil(this.scroller.clientHeight / ROW_H) + 10);
    this.body.style.transform = `translateY(${first * ROW_H}px)`;
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.append(this._row(this.rows[i]));
    this.body.replaceChildren(frag);
  }

  _row(r) {
    const status = displayStatus(r.status, r.error);
    const el = document.createElement('div');
    el.className = 'row' + (this.critical.has(r.id) ? ' critical' : '') + (r.id === this.selected ? ' selected' : '');
    el.dataset.id = r.id;
    el.dataset.status = status;
    const cells = [
      ['name', r.output ? '→ ' + r.output : r.id],
      ['status s-' + status, status],
      ['obj', (r.objective || r.criteria || '').slice(0, 3)],
      ['num', r.queued_ms != null ? fmtMs(r.queued_ms) : ''],
      ['num', r.run_ms != null ? fmtMs(r.run_ms) : ''],
      ['num', r.prompt_tokens ? Math.round(100 * (r.cached_tokens || 0) / r.prompt_tokens) + '%' : ''],
    ];
    for (const [cls, text] of cells) {
      const c = document.createElement('span');
      c.className = cls;
      c.textContent = text;
      el.append(c);
    }
    el.title = r.error || r.id;
    return el;
  }
}

export function fmtMs(ms) {
  if (ms >= 10000) return (ms / 1000).toFixed(0) + 's';
  if (ms >= 1000) return (ms / 1000).toFixed(1) + 's';
  return ms.toFixed(0) + 'ms';
}
