// The P2P benchmark's browser part (run by benches/p2p.sh inside its network namespace):
// setup time, data-channel MB/s against the relay's MB/s in the same run, fallback time.
// Prints a Markdown table on stdout.

import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import {
  startBox, launch, openApp, makeFile, sha256, tempDir,
} from '../tests/browser/harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run through benches/p2p.sh (it needs its own network namespace)');
const SIZE = Number(process.env.BENCH_P2P_MIB || 200) * MiB;
const REPS = Number(process.env.BENCH_P2P_REPS || 3);
const STUN = 3478;

const browser = await launch();
const box = await startBox({ host: ADDR, settings: [`p2p.stun_port=${STUN}`] });
const origin = `http://${ADDR}:${box.port}`;
const dir = tempDir('p2p-bench');
const file = makeFile(dir, 'bench.bin', SIZE, 1234);
const nft = (args, mayFail) => { try { execFileSync('nft', args, { stdio: 'pipe' }); } catch (e) { if (!mayFail) throw e; } };

async function pair() {
  const a = await openApp(browser, box, { origin });
  const b = await openApp(browser, box, { origin });
  const idB = await b.page.evaluate(() => window.lanvan.me.id);
  const idA = await a.page.evaluate(() => window.lanvan.me.id);
  for (const { page } of [a, b]) {
    await page.locator('#p2p-card:not([hidden])').waitFor();
    await page.selectOption('#p2p-mode', 'p2p');
  }
  await a.page.locator(`button[data-p2p-connect="${idB}"]`).waitFor();
  await b.page.locator(`button[data-p2p-connect="${idA}"]`).waitFor();
  await b.page.evaluate(() => { window.lanvan.p2p.requested = function (m) { this.conn.send({ type: 'p2p_accept', from: m.from, to: this.me }); }; });
  await a.page.click(`button[data-p2p-connect="${idB}"]`);
  await a.page.locator('#p2p-status[data-state="connected"]').waitFor({ timeout: 30000 });
  const setup = (await a.page.evaluate(() => window.lanvan.p2p.log)).find((e) => e.event === 'connected').setup_ms;
  return { a, b, idB, setup };
}

/** Sends the file A -> B; resolves to seconds from B's accept to the finished download. */
async function send({ a, b, idB }, during) {
  const [chooser] = await Promise.all([a.page.waitForEvent('filechooser'), a.page.click(`button[data-send="${idB}"]`)]);
  await chooser.setFiles(file.path);
  await b.page.locator('#offer[open]').waitFor({ timeout: 30000 });
  const t0 = performance.now();
  const [download] = await Promise.all([
    b.page.waitForEvent('download', { timeout: 600000 }),
    b.page.click('#offer [data-answer="accept"]'),
    during ? during() : null,
  ]);
  const secs = (performance.now() - t0) / 1000;
  const path = await download.path();
  if (sha256(readFileSync(path)) !== file.sha256) throw new Error('SHA-256 mismatch');
  await download.delete();
  return secs;
}

const rows = [];
for (let i = 0; i < REPS; i++) {
  const p = await pair();
  const p2pSecs = await send(p);
  // The reference: the same file between the same pages through the box's relay.
  await p.a.page.selectOption('#p2p-mode', 'server');
  const relaySecs = await send(p);
  await p.a.page.selectOption('#p2p-mode', 'p2p');
  await p.a.context.close();
  await p.b.context.close();

  // Fallback: cut UDP between the pages (not the box's STUN) at 30 %.
  const q = await pair();
  await send(q, async () => {
    await q.b.page.waitForFunction(() => {
      const bar = document.querySelector('#transfers li[data-dir="in"] progress');
      return bar && bar.value >= 300;
    }, null, { polling: 10, timeout: 120000 });
    nft(['add', 'table', 'inet', 'lanvan_p2p_bench']);
    nft(['add', 'chain', 'inet', 'lanvan_p2p_bench', 'out', '{ type filter hook output priority 0 ; }']);
    nft(['add', 'rule', 'inet', 'lanvan_p2p_bench', 'out', 'meta', 'l4proto', 'udp',
      'udp', 'sport', '!=', String(STUN), 'udp', 'dport', '!=', String(STUN), 'drop']);
  });
  nft(['delete', 'table', 'inet', 'lanvan_p2p_bench'], true);
  const fb = (await q.a.page.evaluate(() => window.lanvan.p2p.log)).find((e) => e.event === 'fallback');
  await q.a.context.close();
  await q.b.context.close();
  const row = {
    setup_ms: p.setup, p2p_mbs: SIZE / 1e6 / p2pSecs, relay_mbs: SIZE / 1e6 / relaySecs,
    switch_ms: fb?.switch_ms, flowing_ms: fb?.flowing_ms, start_chunk: fb?.start_chunk,
  };
  rows.push(row);
  console.error(`[p2p-bench] round ${i + 1}: ${JSON.stringify(row)}`);
}

const med = (k) => { const v = rows.map((r) => r[k]).sort((x, y) => x - y); return v[Math.floor(v.length / 2)]; };
console.log(`\nfile ${SIZE / MiB} MiB, ${REPS} rounds (median; every round: ${rows.map((r) => r.p2p_mbs.toFixed(0)).join(', ')} MB/s P2P)\n`);
console.log('| measure | median | rounds |');
console.log('|---|---|---|');
console.log(`| P2P setup (Connect -> channel open) | ${med('setup_ms')} ms | ${rows.map((r) => r.setup_ms).join(', ')} |`);
console.log(`| data channel, browser to browser | ${med('p2p_mbs').toFixed(1)} MB/s | ${rows.map((r) => r.p2p_mbs.toFixed(1)).join(', ')} |`);
console.log(`| relay through the box (reference) | ${med('relay_mbs').toFixed(1)} MB/s | ${rows.map((r) => r.relay_mbs.toFixed(1)).join(', ')} |`);
console.log(`| P2P / relay | ${(med('p2p_mbs') / med('relay_mbs')).toFixed(2)} | |`);
console.log(`| fallback: detection -> relay accepted | ${med('switch_ms')} ms | ${rows.map((r) => r.switch_ms).join(', ')} |`);
console.log(`| fallback: detection -> first chunk confirmed via the box | ${med('flowing_ms')} ms | ${rows.map((r) => r.flowing_ms).join(', ')} |`);
console.log(`| fallback resumed from chunk | | ${rows.map((r) => r.start_chunk).join(', ')} of ${Math.ceil(SIZE / 262144)} |`);
nft(['delete', 'table', 'inet', 'lanvan_p2p_bench'], true);
await browser.close();
await box.stop();
rmSync(dir, { recursive: true, force: true });
