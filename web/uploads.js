// Sending files to the box (docs/api.md, "How to upload a file"): hash the file once in
// 1 MiB slices, create or resume the upload, PUT the missing chunks (a few at a time, each
// with its SHA-256), finish. Never holds more than a few chunks of a file in memory.
// Interrupted uploads are remembered in localStorage and resume when the file is chosen
// again; while the page is open they retry by themselves.

import { Sha256, sha256hex } from './sha256.js';
import { el, formatBytes, formatDuration, describeError } from './ui.js';

const HASH_STEP = 1 << 20;
const CHUNKS_IN_FLIGHT = 3;
const PENDING_KEY = 'lanvan.uploads';
const LIMIT_KEY = 'lanvan.parallel';

class Cancelled extends Error {}
class Restart extends Error {}
class BoxError extends Error {
  constructor(r) {
    super(describeError(r.code, r.message));
    this.code = r.code;
    this.status = r.status;
  }
}

/** Unfinished uploads by file key: {name, size, lastModified, sha256, id, percent}. */
function loadPending() {
  try { return JSON.parse(localStorage.getItem(PENDING_KEY)) || {}; } catch { return {}; }
}
function savePending(all) {
  try { localStorage.setItem(PENDING_KEY, JSON.stringify(all)); } catch { /* full or private */ }
}
const fileKey = (f) => `${f.name}|${f.size}|${f.lastModified}`;

/** One HTTP request with upload progress (fetch has none). Resolves {status, code, body}. */
function request(method, url, { body = null, headers = {}, onProgress, track } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    if (onProgress) xhr.upload.onprogress = (e) => onProgress(e.loaded);
    const done = () => {
      if (track) track.delete(xhr);
      let json = null;
      try { json = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      resolve({ status: xhr.status, code: json?.error, message: json?.message, body: json });
    };
    xhr.onload = done;
    xhr.onerror = done;
    xhr.onabort = done;
    xhr.ontimeout = done;
    if (track) track.add(xhr);
    xhr.send(body);
  });
}

/** Statuses worth retrying as they are: no answer, stalls, busy, box full for now. */
const transient = (r) => r.status === 0 || r.status === 408 || r.status === 409 && r.code === 'busy'
  || r.status === 503 || r.code === 'disk_full' || r.status === 502 || r.status === 504;

class Upload {
  constructor(uploader, file, row) {
    this.up = uploader;
    this.file = file;
    this.key = fileKey(file);
    this.size = file.size;
    this.state = 'queued';
    this.acked = 0; // bytes the box confirmed
    this.inflight = new Map(); // chunk index → bytes of it sent so far
    this.xhrs = new Set();
    this.samples = [];
    this.cancelled = false;
    this.note = '';
    this.row = row || el('li', { class: 'upload' });
    this.build();
  }

  build() {
    const name = this.file.name;
    this.bar = el('progress', { max: 1000, value: 0, 'aria-label': `Progress of ${name}` });
    this.status = el('span', { class: 'status' }, 'Waiting…');
    this.button = el('button', {
      class: 'btn small', type: 'button', 'aria-label': `Cancel sending ${name}`,
      onclick: () => this.cancel(),
    }, 'Cancel');
    this.row.className = 'upload';
    this.row.dataset.state = 'queued';
    this.row.replaceChildren(
      el('div', { class: 'line' }, el('span', { class: 'name', title: name }, name), this.button),
      this.bar, this.status,
    );
  }

  sent() {
    let n = this.acked;
    for (const v of this.inflight.values()) n += v;
    return Math.min(n, this.size);
  }

  setState(state, note = '') {
    this.state = state;
    this.note = note;
    this.row.dataset.state = state;
    this.render();
  }

