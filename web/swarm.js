// Multi-source downloads in the page (docs/protocol.md "Chunk protocol"): a file is fetched
// chunk by chunk, by SHA-256, from the box's own data channel and from other pages that hold
// it, rarest first with an endgame, every chunk checked here before it is written; and the
// page serves, to other pages, the files it holds whole. It never trusts a source's bytes
// unchecked, and never holds more than a window of chunks (a few MiB) in memory.

import { Sha256, toHex } from './sha256.js';
import { Meter } from './relay.js';
import { drained } from './p2p.js';
import { el, formatBytes, formatDuration, toast } from './ui.js';

/** The label of the chunk channel, on the box's peer connection and between pages. */
export const LABEL = 'lanvan-chunks';
/** Chunk piece: kind, 3 zero bytes, index, offset, chunk length (u32 BE), chunk SHA-256. */
const KIND_PIECE = 1;
const HEADER = 48;
const PIECE = 64 * 1024;
/** The largest chunk a manifest may name (the box's chunk is 256 KiB by default). */
const MAX_CHUNK = 4 << 20;
/** Verified chunks waiting to be written, plus chunks being put together: at most this much. */
const WINDOW_BYTES = 6 << 20;
/** Requests a downloader keeps outstanding at one source (the source may take more). */
const PER_SOURCE = 4;
/** Requests this page takes outstanding from one downloader when it serves. */
const SERVE_MAX = 16;
/** Page sources asked at once (SPEC: up to 4 peers), besides the box. */
const MAX_PAGE_SOURCES = 4;
/** How long the box's channel or a page's may take to open before it is given up. */
const OPEN_MS = 5000;
/** A source that sends nothing for this long while it owes chunks is given up. */
const STALL_MS = 5000;
/** Manifests announced at most (the box's p2p.max_announced). */
const MAX_HELD = 64;
/** The channel's send buffer is refilled below LOW and not filled past HIGH. */
const LOW = 1 << 20;
const HIGH = 4 << 20;
/** The download target folds its parts into one Blob every this many bytes. */
const FOLD_BYTES = 8 << 20;

const now = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());
const HEX64 = /^[0-9a-f]{64}$/;

// ---- Pure parts (tested in Node: tests/web/swarm_logic.test.mjs) ----

export function fromHex(s) {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}

/** The manifest hash (SPEC §1): SHA-256("lanvan-manifest-v1" || u64 size || u32 chunk size || chunks). */
export function manifestHash(size, chunkSize, chunks) {
  const h = new Sha256().update('lanvan-manifest-v1');
  const head = new Uint8Array(12);
  const v = new DataView(head.buffer);
  v.setUint32(0, Math.floor(size / 0x100000000));
  v.setUint32(4, size >>> 0);
  v.setUint32(8, chunkSize);
  h.update(head);
  for (const c of chunks) h.update(fromHex(c));
  return h.hex();
}

/**
 * Checks a manifest as received (HTTP or `get_manifest`): its fields, chunk count and its
 * own hash recomputed. Returns it tidied, or throws an Error saying what is wrong.
 */
export function checkManifest(m, expect) {
  if (!m || typeof m !== 'object') throw new Error('no manifest');
  const { size, chunk_size: cs, chunks } = m;
  if (!Number.isSafeInteger(size) || size < 0) throw new Error('bad size');
  if (!Number.isSafeInteger(cs) || cs <= 0 || cs > MAX_CHUNK) throw new Error('bad chunk size');
  if (!Array.isArray(chunks) || chunks.length !== Math.ceil(size / cs)) throw new Error('bad chunk count');
  for (const c of chunks) if (typeof c !== 'string' || !HEX64.test(c)) throw new Error('bad chunk hash');
  const id = manifestHash(size, cs, chunks);
  if (id !== m.manifest) throw new Error('the manifest hash does not match its contents');
  if (expect && id !== expect) throw new Error('not the manifest asked for');
  return { manifest: id, name: String(m.name || 'file'), size, chunk_size: cs, sha256: m.sha256 || null, chunks };
}

/** Length of chunk `i` of a manifest (the last one may be short). */
export const chunkLength = (m, i) => Math.min(m.chunk_size, m.size - i * m.chunk_size);

/** A bitfield (bit i = chunk i, most significant bit of byte 0 first) from base64. */
export function bitsFromBase64(b64, n) {
  const raw = atob(b64);
  if (raw.length < Math.ceil(n / 8)) throw new Error('bitfield too short');
  const bits = new Uint8Array(Math.ceil(n / 8));
  for (let i = 0; i < bits.length; i++) bits[i] = raw.charCodeAt(i);
  return bits;
}

export function bitsToBase64(bits) {
  let s = '';
  for (const b of bits) s += String.fromCharCode(b);
  return btoa(s);
}

export const bitGet = (bits, i) => (bits[i >> 3] >> (7 - (i & 7))) & 1;
export const bitSet = (bits, i) => { bits[i >> 3] |= 0x80 >> (i & 7); };

