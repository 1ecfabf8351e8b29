// The list of files on the box: loaded from GET /api/files on every (re)connect, then kept
// live by the WebSocket's file_added / file_deleted. Ages use the box's clock (`now`), so a
// device with a wrong clock still shows "5 min ago" right.

import { el, formatBytes, formatAge, describeError, toast } from './ui.js';

export class FileList {
  constructor(list, empty, count) {
    this.list = list;
    this.empty = empty;
    this.count = count;
    this.files = new Map(); // name → entry
    this.clockOffset = 0; // box time − local time, in ms
    this.swarm = null; // swarm.js: downloads from the box and other devices at once
    setInterval(() => this.render(), 30000);
  }

  async reload() {
    try {
      const t0 = Date.now();
      const res = await fetch('/api/files');
      const body = await res.json();
      if (body.now) this.clockOffset = body.now - (t0 + Date.now()) / 2;
      this.files = new Map(body.files.map((f) => [f.name, f]));
      this.render();
    } catch { /* the socket's reconnect brings the next reload */ }
  }

  added(file) {
    this.files.set(file.name, file);
    this.render();
  }

  deleted(name) {
    this.files.delete(name);
    this.render();
  }

  render() {
    const now = Date.now() + this.clockOffset;
    const files = [...this.files.values()].sort((a, b) => b.modified - a.modified || a.name.localeCompare(b.name));
    this.list.replaceChildren(...files.map((f) => this.row(f, now)));
    this.empty.hidden = files.length > 0;
    this.count.textContent = files.length ? `(${files.length})` : '';
  }

  row(f, now) {
    const href = `/api/files/${encodeURIComponent(f.name)}`;
    const from = f.uploaded_by ? ` · from ${f.uploaded_by}` : '';
    // When the box is a WebRTC peer, a download takes chunks from it and from every other
    // device that holds the file (swarm.js); the plain link is what it falls back to.
    const download = (e) => {
      if (!this.swarm?.usable()) return;
      e.preventDefault();
      this.swarm.start(f, e.currentTarget.closest('li.file'));
    };
    return el('li', { class: 'file', 'data-name': f.name },
      el('div', { class: 'info' },
        el('a', { class: 'name', href, download: f.name, title: f.name, onclick: download }, f.name),
        el('span', { class: 'meta' }, `${formatBytes(f.size)} · ${formatAge(f.modified, now)}${from}`),
        this.swarm?.rowPart(f.name)),
      el('div', { class: 'actions' },
        el('a', {
          class: 'btn small', href, download: f.name, 'aria-label': `Download ${f.name}`, onclick: download,
        }, 'Download'),
        el('button', {
          class: 'btn small danger', type: 'button', 'aria-label': `Delete ${f.name}`,
          onclick: () => this.remove(f.name),
        }, 'Delete')));
  }

  async remove(name) {
    if (!confirm(`Delete “${name}” from the box for everyone?`)) return;
    try {
      const res = await fetch(`/api/files/${encodeURIComponent(name)}`, { method: 'DELETE' });
      if (res.status === 204 || res.status === 404) {
        this.deleted(name);
        return;
      }
      const body = await res.json().catch(() => ({}));
      toast(describeError(body.error, body.message));
    } catch {
      toast('The box cannot be reached. Try again when it is back.');
    }
  }
}