  /** Redraws the status line: percent, speed and time left while moving. */
  render() {
    const now = performance.now();
    let text;
    if (this.state === 'hashing' || this.state === 'sending') {
      const done = this.state === 'hashing' ? this.hashed : this.sent();
      this.samples.push([now, done]);
      while (this.samples.length > 2 && now - this.samples[0][0] > 4000) this.samples.shift();
      const [t0, b0] = this.samples[0];
      const speed = now - t0 > 300 ? (done - b0) / ((now - t0) / 1000) : 0;
      const pct = this.size ? (100 * done) / this.size : 100;
      this.bar.value = Math.round(pct * 10);
      const left = speed > 0 ? ` · ${formatDuration((this.size - done) / speed)} left` : '';
      const rate = speed > 0 ? ` · ${formatBytes(speed)}/s` : '';
      const verb = this.state === 'hashing' ? 'Checking the file' : 'Sending';
      text = `${verb} · ${Math.floor(pct)}% of ${formatBytes(this.size)}${rate}${left}`;
      if (this.note) text += ` · ${this.note}`;
    } else if (this.state === 'retrying') {
      text = this.note;
    } else if (this.state === 'done') {
      this.bar.value = 1000;
      text = this.note || `Sent · ${formatBytes(this.size)}`;
    } else if (this.state === 'error') {
      text = this.note;
    } else if (this.state === 'finishing') {
      this.bar.value = 1000;
      text = 'Storing on the box…';
    } else {
      text = 'Waiting for its turn…';
    }
    if (this.status.textContent !== text) this.status.textContent = text;
  }

  cancel() {
    if (this.state === 'done' || this.state === 'error') {
      this.row.remove();
      return;
    }
    this.cancelled = true;
    for (const x of this.xhrs) x.abort();
    this.up.forget(this.key, this.id);
    this.row.remove();
    this.up.wake();
  }

  check() {
    if (this.cancelled) throw new Cancelled();
  }
}

export class Uploader {
  /** `me` is the device identity; `list` the <ul> for rows; `onDone(file)` after each file. */
  constructor(me, list) {
    this.me = me;
    this.list = list;
    this.queue = [];
    this.active = 0;
    this.wakers = new Set();
    this.limit = Number(localStorage.getItem(LIMIT_KEY)) || 2;
    this.paused = new Map(); // key → row of an unfinished upload from an earlier visit
    setInterval(() => {
      for (const u of this.queue) if (u.state === 'hashing' || u.state === 'sending') u.render();
    }, 250);
  }

  setLimit(n) {
    this.limit = Math.max(1, Number(n) || 2);
    try { localStorage.setItem(LIMIT_KEY, String(this.limit)); } catch { /* private */ }
    this.pump();
  }

  /** Ends every retry wait at once (the box is back). */
  wake() {
    for (const w of this.wakers) w();
    this.wakers.clear();
  }

  /** Waits `ms`, or less if the box comes back; shows why on the row. */
  async pause(u, ms, why) {
    const until = Date.now() + ms;
    u.setState('retrying', `${why} Trying again in ${Math.ceil(ms / 1000)} s…`);
    await new Promise((resolve) => {
      const tick = setInterval(() => {
        const left = Math.ceil((until - Date.now()) / 1000);
        if (left > 0) u.setState('retrying', `${why} Trying again in ${left} s…`);
      }, 1000);
      const finish = () => { clearInterval(tick); clearTimeout(timer); this.wakers.delete(finish); resolve(); };
      const timer = setTimeout(finish, ms);
      this.wakers.add(finish);
    });
    u.check();
  }

  /** Sends a request, waiting and repeating while the box is unreachable or busy. */
  async retrying(u, send) {
    for (let attempt = 0; ; attempt++) {
      u.check();
      const r = await send();
      u.check();
      if (!transient(r)) return r;
      const why = r.status === 0 || r.status >= 502 && r.status !== 503 && r.status !== 507
        ? 'The box cannot be reached.' : describeError(r.code, r.message);
      await this.pause(u, Math.min(1000 * 2 ** attempt, 10000), why);
      u.setState(u.resume || 'sending');
    }
  }

  /** Adds files to send. Files left unfinished on an earlier visit resume. */
  add(files) {
    for (const file of files) {
      const key = fileKey(file);
      if (this.queue.some((u) => u.key === key && !u.cancelled && u.state !== 'done' && u.state !== 'error')) continue;
      // Some pickers give a file a new lastModified each time: match on name and size too
      // (the box resumes by content anyway, since the upload declares its hash).
      const prefix = `${file.name}|${file.size}|`;
      const pausedKey = this.paused.has(key) ? key : [...this.paused.keys()].find((k) => k.startsWith(prefix));
      const row = pausedKey && this.paused.get(pausedKey);
      if (pausedKey) {
        this.paused.delete(pausedKey);
        if (pausedKey !== key) this.forget(pausedKey);
      }
      const u = new Upload(this, file, row);
      if (!row) this.list.prepend(u.row);
      this.queue.push(u);
    }
    this.pump();
  }