/** One chunk piece as sent (SPEC §4). */
export function encodePiece(index, offset, length, digest, payload) {
  const f = new Uint8Array(HEADER + payload.length);
  const v = new DataView(f.buffer);
  v.setUint8(0, KIND_PIECE);
  v.setUint32(4, index);
  v.setUint32(8, offset);
  v.setUint32(12, length);
  f.set(digest, 16);
  f.set(payload, HEADER);
  return f;
}

/** A binary message as a piece, or null when it is not one (unknown kind, too short). */
export function parsePiece(buf) {
  if (buf.byteLength < HEADER) return null;
  const v = new DataView(buf);
  if (v.getUint8(0) !== KIND_PIECE) return null;
  return {
    index: v.getUint32(4), offset: v.getUint32(8), length: v.getUint32(12),
    digest: new Uint8Array(buf, 16, 32), payload: new Uint8Array(buf, HEADER),
  };
}

/**
 * Puts chunks together from one source's pieces, which come in order, one chunk after
 * another. `want(index)` says whether the chunk is still wanted (else its pieces are only
 * skipped, never buffered). `push` returns `{error}` for a piece that breaks the framing,
 * `{chunk: {index, bytes, ok}}` when a chunk is whole (ok: its SHA-256 is the manifest's),
 * or null.
 */
export class Assembler {
  constructor(manifest) {
    this.m = manifest;
    this.cur = null;
  }

  push(p, want) {
    const m = this.m;
    if (p.index >= m.chunks.length) return { error: `no chunk ${p.index}` };
    const len = chunkLength(m, p.index);
    if (p.length !== len) return { error: `chunk ${p.index} has ${len} bytes, not ${p.length}` };
    if (p.offset === 0) {
      // A new chunk starts; one given up half-way (cancelled) is dropped.
      this.cur = { index: p.index, got: 0, bytes: want(p.index) ? new Uint8Array(len) : null };
    }
    const cur = this.cur;
    if (!cur || cur.index !== p.index || cur.got !== p.offset) return { error: `piece at ${p.offset} of chunk ${p.index} out of order` };
    if (p.offset + p.payload.length > len || p.payload.length === 0) return { error: 'piece past the chunk end' };
    if (cur.bytes) cur.bytes.set(p.payload, p.offset);
    cur.got += p.payload.length;
    if (cur.got < len) return null;
    this.cur = null;
    if (!cur.bytes) return null;
    const ok = toHex(new Sha256().update(cur.bytes).digest()) === m.chunks[cur.index];
    return { chunk: { index: cur.index, bytes: cur.bytes, ok } };
  }
}

const MISSING = 0;
const REQUESTED = 1;
const HAVE = 2;

/**
 * Which chunk each source fetches next. A source is `{id, has(i), inflight: Set, max}`.
 * Only chunks in the window [written, written + window) are asked for, so memory stays
 * bounded; in it, rarest first (fewest sources having it), ties by index. When nothing new
 * is left to ask a source for (the endgame, or the window's head is slow), it asks for a
 * chunk already outstanding elsewhere (at most two owners), and the loser is cancelled.
 */
export class Plan {
  constructor(n, window) {
    this.n = n;
    this.window = Math.max(1, window);
    this.state = new Uint8Array(n);
    this.owners = new Map(); // index -> Set of source ids
    this.written = 0; // chunks 0..written-1 are written out
    this.have = 0;
  }

  get done() { return this.have === this.n; }

  next(source, sources) {
    if (source.inflight.size >= source.max) return -1;
    const hi = Math.min(this.n, this.written + this.window);
    let best = -1;
    let bestCount = Infinity;
    for (let i = this.written; i < hi; i++) {
      if (this.state[i] !== MISSING || !source.has(i)) continue;
      let count = 0;
      for (const s of sources) if (s.has(i)) count++;
      if (count < bestCount) { best = i; bestCount = count; }
    }
    if (best >= 0) return best;
    // Endgame: a second source for what is outstanding, fewest owners first.
    let dupOwners = Infinity;
    for (let i = this.written; i < hi; i++) {
      if (this.state[i] !== REQUESTED || !source.has(i) || source.inflight.has(i)) continue;
      const o = this.owners.get(i)?.size || 0;
      if (o < 2 && o < dupOwners) { best = i; dupOwners = o; }
    }
    return best;
  }

  assign(i, source) {
    this.state[i] = REQUESTED;
    if (!this.owners.has(i)) this.owners.set(i, new Set());
    this.owners.get(i).add(source.id);
    source.inflight.add(i);
  }

  /** `source` will not deliver `i` (error, cancel); back to the pool if nobody else has it out. */
  unassign(i, source) {
    source.inflight.delete(i);
    const o = this.owners.get(i);
    o?.delete(source.id);
    if (this.state[i] === REQUESTED && !o?.size) {
      this.state[i] = MISSING;
      this.owners.delete(i);
    }
  }

  /** A source is gone: everything it had out goes back to the pool at once. */
  release(source) {
    for (const i of [...source.inflight]) this.unassign(i, source);
  }

