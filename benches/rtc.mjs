// The WebRTC data-channel benchmark's browser part (run by benches/rtc.sh inside its own
// network namespace): headless Chromium against the box's str0m peer (benches/rtc_peer.rs)
// built twice, with and without the sctp-proto patch, in one run; MB/s both ways and the
// str0m process's CPU ms per MiB. Prints a Markdown table on stdout; never leaves the namespace.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { launch } from '../tests/browser/harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run through benches/rtc.sh (it needs its own network namespace)');
const SIZE = Number(process.env.BENCH_RTC_MIB || 100) * MiB;
const REPS = Number(process.env.BENCH_RTC_REPS || 3);
const VARIANTS = { before: process.env.RTC_PEER_BEFORE, after: process.env.RTC_PEER_AFTER };
for (const [k, v] of Object.entries(VARIANTS)) if (!v) throw new Error(`RTC_PEER_${k.toUpperCase()} is not set`);

const browser = await launch();
const context = await browser.newContext();
const page = await context.newPage();
await page.goto('about:blank');

/** Starts one str0m peer, connects the page to it; resolves to { lines, proc }. */
async function connect(bin, mode) {
  const proc = spawn(bin, ['--bind', ADDR, mode, String(SIZE)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const queue = [];
  const waiters = [];
  createInterface({ input: proc.stdout }).on('line', (l) => {
    const v = JSON.parse(l);
    if (waiters.length) waiters.shift()(v); else queue.push(v);
  });
  const next = () => new Promise((res, rej) => {
    if (queue.length) return res(queue.shift());
    const t = setTimeout(() => rej(new Error(`${bin} ${mode}: no answer in time`)), 300000);
    waiters.push((v) => { clearTimeout(t); res(v); });
  });
  const offer = await page.evaluate(async () => {
    if (window.bench) window.bench.pc.close();
    const pc = new RTCPeerConnection();
    const dc = pc.createDataChannel('lanvan-chunks');
    dc.binaryType = 'arraybuffer';
    window.bench = { pc, dc, open: new Promise((r) => { dc.onopen = r; }) };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === 'complete') r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r();
      setTimeout(r, 3000);
    });
    return pc.localDescription.sdp;
  });
  proc.stdin.write(`${JSON.stringify({ sdp: offer })}\n`);
  const { sdp } = await next();
  await page.evaluate(async (answer) => {
    await window.bench.pc.setRemoteDescription({ type: 'answer', sdp: answer });
    await window.bench.open;
  }, sdp);
  const open = await next();
  if (!open.open) throw new Error(`unexpected ${JSON.stringify(open)}`);
  return { proc, next };
}

/** str0m sends SIZE bytes to the page: page-measured seconds, peer CPU. */
async function toBrowser(bin) {
  const { proc, next } = await connect(bin, '--send');
  const ms = await page.evaluate((size) => new Promise((res) => {
    const { dc } = window.bench;
    let got = 0;
    const t0 = performance.now();
    dc.onmessage = (e) => { got += e.data.byteLength; if (got >= size) res(performance.now() - t0); };
    dc.send('go');
  }), SIZE);
  const done = await next();
  proc.kill();
  return { mbs: SIZE / 1e6 / (ms / 1000), cpu: done.cpu_ms / (SIZE / MiB) };
}

/** The page sends SIZE bytes to str0m (64 KiB pieces, 4 MiB buffered at most). */
async function fromBrowser(bin) {
  const { proc, next } = await connect(bin, '--receive');
  const ms = await page.evaluate((size) => new Promise((res) => {
    const { dc } = window.bench;
    const piece = new Uint8Array(65536 + 48);
    let sent = 0;
    const t0 = performance.now();
    dc.onmessage = (e) => { if (e.data === 'done') res(performance.now() - t0); };
    dc.bufferedAmountLowThreshold = 1 << 20;
    const pump = () => {
      while (sent < size && dc.bufferedAmount < 4 * (1 << 20)) {
        const n = Math.min(piece.length, size - sent);
        dc.send(n === piece.length ? piece : piece.subarray(0, n));
        sent += n;
      }
    };
    dc.onbufferedamountlow = pump;
    pump();
  }), SIZE);
  const done = await next();
  proc.kill();
  if (done.bytes !== SIZE) throw new Error(`str0m received ${done.bytes} of ${SIZE}`);
  return { mbs: SIZE / 1e6 / (ms / 1000), cpu: done.cpu_ms / (SIZE / MiB) };
}

const runs = { before: { send: [], recv: [] }, after: { send: [], recv: [] } };
for (let i = 0; i < REPS; i++) {
  // Alternate who goes first, so neither variant always gets the warmer machine.
  const order = i % 2 ? ['after', 'before'] : ['before', 'after'];
  for (const v of order) {
    runs[v].send.push(await toBrowser(VARIANTS[v]));
    runs[v].recv.push(await fromBrowser(VARIANTS[v]));
    console.error(`[rtc-bench] round ${i + 1} ${v}: send ${runs[v].send.at(-1).mbs.toFixed(1)} MB/s ${runs[v].send.at(-1).cpu.toFixed(1)} ms/MiB, receive ${runs[v].recv.at(-1).mbs.toFixed(1)} MB/s ${runs[v].recv.at(-1).cpu.toFixed(1)} ms/MiB`);
  }
}

const med = (xs) => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)]; };
const m = (v, dir, k) => med(runs[v][dir].map((r) => r[k]));
const all = (v, dir, k) => runs[v][dir].map((r) => r[k].toFixed(1)).join(', ');
console.log(`\nstr0m peer (lanvan::core::peer, 1 MiB send buffer) <-> Chromium, ${SIZE / MiB} MiB per transfer, 64 KiB pieces, ${REPS} rounds (median; every round in brackets)\n`);
console.log('| direction | sctp-proto | MB/s | str0m CPU ms/MiB |');
console.log('|---|---|---|---|');
for (const [dir, name] of [['send', 'str0m -> Chromium'], ['recv', 'Chromium -> str0m']]) {
  for (const v of ['before', 'after']) {
    const label = v === 'before' ? '0.10.8 as published' : '0.10.8 + patches';
    console.log(`| ${name} | ${label} | ${m(v, dir, 'mbs').toFixed(1)} (${all(v, dir, 'mbs')}) | ${m(v, dir, 'cpu').toFixed(1)} (${all(v, dir, 'cpu')}) |`);
  }
}
console.log('');
console.log('| ratio | before | after |');
console.log('|---|---|---|');
console.log(`| send MB/s / receive MB/s | ${(m('before', 'send', 'mbs') / m('before', 'recv', 'mbs')).toFixed(2)} | ${(m('after', 'send', 'mbs') / m('after', 'recv', 'mbs')).toFixed(2)} |`);
console.log(`| send CPU / receive CPU (per MiB) | ${(m('before', 'send', 'cpu') / m('before', 'recv', 'cpu')).toFixed(2)} | ${(m('after', 'send', 'cpu') / m('after', 'recv', 'cpu')).toFixed(2)} |`);
console.log(`| after / before, send MB/s | | ${(m('after', 'send', 'mbs') / m('before', 'send', 'mbs')).toFixed(2)} |`);
console.log(`| after / before, send CPU per MiB | | ${(m('after', 'send', 'cpu') / m('before', 'send', 'cpu')).toFixed(2)} |`);
await browser.close();
