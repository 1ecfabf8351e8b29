// The pure parts of the page's multi-source downloads (web/swarm.js), in Node: the manifest
// hash against an independent computation with Node's crypto, bitfields, chunk pieces, the
// assembler that checks each chunk, and the plan (rarest first, bounded window, endgame,
// reassignment when a source vanishes), including a simulated download from flaky sources.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  manifestHash, checkManifest, bitsFromBase64, bitsToBase64, bitGet, bitSet,
  encodePiece, parsePiece, Assembler, Plan, fromHex,
} from '../../web/swarm.js';
import { fillRandom } from './harness.mjs';

const sha = (b) => createHash('sha256').update(b).digest('hex');

/** A manifest made the way SPEC8 §1 says, with Node's own SHA-256. */
function manifestOf(data, chunkSize) {
  const chunks = [];
  for (let o = 0; o < data.length; o += chunkSize) chunks.push(sha(data.subarray(o, o + chunkSize)));
  const h = createHash('sha256').update('lanvan-manifest-v1');
  const head = Buffer.alloc(12);
  head.writeBigUInt64BE(BigInt(data.length), 0);
  head.writeUInt32BE(chunkSize, 8);
  h.update(head);
  for (const c of chunks) h.update(Buffer.from(c, 'hex'));
  return { manifest: h.digest('hex'), name: 'x.bin', size: data.length, chunk_size: chunkSize, sha256: sha(data), chunks };
}

test('manifest hash: the same as computed independently; tampering is refused', () => {
  const data = fillRandom(new Uint8Array(1000003), 7);
  const m = manifestOf(data, 262144);
  assert.equal(m.chunks.length, 4);
  assert.equal(manifestHash(m.size, m.chunk_size, m.chunks), m.manifest);
  assert.equal(checkManifest(m).manifest, m.manifest);
  assert.equal(checkManifest(m, m.manifest).chunks.length, 4);
  const empty = manifestOf(new Uint8Array(0), 262144);
  assert.deepEqual(checkManifest(empty).chunks, []);
  // Sizes past 4 GiB keep their high word.
  const big = { size: 5 * 2 ** 32 + 7, chunk_size: 2 ** 22 };
  const hb = createHash('sha256').update('lanvan-manifest-v1');
  const head = Buffer.alloc(12);
  head.writeBigUInt64BE(BigInt(big.size), 0);
  head.writeUInt32BE(big.chunk_size, 8);
  assert.equal(manifestHash(big.size, big.chunk_size, []), hb.update(head).digest('hex'));

  const bad = (change, msg) => assert.throws(() => checkManifest({ ...m, ...change }), msg);
  bad({ chunks: [...m.chunks.slice(0, 3), m.chunks[0]] }, /hash does not match/);
  bad({ size: m.size + 1 }, /hash does not match/);
  bad({ chunks: m.chunks.slice(0, 3) }, /chunk count/);
  bad({ chunk_size: 0 }, /chunk size/);
  bad({ chunk_size: 64 << 20 }, /chunk size/);
  bad({ size: -1 }, /size/);
  bad({ chunks: ['zz', ...m.chunks.slice(1)] }, /chunk hash/);
  bad({ manifest: 'f'.repeat(64) }, /hash does not match/);
  assert.throws(() => checkManifest(m, 'a'.repeat(64)), /not the manifest asked for/);
  assert.throws(() => checkManifest(null), /no manifest/);
});

test('bitfields: bit i is chunk i, most significant bit of byte 0 first, base64 both ways', () => {
  const bits = new Uint8Array(2);
  bitSet(bits, 0);
  bitSet(bits, 9);
  assert.deepEqual([...bits], [0x80, 0x40]);
  const b64 = bitsToBase64(bits);
  assert.equal(b64, Buffer.from([0x80, 0x40]).toString('base64'));
  const back = bitsFromBase64(b64, 10);
  assert.equal(bitGet(back, 0), 1);
  assert.equal(bitGet(back, 1), 0);
  assert.equal(bitGet(back, 9), 1);
  assert.throws(() => bitsFromBase64(Buffer.from([1]).toString('base64'), 10), /too short/);
});

test('chunk pieces: the SPEC layout, and what is not a piece', () => {
  const digest = fromHex(sha(Buffer.from('abc')));
  const f = encodePiece(3, 65536, 200000, digest, new Uint8Array([9, 8, 7]));
  const b = Buffer.from(f);
  assert.equal(b[0], 1);
  assert.deepEqual([...b.subarray(1, 4)], [0, 0, 0]);
  assert.equal(b.readUInt32BE(4), 3);
  assert.equal(b.readUInt32BE(8), 65536);
  assert.equal(b.readUInt32BE(12), 200000);
  assert.equal(b.subarray(16, 48).toString('hex'), sha(Buffer.from('abc')));
  assert.deepEqual([...b.subarray(48)], [9, 8, 7]);
  const p = parsePiece(f.buffer);
  assert.equal(p.index, 3);
  assert.equal(p.offset, 65536);
  assert.equal(p.length, 200000);
  assert.deepEqual([...p.payload], [9, 8, 7]);
  f[0] = 2;
  assert.equal(parsePiece(f.buffer), null);
  assert.equal(parsePiece(new ArrayBuffer(47)), null);
});

/** The pieces of chunk `i` of `data` as a source sends them. */
function pieces(data, m, i, corrupt = false) {
  const start = i * m.chunk_size;
  const bytes = Uint8Array.from(data.subarray(start, Math.min(data.length, start + m.chunk_size)));
  if (corrupt) bytes[5] ^= 1;
  const out = [];
  for (let o = 0; o < bytes.length; o += 65536) {
    out.push(parsePiece(encodePiece(i, o, bytes.length, fromHex(m.chunks[i]), bytes.subarray(o, o + 65536)).buffer));
  }
  return out;
}