  /** Chunk `i` arrived verified from `source`; returns the other owners to cancel. */
  complete(i, source) {
    source.inflight.delete(i);
    if (this.state[i] === HAVE) return [];
    this.state[i] = HAVE;
    this.have++;
    const others = [...(this.owners.get(i) || [])].filter((id) => id !== source.id);
    this.owners.delete(i);
    return others;
  }

  isHave(i) { return this.state[i] === HAVE; }
}

// ---- The page: downloading and serving ----

/** Events a test reads (`lanvan.swarm.log`): sources opened, dropped, fallbacks. */
const log = [];
function record(entry) {
  log.push({ at: Date.now(), ...entry });
  if (log.length > 200) log.shift();
  console.info('swarm:', JSON.stringify(entry));
}

function randomId(prefix) {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return prefix + toHex(b);
}

/** Resolves with the channel once open; rejects when it closes first or after `ms`. */
function opened(dc, ms) {
  if (dc.readyState === 'open') return Promise.resolve(dc);
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('the data channel did not open in time')), ms);
    dc.addEventListener('open', () => { clearTimeout(t); res(dc); });
    dc.addEventListener('close', () => { clearTimeout(t); rej(new Error('the data channel closed')); });
  });
}

/** A download target that writes in order into a Blob (kept to serve the file later). */
function blobTarget(name) {
  let blob = new Blob([]);
  let parts = [];
  let held = 0;
  const fold = () => { blob = new Blob([blob, ...parts]); parts = []; held = 0; };
  return {
    write(bytes) {
      parts.push(bytes);
      held += bytes.length;
      if (held >= FOLD_BYTES) fold();
    },
    close() {
      fold();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name, class: 'offscreen' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 120000);
      return blob;
    },
    abort() { blob = null; parts = []; },
  };
}

/** A source of chunks: a `lanvan-chunks` channel (the box's or a page's), or HTTP ranges. */
class Source {
  constructor(dl, id, kind, label) {
    this.dl = dl;
    this.id = id;
    this.kind = kind; // box | page | http
    this.label = label;
    this.inflight = new Set();
    this.max = PER_SOURCE;
    this.bits = null; // null: nothing known yet; 'all'; or a bitfield
    this.got = 0; // chunks it delivered, verified
    this.alive = true;
    this.lastHeard = now();
  }

  has(i) {
    if (!this.alive || !this.bits) return false;
    return this.bits === 'all' || bitGet(this.bits, i) === 1;
  }

  ready() { return this.alive && this.bits !== null; }
}

class ChannelSource extends Source {
  constructor(dl, id, kind, label, dc, onClose) {
    super(dl, id, kind, label);
    this.dc = dc;
    this.onClose = onClose;
    this.asm = new Assembler(dl.m);
    dc.binaryType = 'arraybuffer';
    dc.onmessage = (e) => this.message(e.data);
    dc.onclose = () => dl.lost(this, 'the data channel closed');
    dc.onerror = () => dl.lost(this, 'the data channel failed');
    const me = dl.swarm.conn.me;
    this.say({ t: 'hello', id: me.id, name: me.name, role: 'browser', max_requests: SERVE_MAX });
    this.say({ t: 'query', manifest: dl.m.manifest });
  }

  say(msg) {
    if (this.dc.readyState !== 'open') return false;
    try { this.dc.send(JSON.stringify(msg)); return true; } catch { return false; }
  }

  request(i) { this.say({ t: 'request_chunk', manifest: this.dl.m.manifest, index: i, hash: this.dl.m.chunks[i] }); }

  cancel(i) { this.say({ t: 'cancel', manifest: this.dl.m.manifest, index: i }); }

  message(data) {
    this.lastHeard = now();
    const dl = this.dl;
    if (typeof data !== 'string') {
      const p = parsePiece(data);
      if (!p) { this.say({ t: 'error', code: 'bad_request', message: 'unknown binary message' }); return; }
      const r = this.asm.push(p, (i) => this.inflight.has(i) && !dl.plan.isHave(i));
      if (r?.error) return dl.bad(this, r.error);
      if (r?.chunk) dl.arrived(this, r.chunk);
      return;
    }
    let m;
    try { m = JSON.parse(data); } catch { return; }
    switch (m.t) {
      case 'hello':
        if (Number.isSafeInteger(m.max_requests) && m.max_requests > 0) this.max = Math.min(PER_SOURCE, m.max_requests);
        if (m.name) this.label = String(m.name).slice(0, 64);
        break;
      case 'have':
        if (m.manifest !== dl.m.manifest) break;
        try {
          if (m.all) this.bits = 'all';
          else if (typeof m.bitfield === 'string') this.bits = bitsFromBase64(m.bitfield, dl.m.chunks.length);
          else if (Number.isSafeInteger(m.index) && m.index < dl.m.chunks.length) {
            if (!this.bits) this.bits = new Uint8Array(Math.ceil(dl.m.chunks.length / 8));
            if (this.bits !== 'all') bitSet(this.bits, m.index);
          }
        } catch { break; }
        dl.changed(); // it serves now: the row's source count goes up
        dl.fill();
        break;
      case 'error':
        if (m.code === 'bad_data') return dl.lost(this, 'it dropped this page');
        if (Number.isSafeInteger(m.index) && this.inflight.has(m.index)) {
          // busy or not_found for one chunk: ask elsewhere, and ask this one less.
          if (m.code === 'busy') this.max = Math.max(1, this.inflight.size - 1);
          if (m.code === 'not_found' && this.bits && this.bits !== 'all') this.bits[m.index >> 3] &= ~(0x80 >> (m.index & 7));
          dl.plan.unassign(m.index, this);
          dl.fill();
        } else if (m.code === 'not_found') {
          dl.lost(this, 'it does not have this file');
        }
        break;
      case 'announce': case 'query': case 'get_manifest': case 'cancel': case 'request_chunk':
        // A downloader only downloads on this channel.
        this.say({ t: 'error', code: 'not_found', message: 'this page is downloading', manifest: m.manifest, index: m.index });
        break;
      default:
        this.say({ t: 'error', code: 'bad_request', message: `unknown message ${String(m.t).slice(0, 32)}` });
    }
  }

