// Multi-source download against single-source, in one run (run by benches/rtc.sh inside its
// own network namespace): a release box and headless Chromium pages; the app's Download
// (web/swarm.js) from the box alone, from the box and another page at once, and plain HTTP
// as a reference. Prints a Markdown table on stdout; never leaves the namespace.

import { readFileSync } from 'node:fs';
import { startBox, launch, openApp, fillRandom, sha256 } from '../tests/browser/harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run through benches/rtc.sh (it needs its own network namespace)');
if (!process.env.LANVAN_BIN) throw new Error('LANVAN_BIN (the release box) is not set');
const SIZE = Number(process.env.BENCH_SWARM_MIB || 64) * MiB;
const REPS = Number(process.env.BENCH_RTC_REPS || 3);
const say = (s) => console.error(`[swarm-bench ${new Date().toISOString().slice(11, 19)}] ${s}`);

const browser = await launch();
const box = await startBox({ host: ADDR, settings: ['p2p.stun_port=0'] });
const origin = `http://${ADDR}:${box.port}`;

/** Stores SIZE pseudo-random bytes on the box as `name`, the way the app uploads. */
async function store(name, seed) {
  const data = fillRandom(new Uint8Array(SIZE), seed);
  const hash = sha256(data);
  let r = await fetch(`${box.url}/api/uploads`, {
    method: 'POST', body: JSON.stringify({ name, size: SIZE, sha256: hash, device_id: 'swarm-bench' }),
  });
  const st = await r.json();
  if (r.status !== 201 && r.status !== 200) throw new Error(`create ${name}: ${r.status} ${JSON.stringify(st)}`);
  for (let i = 0; !st.complete && i < st.chunks; i++) {
    const chunk = data.subarray(i * st.chunk_size, (i + 1) * st.chunk_size);
    r = await fetch(`${box.url}/api/uploads/${st.id}/chunks/${i}`, {
      method: 'PUT', body: chunk, headers: { 'x-chunk-sha256': sha256(chunk) },
    });
    if (r.status !== 200) throw new Error(`chunk ${i}: ${r.status}`);
  }
  if (!st.complete) {
    r = await fetch(`${box.url}/api/uploads/${st.id}/finish`, { method: 'POST' });
    if (r.status !== 201) throw new Error(`finish: ${r.status}`);
  }
  // The manifest is computed on first request: outside the measurement.
  await fetch(`${box.url}/api/files/${encodeURIComponent(name)}/manifest`);
  return { name, sha256: hash, chunks: Math.ceil(SIZE / 262144) };
}

/** A device (fresh context) with P2P on, as a user would set it. */
async function device() {
  const d = await openApp(browser, box, { origin });
  d.id = await d.page.evaluate(() => window.lanvan.me.id);
  await d.page.locator('#p2p-card:not([hidden])').waitFor({ timeout: 10000 });
  await d.page.selectOption('#p2p-mode', 'p2p');
  await d.page.waitForFunction(() => window.lanvan.p2p.enabled, null, { timeout: 10000 });
  if (!(await d.page.evaluate(() => window.lanvan.p2p.box.box_peer))) throw new Error('the box is not a WebRTC peer');
  return d;
}

/**
 * Clicks the file's Download (web/swarm.js) or, with `http`, follows a plain link to
 * /api/files/NAME; ms from the click until the saved file is complete, its SHA-256 checked.
 */
async function download(d, file, http = false) {
  const row = d.page.locator(`#files li.file[data-name="${file.name}"]`);
  await row.waitFor({ timeout: 10000 });
  const t0 = performance.now();
  const [saved] = await Promise.all([
    d.page.waitForEvent('download', { timeout: 300000 }),
    http
      ? d.page.evaluate((n) => {
        const a = document.createElement('a');
        a.href = `/api/files/${encodeURIComponent(n)}`; a.download = n;
        document.body.append(a); a.click(); a.remove();
      }, file.name)
      : row.locator('a.btn', { hasText: 'Download' }).click(),
  ]);
  const path = await saved.path();
  const ms = performance.now() - t0;
  const hash = sha256(readFileSync(path));
  if (hash !== file.sha256) throw new Error(`${file.name}: saved SHA-256 ${hash}, want ${file.sha256}`);
  const result = http ? null : await d.page.evaluate(() => window.lanvan.swarm.last);
  return { ms, mbs: SIZE / 1e6 / (ms / 1000), result };
}

