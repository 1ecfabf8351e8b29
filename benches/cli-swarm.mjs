// `lanvan get` from several sources against the box alone, in one run (run by
// `BENCH_RTC_ONLY=cli bash benches/rtc.sh` inside its own network namespace): a release box
// and release CLI, a Chromium page B that holds the file; the CLI downloads a file B does not
// hold (box alone), one it holds (box + B), and the same over HTTP (`--http`) as a
// reference, alternating. Prints a Markdown table on stdout; never leaves the namespace.

import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { startBox, launch, openApp, storeFile, sha256, runCli } from '../tests/browser/harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run through benches/rtc.sh (it needs its own network namespace)');
if (!process.env.LANVAN_BIN) throw new Error('LANVAN_BIN (the release binary) is not set');
const SIZE = Number(process.env.BENCH_SWARM_MIB || 64) * MiB;
const REPS = Number(process.env.BENCH_RTC_REPS || 3);
const say = (s) => console.error(`[cli-swarm-bench ${new Date().toISOString().slice(11, 19)}] ${s}`);

const browser = await launch();
const box = await startBox({ host: ADDR, settings: ['p2p.stun_port=0'] });
const origin = `http://${ADDR}:${box.port}`;
const state = mkdtempSync(join(tmpdir(), 'lanvan-cli-bench-state-'));
const out = mkdtempSync(join(tmpdir(), 'lanvan-cli-bench-out-'));

/** Page B: P2P on; downloads `file` (untimed) so it holds and announces it. */
async function holder(file) {
  const d = await openApp(browser, box, { origin });
  await d.page.locator('#p2p-card:not([hidden])').waitFor({ timeout: 10000 });
  await d.page.selectOption('#p2p-mode', 'p2p');
  await d.page.waitForFunction(() => window.lanvan.p2p.enabled, null, { timeout: 10000 });
  const row = d.page.locator(`#files li.file[data-name="${file.name}"]`);
  await row.waitFor({ timeout: 10000 });
  const [saved] = await Promise.all([
    d.page.waitForEvent('download', { timeout: 300000 }),
    row.locator('a.btn', { hasText: 'Download' }).click(),
  ]);
  if (sha256(readFileSync(await saved.path())) !== file.sha256) throw new Error('page B saved a damaged file');
  await d.page.waitForFunction(() => window.lanvan.swarm.announced >= 1, null, { timeout: 10000 });
  return d;
}

/** `lanvan get` (with `--http` if asked): wall ms, MB/s, and the final line's counts. */
async function get(file, http) {
  const path = join(out, 'got.bin');
  rmSync(path, { force: true });
  const t0 = performance.now();
  const r = await runCli(['get', file.name, '-o', path, ...(http ? ['--http'] : [])], { box: origin, state, timeout: 300000 }).done;
  const ms = performance.now() - t0;
  if (r.code !== 0) throw new Error(`lanvan get failed:\n${r.stderr}`);
  if (sha256(readFileSync(path)) !== file.sha256) throw new Error('lanvan get saved a damaged file');
  const m = /chunks over (?:a data channel|data channels) from \d+ sources? \((.*)\)/.exec(r.stderr);
  let box = 0;
  let page = 0;
  if (m) {
    if (m[1] === 'the box') box = file.chunks;
    for (const part of m[1].split(', ')) {
      const [who, n] = part.split(': ');
      if (n && who === 'the box') box = Number(n);
      else if (n) page = Number(n);
    }
  }
  if (!http && box + page !== file.chunks) throw new Error(`not every chunk over WebRTC:\n${r.stderr}`);
  return { ms, mbs: SIZE / 1e6 / (ms / 1000), box, page };
}

const runs = { single: [], multi: [], http: [] };
for (let i = 0; i < REPS; i++) {
  const S = await storeFile(box, `cli bench single ${i}.bin`, SIZE, 7100 + i);
  const M = await storeFile(box, `cli bench multi ${i}.bin`, SIZE, 8100 + i);
  const b = await holder(M);
  const order = i % 2 ? ['multi', 'single', 'http'] : ['single', 'multi', 'http'];
  for (const kind of order) {
    const r = await get(kind === 'multi' ? M : S, kind === 'http');
    if (kind === 'multi' && !r.page) throw new Error('multi: page B sent nothing');
    runs[kind].push(r);
    say(`round ${i + 1} ${kind}: ${r.mbs.toFixed(1)} MB/s (${Math.round(r.ms)} ms), box ${r.box} chunks, page B ${r.page}`);
  }
  await b.context.close();
  for (const f of [S, M]) await fetch(`${box.url}/api/files/${encodeURIComponent(f.name)}`, { method: 'DELETE' });
}

const med = (xs) => { const v = [...xs].sort((x, y) => x - y); return v[Math.floor(v.length / 2)]; };
const m = (k) => med(runs[k].map((r) => r.mbs));
const all = (k) => runs[k].map((r) => r.mbs.toFixed(1)).join(', ');
const chunks = (k) => runs[k].map((r) => `${r.box}/${r.page}`).join(', ');
console.log(`\n\`lanvan get\` multi-source against single-source: release box and CLI, Chromium page B, a ${SIZE / MiB} MiB stored file, ${REPS} rounds alternating (median; every round in brackets), MB/s of the whole command (start to saved and checked)\n`);
console.log('| lanvan get | MB/s | chunks box / page B |');
console.log('|---|---|---|');
console.log(`| box only | ${m('single').toFixed(1)} (${all('single')}) | ${chunks('single')} |`);
console.log(`| box + page B | ${m('multi').toFixed(1)} (${all('multi')}) | ${chunks('multi')} |`);
console.log(`| \`--http\` (reference) | ${m('http').toFixed(1)} (${all('http')}) | |`);
console.log('');
console.log(`box + page B / box only (medians): ${(m('multi') / m('single')).toFixed(2)}; box only / HTTP: ${(m('single') / m('http')).toFixed(2)}`);
await browser.close();
await box.stop();
rmSync(state, { recursive: true, force: true });
rmSync(out, { recursive: true, force: true });