  close() {
    this.alive = false;
    const dc = this.dc;
    dc.onmessage = dc.onclose = dc.onerror = null;
    try { dc.close(); } catch { /* closed */ }
    this.onClose?.();
  }
}

/** The box over plain HTTP (Range requests): what a download falls back to without WebRTC. */
class HttpSource extends Source {
  constructor(dl) {
    super(dl, 'http', 'http', 'the box (HTTP)');
    this.bits = 'all';
    this.aborts = new Map();
  }

  request(i) {
    const dl = this.dl;
    const start = i * dl.m.chunk_size;
    const ac = new AbortController();
    this.aborts.set(i, ac);
    fetch(`/api/files/${encodeURIComponent(dl.name)}`, {
      headers: { range: `bytes=${start}-${start + chunkLength(dl.m, i) - 1}` }, signal: ac.signal,
    }).then(async (res) => {
      if (res.status !== 206) throw new Error(`HTTP ${res.status}`);
      const bytes = new Uint8Array(await res.arrayBuffer());
      this.aborts.delete(i);
      if (!this.alive || !this.inflight.has(i)) return;
      const ok = bytes.length === chunkLength(dl.m, i) && toHex(new Sha256().update(bytes).digest()) === dl.m.chunks[i];
      dl.arrived(this, { index: i, bytes, ok });
    }).catch((e) => {
      this.aborts.delete(i);
      if (this.alive && this.inflight.has(i)) dl.lost(this, `HTTP: ${e.message || e}`);
    });
  }

  cancel(i) { this.aborts.get(i)?.abort(); this.aborts.delete(i); }

  close() {
    this.alive = false;
    for (const ac of this.aborts.values()) ac.abort();
  }
}

/** One file being downloaded from several sources at once. */
class Download {
  constructor(swarm, name, manifest, ui) {
    this.swarm = swarm;
    this.name = name;
    this.m = manifest;
    this.ui = ui; // {set(state, text), progress(p), sources(n)}
    const n = manifest.chunks.length;
    this.plan = new Plan(n, Math.max(4, Math.floor(WINDOW_BYTES / manifest.chunk_size)));
    this.sources = new Map();
    this.ready = new Map(); // verified chunks not yet written: index -> bytes
    this.target = blobTarget(name);
    this.whole = new Sha256();
    this.state = 'running'; // running | done | failed
    this.meter = new Meter(manifest.size, (p) => this.ui.progress(p, this.serving()));
    this.dropped = []; // sources dropped for bad data
    this.startedAt = now();
    this.watch = setInterval(() => this.check(), 1000);
    this.finished = new Promise((res) => { this.resolve = res; });
  }

  /** Sources with a chunk channel that are serving (or may serve) this file. */
  serving() {
    let n = 0;
    for (const s of this.sources.values()) if (s.alive && s.bits !== null) n++;
    return n;
  }

  add(source) {
    if (this.state !== 'running') { source.close(); return; }
    this.sources.set(source.id, source);
    record({ event: 'source', manifest: this.m.manifest, source: source.id, kind: source.kind });
    this.changed();
    this.fill();
  }

  changed() {
    this.ui.sources(this.serving(), [...this.sources.values()].filter((s) => s.alive).map((s) => s.label));
  }

  fill() {
    if (this.state !== 'running') return;
    const live = [...this.sources.values()].filter((s) => s.ready());
    for (let more = true; more;) {
      more = false;
      for (const s of live) {
        const i = this.plan.next(s, live);
        if (i < 0) continue;
        this.plan.assign(i, s);
        s.lastHeard = Math.max(s.lastHeard, now() - 1);
        s.request(i);
        more = true;
      }
    }
    if (!this.sources.size || ![...this.sources.values()].some((s) => s.alive)) this.noSources();
  }