const runs = { single: [], multi: [], http: [] };
let seq = 0;
for (let i = 0; i < REPS; i++) {
  // Two fresh files per round: S for the single-source download (no page holds it), M for
  // the multi-source one, which page B downloads (untimed) and announces first.
  const S = await store(`bench single ${i}.bin`, 7000 + i);
  const M = await store(`bench multi ${i}.bin`, 8000 + i);
  const H = await store(`bench http ${i}.bin`, 9000 + i);
  const b = await device();
  const seed = await download(b, M);
  if (seed.result.counts.box !== M.chunks) throw new Error(`B's download was not from the box alone: ${JSON.stringify(seed.result.counts)}`);
  await b.page.waitForFunction(() => window.lanvan.swarm.announced >= 1, null, { timeout: 10000 });
  // Alternate which goes first, so neither always gets the warmer machine.
  const order = i % 2 ? ['multi', 'single', 'http'] : ['single', 'multi', 'http'];
  for (const kind of order) {
    const a = await device();
    const file = kind === 'single' ? S : kind === 'multi' ? M : H;
    const r = await download(a, file, kind === 'http');
    seq += 1;
    if (kind !== 'http') {
      const c = r.result.counts;
      r.box = c.box || 0;
      r.page = c[`page:${b.id}`] || 0;
      r.httpChunks = c.http || 0;
      if (r.box + r.page !== file.chunks) throw new Error(`${kind}: not every chunk over WebRTC: ${JSON.stringify(c)}`);
      if (kind === 'single' && r.page) throw new Error(`single: page B sent chunks of a file it never had: ${JSON.stringify(c)}`);
      if (kind === 'multi' && !r.page) throw new Error(`multi: page B sent nothing: ${JSON.stringify(c)}`);
    }
    runs[kind].push(r);
    say(`round ${i + 1} ${kind}: ${r.mbs.toFixed(1)} MB/s (${Math.round(r.ms)} ms)${r.result ? `, box ${r.box} chunks, page B ${r.page}, in-page ${r.result.ms} ms` : ''}`);
    await a.context.close();
  }
  await b.context.close();
  // Free the box's disk for the next round.
  for (const f of [S, M, H]) await fetch(`${box.url}/api/files/${encodeURIComponent(f.name)}`, { method: 'DELETE' });
}

const med = (xs) => { const v = [...xs].sort((x, y) => x - y); return v[Math.floor(v.length / 2)]; };
const m = (k) => med(runs[k].map((r) => r.mbs));
const all = (k) => runs[k].map((r) => r.mbs.toFixed(1)).join(', ');
const chunks = (k) => runs[k].map((r) => `${r.box}/${r.page}`).join(', ');
console.log(`\nMulti-source against single-source: release box, Chromium pages, a ${SIZE / MiB} MiB stored file (${SIZE / 262144} chunks of 256 KiB), ${REPS} rounds alternating (median; every round in brackets), MB/s from the click to the complete saved file\n`);
console.log('| download | MB/s | chunks box / page B |');
console.log('|---|---|---|');
console.log(`| single source: box only (web/swarm.js) | ${m('single').toFixed(1)} (${all('single')}) | ${chunks('single')} |`);
console.log(`| multi-source: box + page B (web/swarm.js) | ${m('multi').toFixed(1)} (${all('multi')}) | ${chunks('multi')} |`);
console.log(`| plain HTTP GET /api/files/NAME (reference) | ${m('http').toFixed(1)} (${all('http')}) | |`);
console.log('');
console.log(`multi / single (medians): ${(m('multi') / m('single')).toFixed(2)}; single / HTTP: ${(m('single') / m('http')).toFixed(2)}; multi / HTTP: ${(m('multi') / m('http')).toFixed(2)}`);
await browser.close();
await box.stop();