test('assembler: whole chunks checked against the manifest; damage, disorder and unwanted chunks', () => {
  const data = fillRandom(new Uint8Array(600000), 11);
  const m = checkManifest(manifestOf(data, 262144));
  const asm = new Assembler(m);
  const all = () => true;
  let r;
  for (const p of pieces(data, m, 1)) r = asm.push(p, all);
  assert.equal(r.chunk.index, 1);
  assert.equal(r.chunk.ok, true);
  assert.equal(sha(r.chunk.bytes), m.chunks[1]);
  // The short last chunk.
  for (const p of pieces(data, m, 2)) r = asm.push(p, all);
  assert.equal(r.chunk.bytes.length, 600000 - 2 * 262144);
  assert.equal(r.chunk.ok, true);
  // A damaged chunk is whole but not ok.
  for (const p of pieces(data, m, 0, true)) r = asm.push(p, all);
  assert.equal(r.chunk.ok, false);
  // A chunk not wanted (cancelled, or already here) is skipped without being buffered.
  for (const p of pieces(data, m, 0)) r = asm.push(p, () => false);
  assert.equal(r, null);
  // Given up half-way (cancel), the next chunk starts cleanly.
  const half = pieces(data, m, 0);
  asm.push(half[0], all);
  for (const p of pieces(data, m, 1)) r = asm.push(p, all);
  assert.equal(r.chunk.ok, true);
  // Out of order, past the end, a wrong length, no such chunk: framing errors.
  assert.match(asm.push(half[1], all).error, /out of order/);
  assert.match(asm.push({ ...half[0], index: 9 }, all).error, /no chunk 9/);
  assert.match(asm.push({ ...half[0], length: 5 }, all).error, /has 262144 bytes/);
});

const src = (id, has = () => true, max = 4) => ({ id, has, inflight: new Set(), max });

test('plan: rarest first, ties by index, per-source limits and the window', () => {
  const plan = new Plan(8, 8);
  const a = src('a');
  const b = src('b', (i) => i < 4);
  const both = [a, b];
  // Chunks 4-7 only a has: they are the rarest, so a takes them first.
  assert.equal(plan.next(a, both), 4);
  plan.assign(4, a);
  assert.equal(plan.next(b, both), 0);
  plan.assign(0, b);
  assert.equal(plan.next(a, both), 5);
  // A source at its limit gets nothing more.
  const one = src('c', () => true, 1);
  plan.assign(1, one);
  assert.equal(plan.next(one, [one]), -1);

  const windowed = new Plan(100, 4);
  const s = src('s', () => true, 10);
  const got = [];
  for (let i; (i = windowed.next(s, [s])) >= 0 && got.length < 10;) {
    if (s.inflight.has(i)) break;
    windowed.assign(i, s);
    got.push(i);
  }
  assert.deepEqual(got, [0, 1, 2, 3], 'never past the window of chunks not yet written');
});

test('plan: endgame duplicates, the loser is cancelled, and a vanished source gives its chunks back', () => {
  const plan = new Plan(3, 8);
  const a = src('a');
  const b = src('b');
  for (let i = 0; i < 3; i++) plan.assign(i, a);
  // Everything is out with a: b asks for the same chunks (one duplicate each at most).
  const i = plan.next(b, [a, b]);
  assert.equal(i, 0);
  plan.assign(0, b);
  assert.equal(plan.next(b, [a, b]), 1);
  assert.deepEqual(plan.complete(0, b), ['a'], 'a is told to cancel chunk 0');
  assert.equal(plan.complete(0, a).length, 0, 'a late duplicate changes nothing');
  assert.equal(plan.have, 1);
  // a vanishes: chunks 1 and 2 are free again and b takes them.
  a.inflight.delete(0);
  plan.release(a);
  const taken = [];
  for (let j; (j = plan.next(b, [b])) >= 0 && !b.inflight.has(j);) { plan.assign(j, b); taken.push(j); }
  assert.deepEqual(taken, [1, 2]);
  plan.complete(1, b);
  plan.complete(2, b);
  assert.equal(plan.done, true);
});

test('plan: a simulated download from three sources, one vanishing and one lying, ends with every chunk once', () => {
  const n = 200;
  const plan = new Plan(n, 24);
  let seed = 5;
  const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
  const sources = [src('box'), src('page', (i) => i % 3 !== 0), src('liar')];
  const alive = new Set(sources);
  const pending = []; // [source, index, deliverAtTick]
  const written = [];
  let tick = 0;
  while (!plan.done && tick < 100000) {
    tick++;
    const live = [...alive];
    for (const s of live) {
      for (let i; (i = plan.next(s, live)) >= 0;) {
        plan.assign(i, s);
        pending.push([s, i, tick + 1 + Math.floor(rnd() * (s.id === 'box' ? 3 : 6))]);
      }
    }
    for (let k = pending.length - 1; k >= 0; k--) {
      const [s, i, at] = pending[k];
      if (at > tick) continue;
      pending.splice(k, 1);
      if (!alive.has(s) || !s.inflight.has(i)) continue;
      if (s.id === 'liar' && plan.have > 20) {
        // Bad data: dropped, its chunks go back to the pool.
        alive.delete(s);
        plan.release(s);
        continue;
      }
      for (const other of plan.complete(i, s)) sources.find((x) => x.id === other).inflight.delete(i);
      while (plan.isHave(plan.written) && plan.written < n) written.push(plan.written++);
    }
    if (tick === 40) { const p = sources[1]; alive.delete(p); plan.release(p); }
  }
  assert.equal(plan.done, true);
  assert.deepEqual(written, [...Array(n).keys()]);
});