  arrived(source, { index, bytes, ok }) {
    if (this.state !== 'running') return;
    if (!ok) return this.bad(source, `chunk ${index} failed its SHA-256`);
    source.lastHeard = now();
    if (this.plan.isHave(index)) { source.inflight.delete(index); return; }
    source.got++;
    for (const id of this.plan.complete(index, source)) {
      const other = this.sources.get(id);
      if (!other) continue;
      other.inflight.delete(index);
      other.cancel(index);
    }
    this.ready.set(index, bytes);
    this.flush();
    if (source.kind !== 'http' && this.swarm.seeding) this.swarm.gained(this, index);
    this.fill();
  }

  flush() {
    const plan = this.plan;
    while (this.ready.has(plan.written)) {
      const bytes = this.ready.get(plan.written);
      this.ready.delete(plan.written);
      this.target.write(bytes);
      this.whole.update(bytes);
      plan.written++;
    }
    this.meter.update(Math.min(this.m.size, plan.written * this.m.chunk_size));
    if (plan.written === plan.n) this.finish();
  }

  /** A source sent damaged or malformed data: it is dropped and told why. */
  bad(source, why) {
    if (!source.alive) return;
    record({ event: 'bad_data', source: source.id, kind: source.kind, why });
    this.dropped.push({ id: source.id, label: source.label, why });
    toast(`${source.label} sent damaged data and was dropped; the download goes on without it.`, 'info');
    if (source.say) source.say({ t: 'error', code: 'bad_data', message: why, manifest: this.m.manifest });
    this.lost(source, `bad data: ${why}`, true);
  }

  lost(source, why, quiet = false) {
    if (!source.alive) return;
    source.alive = false;
    if (!quiet) record({ event: 'source_lost', source: source.id, kind: source.kind, why });
    this.plan.release(source);
    // Let a bad-data error go out before the channel closes.
    setTimeout(() => source.close(), 50);
    this.changed();
    if (this.state !== 'running') return;
    if (source.kind === 'box') this.toHttp(`WebRTC to the box failed (${why})`);
    this.fill();
  }

  /** The box's data channel failed: the box goes on serving this file over plain HTTP. */
  toHttp(why) {
    if (this.state !== 'running' || this.sources.has('http')) return;
    record({ event: 'fallback_http', why });
    this.ui.set('fallback', 'WebRTC failed · downloading over HTTP');
    this.add(new HttpSource(this));
  }

  noSources() {
    if (this.state === 'running' && !this.sources.has('http')) this.toHttp('no source left');
  }

  /** A source that owes chunks and stays silent is as good as gone. */
  check() {
    for (const s of this.sources.values()) {
      if (s.alive && s.kind !== 'http' && s.inflight.size && now() - s.lastHeard > STALL_MS) this.lost(s, 'it stopped sending');
    }
  }

  finish() {
    if (this.state !== 'running') return;
    clearInterval(this.watch);
    const sha = this.whole.hex();
    if (this.m.sha256 && sha !== this.m.sha256) return this.fail('the file arrived damaged');
    this.state = 'done';
    const counts = {};
    for (const s of this.sources.values()) counts[s.id] = (counts[s.id] || 0) + s.got;
    const used = Object.values(counts).filter((c) => c > 0).length;
    this.meter.update(this.m.size, true);
    const blob = this.target.close();
    this.result = {
      name: this.name, manifest: this.m.manifest, sha256: sha, chunks: this.plan.n, counts,
      kinds: Object.fromEntries([...this.sources.values()].map((s) => [s.id, s.kind])),
      dropped: this.dropped, ms: Math.round(now() - this.startedAt), used,
    };
    record({ event: 'done', ...this.result });
    this.ui.set('done', `Downloaded · ${formatBytes(this.m.size)} · from ${used} source${used === 1 ? '' : 's'}`);
    for (const s of this.sources.values()) if (s.alive) { s.alive = false; s.close(); }
    this.changed();
    this.swarm.hold(this.m, blob);
    this.resolve(this.result);
  }

  fail(why) {
    if (this.state !== 'running') return;
    clearInterval(this.watch);
    this.state = 'failed';
    this.target.abort();
    for (const s of this.sources.values()) if (s.alive) { s.alive = false; s.close(); }
    this.ui.set('error', `Download failed: ${why}`);
    record({ event: 'failed', why });
    this.resolve(null);
  }
}

/** Serves the files this page holds whole to one downloader on a chunk channel. */
class Serving {
  constructor(swarm, dc, peer, onClose) {
    this.swarm = swarm;
    this.dc = dc;
    this.peer = peer;
    this.onClose = onClose;
    this.queue = []; // {manifest, index}
    this.current = null;
    this.pumping = false;
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = LOW;
    dc.onmessage = (e) => this.message(e.data);
    dc.onclose = () => this.close();
    const hi = () => {
      const me = swarm.conn.me;
      this.say({ t: 'hello', id: me.id, name: me.name, role: 'browser', max_requests: SERVE_MAX });
      this.say({ t: 'announce', manifests: [...swarm.held.keys()] });
    };
    if (dc.readyState === 'open') hi(); else dc.addEventListener('open', hi);
  }