  pump() {
    while (this.active < this.limit) {
      const u = this.queue.find((x) => x.state === 'queued' && !x.cancelled);
      if (!u) break;
      this.active++;
      u.state = 'starting';
      this.run(u).finally(() => {
        this.active--;
        this.queue = this.queue.filter((x) => x.state !== 'done' && x.state !== 'error' && !x.cancelled);
        this.pump();
      });
    }
  }

  async run(u) {
    const pending = loadPending();
    let rec = pending[u.key];
    try {
      if (!rec || !rec.sha256) {
        u.hashed = 0;
        u.setState('hashing');
        const sha256 = await this.hash(u);
        rec = { name: u.file.name, size: u.size, lastModified: u.file.lastModified, sha256 };
        this.remember(u.key, rec);
      }
      u.sha256 = rec.sha256;
      for (let round = 0; ; round++) {
        if (round > 20) throw new Error('The box keeps losing this upload; try again later.');
        const created = await this.retrying(u, () => request('POST', '/api/uploads', {
          body: JSON.stringify({
            name: u.file.name, size: u.size, sha256: u.sha256,
            device_id: this.me.id, device_name: this.me.name,
          }),
          headers: { 'content-type': 'application/json' },
          track: u.xhrs,
        }));
        if (created.status !== 200 && created.status !== 201) throw new BoxError(created);
        if (created.body.complete) {
          this.forget(u.key);
          u.setState('done', `Already on the box as “${created.body.file.name}”`);
          this.scheduleRemoval(u);
          return;
        }
        u.id = created.body.id;
        this.remember(u.key, { ...rec, id: u.id });
        try {
          await this.sendChunks(u, created.body);
          const fin = await this.retrying(u, () => {
            u.setState('finishing');
            return request('POST', `/api/uploads/${u.id}/finish`, { track: u.xhrs });
          });
          if (fin.status === 409 && fin.code === 'incomplete') continue;
          if (fin.status === 404) continue;
          if (fin.code === 'file_hash_mismatch') {
            this.forget(u.key);
            throw new BoxError(fin);
          }
          if (fin.status !== 200 && fin.status !== 201) throw new BoxError(fin);
          this.forget(u.key);
          const name = fin.body.file.name;
          u.setState('done', name === u.file.name ? `Sent · ${formatBytes(u.size)}` : `Sent as “${name}”`);
          this.scheduleRemoval(u);
          return;
        } catch (e) {
          if (e instanceof Restart) continue;
          throw e;
        }
      }
    } catch (e) {
      if (e instanceof Cancelled) return;
      u.setState('error', e.message || String(e));
      u.button.textContent = 'Dismiss';
      u.button.setAttribute('aria-label', `Dismiss ${u.file.name}`);
    }
  }

  scheduleRemoval(u) {
    u.button.textContent = 'OK';
    u.button.setAttribute('aria-label', `Dismiss ${u.file.name}`);
    setTimeout(() => u.row.remove(), 20000);
  }

  /** The whole file's SHA-256, read in slices so no more than 1 MiB is held at once. */
  async hash(u) {
    const h = new Sha256();
    for (let off = 0; off < u.size; off += HASH_STEP) {
      u.check();
      const buf = new Uint8Array(await u.file.slice(off, off + HASH_STEP).arrayBuffer());
      h.update(buf);
      u.hashed = off + buf.length;
    }
    return h.hex();
  }

