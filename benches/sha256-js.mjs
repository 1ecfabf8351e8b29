// The browser app's JavaScript SHA-256 (web/sha256.js) against Node's OpenSSL SHA-256 on
// the same bytes in the same run: MB/s each and the ratio. Run: node benches/sha256-js.mjs
// (V8 is the engine Chromium uses, so the JS figure is close to the app's on this CPU.)

import { createHash } from 'node:crypto';
import { Sha256 } from '../web/sha256.js';

const MiB = 1 << 20;
const size = 256 * MiB;
const data = new Uint8Array(size);
for (let i = 0; i < size; i += 4096) data[i] = i * 31;

function time(label, fn) {
  fn(data.subarray(0, 8 * MiB)); // warm up the JIT
  const runs = [];
  for (let r = 0; r < 3; r++) {
    const t = performance.now();
    fn(data);
    runs.push((performance.now() - t) / 1000);
  }
  const best = Math.min(...runs);
  const mbs = size / 1e6 / best;
  console.log(`${label.padEnd(28)} ${mbs.toFixed(0).padStart(6)} MB/s  (best of 3, 256 MiB in 1 MiB updates)`);
  return mbs;
}

const js = time('web/sha256.js', (d) => {
  const h = new Sha256();
  for (let o = 0; o < d.length; o += MiB) h.update(d.subarray(o, o + MiB));
  return h.hex();
});
const native = time('node:crypto (OpenSSL)', (d) => {
  const h = createHash('sha256');
  for (let o = 0; o < d.length; o += MiB) h.update(d.subarray(o, o + MiB));
  return h.digest('hex');
});
console.log(`ratio JS / native: ${(js / native).toFixed(3)}`);