  say(msg) {
    if (this.dc.readyState !== 'open') return false;
    try { this.dc.send(JSON.stringify(msg)); return true; } catch { return false; }
  }

  message(data) {
    if (typeof data !== 'string') return this.say({ t: 'error', code: 'bad_request', message: 'this page is not downloading' });
    let m;
    try { m = JSON.parse(data); } catch { return; }
    const held = this.swarm.held.get(m.manifest);
    switch (m.t) {
      case 'hello': case 'announce': case 'have': break;
      case 'query':
        if (held) this.say({ t: 'have', manifest: m.manifest, all: true });
        else this.say({ t: 'error', code: 'not_found', message: 'not held here', manifest: m.manifest });
        break;
      case 'get_manifest':
        if (held) this.say({ t: 'manifest', ...held.m });
        else this.say({ t: 'error', code: 'not_found', message: 'not held here', manifest: m.manifest });
        break;
      case 'request_chunk': {
        const i = m.index;
        if (!held || !Number.isSafeInteger(i) || i < 0 || i >= held.m.chunks.length || held.m.chunks[i] !== m.hash) {
          this.say({ t: 'error', code: 'not_found', message: 'no such chunk here', manifest: m.manifest, index: i });
        } else if (this.queue.length + (this.current ? 1 : 0) >= SERVE_MAX) {
          this.say({ t: 'error', code: 'busy', message: `at most ${SERVE_MAX} requests`, manifest: m.manifest, index: i });
        } else {
          this.queue.push({ manifest: m.manifest, index: i });
          this.pump();
        }
        break;
      }
      case 'cancel':
        this.queue = this.queue.filter((r) => !(r.manifest === m.manifest && r.index === m.index));
        if (this.current && this.current.manifest === m.manifest && this.current.index === m.index) this.current.cancelled = true;
        break;
      case 'error':
        if (m.code === 'bad_data') {
          record({ event: 'dropped_by_peer', peer: this.peer, why: m.message });
          this.close();
        }
        break;
      default:
        this.say({ t: 'error', code: 'bad_request', message: `unknown message ${String(m.t).slice(0, 32)}` });
    }
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length && this.dc.readyState === 'open') {
        const req = this.current = this.queue.shift();
        const held = this.swarm.held.get(req.manifest);
        if (!held) { this.say({ t: 'error', code: 'not_found', message: 'no longer held', ...req }); continue; }
        const m = held.m;
        const start = req.index * m.chunk_size;
        const len = chunkLength(m, req.index);
        const bytes = new Uint8Array(await held.blob.slice(start, start + len).arrayBuffer());
        const digest = fromHex(m.chunks[req.index]);
        if (held.verify && (bytes.length !== len || toHex(new Sha256().update(bytes).digest()) !== m.chunks[req.index])) {
          // The picked file changed since it was uploaded: it is not served any more.
          this.swarm.held.delete(req.manifest);
          this.swarm.announce();
          this.say({ t: 'error', code: 'not_found', message: 'the file changed here', ...req });
          continue;
        }
        // The test hook: this page lies about what it serves.
        if (this.swarm.corrupt && bytes.length) bytes[bytes.length >> 1] ^= 0xff;
        for (let off = 0; off < len && !req.cancelled; off += PIECE) {
          if (this.dc.bufferedAmount > HIGH) await drained(this.dc);
          if (this.dc.readyState !== 'open') return;
          this.dc.send(encodePiece(req.index, off, len, digest, bytes.subarray(off, Math.min(len, off + PIECE))));
        }
        this.swarm.served++;
      }
    } catch (e) {
      console.warn('swarm: serving failed', e);
    } finally {
      this.current = null;
      this.pumping = false;
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    const dc = this.dc;
    dc.onmessage = dc.onclose = null;
    try { dc.close(); } catch { /* closed */ }
    this.swarm.servings.delete(this);
    this.onClose?.();
  }
}

/**
 * The page's swarm: downloads from the file list, the files it holds to serve, the box's
 * tracker (`announce`, `query`) and the box as a peer (`rtc_offer`).
 */