  async sendChunks(u, status) {
    const cs = status.chunk_size;
    const todo = [];
    let missingBytes = 0;
    for (const [a, b] of status.missing) {
      for (let i = a; i < b; i++) {
        todo.push(i);
        missingBytes += Math.min(cs, u.size - i * cs);
      }
    }
    u.acked = u.size - missingBytes;
    u.inflight.clear();
    u.samples = [];
    u.resume = 'sending';
    u.setState('sending', u.acked > 0 ? `resumed at ${Math.floor((100 * u.acked) / u.size)}%` : '');
    // A round ends when a chunk finds the upload gone; its other workers stop taking chunks.
    const round = (u.round = (u.round || 0) + 1);
    const worker = async () => {
      for (let i = todo.shift(); i !== undefined && u.round === round; i = todo.shift()) {
        await this.sendChunk(u, i, cs);
      }
    };
    await Promise.all(Array.from({ length: Math.min(CHUNKS_IN_FLIGHT, todo.length) }, worker));
  }

  async sendChunk(u, i, cs) {
    const start = i * cs;
    const blob = u.file.slice(start, Math.min(start + cs, u.size));
    // Hash the slice just before sending it; the browser streams the Blob itself from disk.
    let hash = sha256hex(await blob.arrayBuffer());
    for (let damaged = 0; ; damaged++) {
      const r = await this.retrying(u, () => request('PUT', `/api/uploads/${u.id}/chunks/${i}`, {
        body: blob,
        headers: { 'x-chunk-sha256': hash },
        onProgress: (n) => u.inflight.set(i, n),
        track: u.xhrs,
      }));
      u.inflight.delete(i);
      if (r.status === 200) {
        u.acked += blob.size;
        this.notePercent(u);
        return;
      }
      if (r.status === 404) throw new Restart();
      if (r.code === 'chunk_hash_mismatch' && damaged < 2) {
        hash = sha256hex(await blob.arrayBuffer());
        continue;
      }
      throw new BoxError(r);
    }
  }

  /** Keeps the stored percent roughly current, for the "unfinished" row after a reload. */
  notePercent(u) {
    const pct = Math.floor((100 * u.acked) / u.size);
    if (pct - (u.savedPct || 0) < 5) return;
    u.savedPct = pct;
    const all = loadPending();
    if (all[u.key]) { all[u.key].percent = pct; savePending(all); }
  }

  remember(key, rec) {
    const all = loadPending();
    all[key] = rec;
    // Bounded: only the 50 most recent unfinished uploads are remembered.
    const keys = Object.keys(all);
    for (const k of keys.slice(0, Math.max(0, keys.length - 50))) delete all[k];
    savePending(all);
  }

  /** Drops an unfinished upload: from localStorage, and from the box if it has an id. */
  forget(key, id) {
    const all = loadPending();
    delete all[key];
    savePending(all);
    // Only a cancel names the id: a finished upload is already gone from the box.
    if (id) fetch(`/api/uploads/${id}`, { method: 'DELETE' }).catch(() => {});
  }

  /** Shows uploads left unfinished on an earlier visit, with a way to continue them. */
  async showUnfinished(pickFiles) {
    const all = loadPending();
    for (const [key, rec] of Object.entries(all)) {
      if (!rec.id) continue;
      let pct = rec.percent || 0;
      const r = await request('GET', `/api/uploads/${rec.id}`);
      if (r.status === 404) {
        delete all[key];
        savePending(all);
        continue;
      }
      if (r.status === 200 && r.body.chunks) pct = Math.floor((100 * r.body.received_chunks) / r.body.chunks);
      const row = el('li', { class: 'upload', 'data-state': 'unfinished' });
      row.append(
        el('div', { class: 'line' }, el('span', { class: 'name', title: rec.name }, rec.name),
          el('button', { class: 'btn small primary', type: 'button', onclick: pickFiles,
            'aria-label': `Choose ${rec.name} again to continue` }, 'Continue'),
          el('button', { class: 'btn small', type: 'button', 'aria-label': `Forget ${rec.name}`,
            onclick: () => { this.forget(key, rec.id); this.paused.delete(key); row.remove(); } }, 'Forget')),
        el('progress', { max: 100, value: pct, 'aria-label': `Progress of ${rec.name}` }),
        el('span', { class: 'status' },
          `Unfinished · ${pct}% of ${formatBytes(rec.size)} · choose this file again to continue`),
      );
      this.paused.set(key, row);
      this.list.append(row);
    }
  }
}