export class Swarm {
  constructor(conn, p2p) {
    this.conn = conn;
    this.p2p = p2p;
    this.held = new Map(); // manifest -> {m, blob}, newest last
    this.servings = new Set();
    this.downloads = new Map(); // file name -> {dl, row}
    this.queries = new Map(); // manifest -> [resolve]
    this.boxSessions = new Map(); // session -> {answer, fail}
    this.corrupt = false; // test hook: serve damaged chunks
    this.served = 0;
    this.last = null; // the last download's result (per-source counts) for tests
    this.log = log;
    this.seeding = false;
    this.active = null; // the download running (or the last one), for tests
    this.announced = 0; // manifests the box's tracker has from this page
    p2p.swarm = this;
    conn.on('announced', (m) => { this.announced = m.count; });
    conn.on('welcome', () => { this.announced = 0; });

    conn.on('query_result', (m) => {
      const waiting = this.queries.get(m.manifest) || [];
      this.queries.delete(m.manifest);
      waiting.forEach((w) => w(m));
    });
    conn.on('rtc_answer', (m) => this.boxSessions.get(m.session)?.answer(m.sdp));
    conn.on('rtc_closed', (m) => this.boxSessions.get(m.session)?.fail(`the box closed it (${m.reason})`));
    conn.on('error', (m) => {
      // The box refused an offer (no session named in errors): the ones still unanswered.
      if (m.ref_type === 'rtc_offer') {
        for (const s of this.boxSessions.values()) if (!s.answered) s.fail(`${m.code}: ${m.message || ''}`);
      }
      if (m.ref_type === 'query') for (const [k, ws] of this.queries) { this.queries.delete(k); ws.forEach((w) => w(null)); }
    });
    conn.on('p2p_enabled', () => this.announce());
    conn.on('file_added', (m) => this.uploaded(m.file));
    this.picks = []; // files this page picked to upload, newest last (at most MAX_HELD)
  }

  /** Whether downloads from the file list go through the swarm: the box is a peer. */
  usable() {
    return !!this.p2p.box?.box_peer && typeof RTCPeerConnection === 'function';
  }

  /** Whether this page holds `manifest` whole (and so accepts a swarm request for it). */
  serves(manifest) { return this.held.has(manifest); }

  /** Keeps a file this page holds whole, to serve; announced when P2P is on. */
  hold(m, blob, verify = false) {
    this.held.delete(m.manifest);
    this.held.set(m.manifest, { m, blob, verify });
    while (this.held.size > MAX_HELD) this.held.delete(this.held.keys().next().value);
    this.announce();
  }

  /** Files the user picked to upload: once stored, this page can serve them too. */
  picked(files) {
    for (const f of files) this.picks.push(f);
    this.picks.splice(0, Math.max(0, this.picks.length - MAX_HELD));
  }

  /**
   * A file stored on the box from this page: its manifest (the box's) is fetched and the
   * picked File held against it. The File is not trusted: each chunk is checked against the
   * manifest as it is served (it may have changed on disk since).
   */
  async uploaded(file) {
    if (!file || file.uploaded_by !== this.conn.me.name || !this.p2p.enabled || !this.usable()) return;
    const i = this.picks.findIndex((f) => f.size === file.size && file.name.startsWith(f.name.replace(/\.[^.]*$/, '')));
    if (i < 0) return;
    const [picked] = this.picks.splice(i, 1);
    try {
      const res = await fetch(`/api/files/${encodeURIComponent(file.name)}/manifest`);
      if (!res.ok) return;
      const m = checkManifest(await res.json());
      if (m.sha256 && file.sha256 && m.sha256 !== file.sha256) return;
      this.hold(m, picked, true);
    } catch (e) {
      console.warn('swarm: no manifest for an upload', e);
    }
  }

  announce() {
    if (!this.p2p.enabled || (!this.held.size && !this.announced)) return;
    this.conn.send({ type: 'announce', manifests: [...this.held.keys()] });
  }

  gained() { /* partial serving: not done; a page serves only files it holds whole */ }

  /** A swarm channel a downloader opened to this page (p2p.js hands it over). */
  serve(dc, link) {
    const s = new Serving(this, dc, link?.peer, () => { if (link?.purpose === 'swarm') link.close('served'); });
    this.servings.add(s);
    return s;
  }

  query(manifest) {
    return new Promise((res) => {
      if (!this.queries.has(manifest)) this.queries.set(manifest, []);
      this.queries.get(manifest).push(res);
      if (!this.conn.send({ type: 'query', manifest })) res(null);
      setTimeout(() => res(null), 5000);
    });
  }

  /** Opens a chunk channel to the box (SPEC §3): this page offers, the box answers. */
  async boxChannel() {
    const session = randomId('s');
    const t0 = now();
    const port = this.p2p.box.stun_port;
    const pc = new RTCPeerConnection({ iceServers: port ? [{ urls: `stun:${location.hostname}:${port}` }] : [] });
    const dc = pc.createDataChannel(LABEL, { ordered: true });
    const cleanup = () => this.boxSessions.delete(session);
    try {
      const answered = new Promise((res, rej) => {
        const entry = {
          answered: false,
          answer: (sdp) => { entry.answered = true; res(sdp); },
          fail: (why) => { rej(new Error(why)); try { pc.close(); } catch { /* closed */ } },
        };
        this.boxSessions.set(session, entry);
        setTimeout(() => rej(new Error('the box did not answer')), OPEN_MS);
      });
      pc.onicecandidate = (e) => {
        this.conn.send({ type: 'rtc_candidate', session, candidate: e.candidate ? e.candidate.toJSON() : null });
      };
      await pc.setLocalDescription(await pc.createOffer());
      if (!this.conn.send({ type: 'rtc_offer', session, sdp: pc.localDescription.sdp })) throw new Error('not connected to the box');
      const sdp = await answered;
      await pc.setRemoteDescription({ type: 'answer', sdp });
      await opened(dc, OPEN_MS);
      record({ event: 'box_channel', session, open_ms: Math.round(now() - t0) });
      return {
        dc, close: () => {
          cleanup();
          this.conn.send({ type: 'rtc_close', session });
          try { pc.close(); } catch { /* closed */ }
        },
      };
    } catch (e) {
      cleanup();
      try { pc.close(); } catch { /* closed */ }
      throw e;
    }
  }

  /**
   * Downloads file `f` (an entry of GET /api/files) from every source there is. `ui` is
   * `{set(state, text), progress(p, sources), sources(n, labels)}`. Resolves with the result
   * or null; throws when the swarm cannot even start (the caller downloads over HTTP).
   */
  async download(f, ui) {
    const res = await fetch(`/api/files/${encodeURIComponent(f.name)}/manifest`);
    if (!res.ok) throw new Error(`no manifest (HTTP ${res.status})`);
    const m = checkManifest(await res.json());
    const dl = new Download(this, f.name, m, ui);
    this.active = dl;
    ui.set('starting', 'Finding sources…');
    if (m.chunks.length === 0) {
      dl.finish();
      return dl.finished.then((r) => (this.last = r));
    }
    // The box's channel and the tracker's answer, at once.
    const boxing = this.boxChannel().then(({ dc, close }) => {
      dl.add(new ChannelSource(dl, 'box', 'box', 'the box', dc, close));
    }, (e) => {
      record({ event: 'box_channel_failed', why: e.message || String(e) });
      dl.toHttp(`WebRTC to the box failed (${e.message || e})`);
    });
    const found = this.p2p.enabled ? await this.query(m.manifest) : null;
    const peers = (found?.sources || []).filter((s) => s.device_id !== this.conn.me.id).slice(0, MAX_PAGE_SOURCES);
    for (const peer of peers) {
      this.p2p.swarmChannel(peer.device_id, m.manifest, OPEN_MS).then(({ dc, close }) => {
        dl.add(new ChannelSource(dl, `page:${peer.device_id}`, 'page', peer.name || 'a device', dc, close));
      }, (e) => record({ event: 'page_channel_failed', peer: peer.device_id, why: e.message || String(e) }));
    }
    await boxing;
    if (!dl.sources.has('http')) ui.set('moving', 'Downloading…');
    dl.fill();
    const r = await dl.finished;
    if (r) this.last = r;
    return r;
  }

  /** The file list's Download: through the swarm, or plain HTTP when that cannot start. */
  start(f, row) {
    const old = this.downloads.get(f.name);
    if (old && old.state !== 'done' && old.state !== 'error') return;
    const entry = this.downloads.get(f.name) || { name: f.name };
    entry.state = 'starting';
    entry.status ||= el('span', { class: 'swarm-status', role: 'status' });
    entry.bar ||= el('progress', { max: 1000, value: 0 });
    entry.box ||= el('div', { class: 'swarm' }, entry.bar, entry.status);
    entry.bar.value = 0;
    this.downloads.set(f.name, entry);
    row?.querySelector('.info')?.append(entry.box);
    let sources = 0;
    const setRow = (state, text) => {
      entry.state = state;
      entry.box.dataset.state = state;
      entry.status.textContent = text;
    };
    const ui = {
      set: setRow,
      sources: (n) => {
        sources = n;
        entry.box.dataset.sources = String(n);
      },
      progress: (p) => {
        entry.bar.value = Math.round((p.bytes / Math.max(1, p.total)) * 1000);
        if (entry.state === 'done' || entry.state === 'error') return;
        const pct = Math.floor((p.bytes / Math.max(1, p.total)) * 100);
        const speed = p.speed ? ` · ${formatBytes(p.speed)}/s` : '';
        const left = p.eta != null ? ` · ${formatDuration(p.eta)} left` : '';
        const lead = entry.state === 'fallback' ? 'Over HTTP' : 'Downloading';
        setRow(entry.state === 'fallback' ? 'fallback' : 'moving',
          `${lead} · ${pct}% of ${formatBytes(p.total)}${speed}${left} · ${sources} source${sources === 1 ? '' : 's'}`);
      },
    };
    this.download(f, ui).catch((e) => {
      // The swarm could not start: the plain download, at once, and say so.
      record({ event: 'fallback_plain', why: e.message || String(e) });
      setRow('fallback', 'Multi-source download unavailable · downloading over HTTP');
      plainDownload(f.name);
      setTimeout(() => { if (entry.state === 'fallback') { entry.box.remove(); this.downloads.delete(f.name); } }, 8000);
    });
  }

  /** The row of a file in progress, re-attached when the file list redraws. */
  rowPart(name) { return this.downloads.get(name)?.box || null; }
}

export function plainDownload(name) {
  const a = el('a', { href: `/api/files/${encodeURIComponent(name)}`, download: name, class: 'offscreen' });
  document.body.append(a);
  a.click();
  a.remove();
}
