// The WebRTC data-channel benchmark's browser part (run by benches/rtc.sh inside its own
// network namespace): headless Chromium against the box's str0m peer (benches/rtc_peer.rs)
// built twice, with and without the sctp-proto patch, in one run; MB/s both ways and the
// str0m process's CPU ms per MiB. Prints a Markdown table on stdout; never leaves the namespace.

import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { launch, makeFile, tempDir } from '../tests/browser/harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run through benches/rtc.sh (it needs its own network namespace)');
const SIZE = Number(process.env.BENCH_RTC_MIB || 100) * MiB;
const REPS = Number(process.env.BENCH_RTC_REPS || 3);
const VARIANTS = { before: process.env.RTC_PEER_BEFORE, after: process.env.RTC_PEER_AFTER };
const BOXES = { before: process.env.LANVAN_BIN_BEFORE, after: process.env.LANVAN_BIN_AFTER };
// BENCH_RTC_VARIANTS=after measures only the patched build (quick rounds while tuning).
const USE = (process.env.BENCH_RTC_VARIANTS || 'before,after').split(',');
for (const k of USE) if (!VARIANTS[k]) throw new Error(`RTC_PEER_${k.toUpperCase()} is not set`);

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

/** UDP datagrams this namespace dropped for a full receive buffer so far (/proc/net/snmp). */
const udpDrops = () => {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const [names, values] = lines.map((l) => l.split(/\s+/));
  return Number(values[names.indexOf('RcvbufErrors')]);
};

/**
 * Every UDP socket in this namespace (`ss -uanmp`): who owns it, its receive buffer (rb)
 * and the datagrams the kernel dropped on it for a full buffer (d), keyed by local address.
 */
const sockets = () => {
  const out = execFileSync('ss', ['-uanmpH'], { encoding: 'utf8' });
  const res = {};
  for (const m of out.matchAll(/\S+\s+\d+\s+\d+\s+(\S+)\s+\S+\s*(users:\(\("([^"]+)"[^\n]*)?\s+skmem:\(([^)]*)\)/g)) {
    const sk = Object.fromEntries(m[4].split(',').map((f) => [f.replace(/\d+$/, ''), Number(f.match(/\d+$/)[0])]));
    res[m[1]] = { proc: m[3] || '?', rb: sk.rb, drops: sk.d };
  }
  return res;
};

/** Drops on the str0m side's socket and on everybody else's (Chromium's), since `before`. */
const splitDrops = (before, after, mine) => {
  let peer = 0; let other = 0; let rbPeer = 0; let rbOther = 0;
  for (const [addr, s] of Object.entries(after)) {
    const d = s.drops - (before[addr]?.drops || 0);
    if (s.proc === mine) { peer += d; rbPeer = Math.max(rbPeer, s.rb); } else if (s.proc !== 'node') { other += d; rbOther = Math.max(rbOther, s.rb); }
  }
  return { peer, other, rbPeer, rbOther };
};

/** str0m sends SIZE bytes to the page: page-measured seconds, peer CPU. */
async function toBrowser(bin) {
  const { proc, next } = await connect(bin, '--send');
  const drops0 = udpDrops();
  const socks0 = sockets();
  const ms = await page.evaluate((size) => new Promise((res) => {
    const { dc } = window.bench;
    let got = 0;
    const t0 = performance.now();
    dc.onmessage = (e) => { got += e.data.byteLength; if (got >= size) res(performance.now() - t0); };
    dc.send('go');
  }), SIZE);
  const done = await next();
  const split = splitDrops(socks0, sockets(), 'rtc_peer');
  proc.kill();
  return { mbs: SIZE / 1e6 / (ms / 1000), cpu: done.cpu_ms / (SIZE / MiB), drops: udpDrops() - drops0, ...split };
}

/** The page sends SIZE bytes to str0m (64 KiB pieces, 4 MiB buffered at most). */
async function fromBrowser(bin) {
  const { proc, next } = await connect(bin, '--receive');
  const drops0 = udpDrops();
  const socks0 = sockets();
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
  const split = splitDrops(socks0, sockets(), 'rtc_peer');
  proc.kill();
  if (done.bytes !== SIZE) throw new Error(`str0m received ${done.bytes} of ${SIZE}`);
  return { mbs: SIZE / 1e6 / (ms / 1000), cpu: done.cpu_ms / (SIZE / MiB), drops: udpDrops() - drops0, ...split };
}

// BENCH_RTC_LABELS="before=...,after=..." names the two builds when they differ by more
// than the sctp-proto patch (benches/rtc.sh always compares exactly that).
const LABELS = { before: '0.10.8 as published', after: '0.10.8 + patches',
  ...Object.fromEntries((process.env.BENCH_RTC_LABELS || '').split(',').filter(Boolean).map((kv) => kv.split('='))) };
const runs = { before: { send: [], recv: [] }, after: { send: [], recv: [] } };
const PEER = process.env.BENCH_RTC_PEER !== '0';
for (let i = 0; i < REPS && PEER; i++) {
  // Alternate who goes first, so neither variant always gets the warmer machine.
  const order = (i % 2 ? ['after', 'before'] : ['before', 'after']).filter((v) => USE.includes(v));
  for (const v of order) {
    runs[v].send.push(await toBrowser(VARIANTS[v]));
    runs[v].recv.push(await fromBrowser(VARIANTS[v]));
    const [s, r] = [runs[v].send.at(-1), runs[v].recv.at(-1)];
    console.error(`[rtc-bench] round ${i + 1} ${v}: send ${s.mbs.toFixed(1)} MB/s ${s.cpu.toFixed(1)} ms/MiB, drops at Chromium ${s.other} (rb ${s.rbOther}) at str0m ${s.peer} (rb ${s.rbPeer}); receive ${r.mbs.toFixed(1)} MB/s ${r.cpu.toFixed(1)} ms/MiB, drops at str0m ${r.peer} (rb ${r.rbPeer}) at Chromium ${r.other} (rb ${r.rbOther}); load ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]}`);
  }
}

const med = (xs) => { const v = [...xs].sort((a, b) => a - b); return v[Math.floor(v.length / 2)]; };
const m = (v, dir, k) => med(runs[v][dir].map((r) => r[k]));
const all = (v, dir, k) => runs[v][dir].map((r) => r[k].toFixed(1)).join(', ');
if (PEER) {
console.log(`\nstr0m peer (lanvan::core::peer, 1 MiB send buffer) <-> Chromium, ${SIZE / MiB} MiB per transfer, 64 KiB pieces, ${REPS} rounds (median; every round in brackets)\n`);
console.log('| direction | sctp-proto | MB/s | str0m CPU ms/MiB | datagrams dropped at the receiver (full buffer) | receiver SO_RCVBUF (kernel rb) |');
console.log('|---|---|---|---|---|---|');
for (const [dir, name] of [['send', 'str0m -> Chromium'], ['recv', 'Chromium -> str0m']]) {
  for (const v of USE) {
    const label = LABELS[v];
    const rx = (r) => (dir === 'send' ? [r.other, r.rbOther] : [r.peer, r.rbPeer]);
    console.log(`| ${name} | ${label} | ${m(v, dir, 'mbs').toFixed(1)} (${all(v, dir, 'mbs')}) | ${m(v, dir, 'cpu').toFixed(1)} (${all(v, dir, 'cpu')}) | ${runs[v][dir].map((r) => rx(r)[0]).join(', ')} | ${rx(runs[v][dir][0])[1]} |`);
  }
}
console.log('');
const ratio = (f) => USE.map((v) => f(v).toFixed(2));
console.log(`| ratio | ${USE.join(' | ')} |`);
console.log(`|---|${USE.map(() => '---|').join('')}`);
console.log(`| send MB/s / receive MB/s (medians) | ${ratio((v) => m(v, 'send', 'mbs') / m(v, 'recv', 'mbs')).join(' | ')} |`);
console.log(`| send CPU / receive CPU (per MiB) | ${ratio((v) => m(v, 'send', 'cpu') / m(v, 'recv', 'cpu')).join(' | ')} |`);
if (USE.includes('before') && USE.includes('after')) {
  console.log(`| after / before, send MB/s | | ${(m('after', 'send', 'mbs') / m('before', 'send', 'mbs')).toFixed(2)} |`);
  console.log(`| after / before, send CPU per MiB | | ${(m('after', 'send', 'cpu') / m('before', 'send', 'cpu')).toFixed(2)} |`);
}
}

// ---- The real box as a source (SPEC8 §3, §4): a page fetches a stored file's chunks from the
// box over `lanvan-chunks`; MB/s and the box process's CPU ms per MiB from /proc/PID/stat.
const HZ = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());
const cpuMs = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / HZ;
};

function startBox(bin) {
  const dataDir = mkdtempSync(join(tmpdir(), 'lanvan-rtc-bench-'));
  const proc = spawn(bin, ['serve', '--listen', `${ADDR}:0`, '--data-dir', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`box did not start:\n${log}`)), 20000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /listening on (\S+)\r?\n/.exec(log);
      if (m && t) { clearTimeout(t); res({ proc, dataDir, port: Number(m[1].split(':').pop()) }); }
    });
  });
}

/** One download of `name` from the box over the chunk protocol, in the page; ms or an error text. */
async function fetchFromBox(port, name) {
  const boxPage = await context.newPage();
  await boxPage.goto(`http://${ADDR}:${port}/api/status`);
  try {
    return await boxPage.evaluate(async (fileName) => {
      const r = await fetch(`/api/files/${encodeURIComponent(fileName)}/manifest`);
      if (!r.ok) return { error: `GET manifest: HTTP ${r.status} ${await r.text()}` };
      const man = await r.json();
      const id = `rtcbench${Math.random().toString(36).slice(2, 10)}`;
      const ws = new WebSocket(`ws://${location.host}/ws/${id}?name=rtc-bench&kind=laptop`);
      const wsMsgs = [];
      let wsWake = null;
      ws.onmessage = (e) => { wsMsgs.push(JSON.parse(e.data)); if (wsWake) wsWake(); };
      const wsNext = async (pred) => {
        for (;;) {
          const i = wsMsgs.findIndex(pred);
          if (i >= 0) return wsMsgs.splice(i, 1)[0];
          await new Promise((res) => { wsWake = res; });
        }
      };
      await new Promise((res) => { ws.onopen = res; });
      const pc = new RTCPeerConnection();
      const dc = pc.createDataChannel('lanvan-chunks');
      dc.binaryType = 'arraybuffer';
      const session = 'bench';
      pc.onicecandidate = (e) => ws.send(JSON.stringify({ type: 'rtc_candidate', session, candidate: e.candidate ? e.candidate.toJSON() : null }));
      await pc.setLocalDescription(await pc.createOffer());
      ws.send(JSON.stringify({ type: 'rtc_offer', session, sdp: pc.localDescription.sdp }));
      const ans = await wsNext((m) => m.type === 'rtc_answer' || m.type === 'error');
      if (ans.type === 'error') return { error: `rtc_offer: ${ans.code}` };
      await pc.setRemoteDescription({ type: 'answer', sdp: ans.sdp });
      const opened = await new Promise((res) => { dc.onopen = () => res(true); setTimeout(() => res(false), 30000); });
      if (!opened) return { error: 'the lanvan-chunks channel to the box did not open in 30 s' };
      const texts = [];
      let wake = null;
      const n = man.chunks.length;
      const have = new Array(n).fill(0);
      let next = 0; let done = 0; let outstanding = 0; let failed = null; let t0 = 0;
      let max = 1;
      const finished = new Promise((res) => { wake = res; });
      const request = () => {
        while (outstanding < max && next < n) {
          dc.send(JSON.stringify({ t: 'request_chunk', manifest: man.manifest, index: next, hash: man.chunks[next] }));
          next += 1; outstanding += 1;
        }
      };
      dc.onmessage = (e) => {
        if (typeof e.data === 'string') {
          const m = JSON.parse(e.data);
          texts.push(m);
          if (m.t === 'hello') { max = Math.max(1, Math.min(m.max_requests || 16, 16)); t0 = performance.now(); request(); }
          if (m.t === 'error') { failed = `${m.code}: ${m.message}`; wake(); }
          return;
        }
        const v = new DataView(e.data);
        const index = v.getUint32(4); const len = v.getUint32(12);
        have[index] += e.data.byteLength - 48;
        if (have[index] === len) {
          done += 1; outstanding -= 1;
          if (done === n) wake(); else request();
        }
      };
      dc.onclose = () => { failed ||= 'the box closed the channel'; wake(); };
      setTimeout(() => { failed ||= 'no complete download in 10 minutes'; wake(); }, 600000);
      dc.send(JSON.stringify({ t: 'hello', id, name: 'rtc-bench', role: 'browser', max_requests: 16 }));
      await finished;
      const ms = performance.now() - t0;
      pc.close(); ws.close();
      return failed ? { error: failed } : { ms, bytes: man.size };
    }, name);
  } finally {
    await boxPage.close();
  }
}

const boxRuns = { before: [], after: [] };
let boxMissing = null;
if (USE.some((v) => !BOXES[v])) boxMissing = `LANVAN_BIN_${USE.join('/').toUpperCase()} not set`;
if (process.env.BENCH_RTC_BOX === '0') boxMissing = 'BENCH_RTC_BOX=0';
const dir = tempDir('rtc-bench');
const file = makeFile(dir, 'rtc-bench.bin', SIZE, 4321);
for (let i = 0; i < REPS && !boxMissing; i++) {
  const order = (i % 2 ? ['after', 'before'] : ['before', 'after']).filter((v) => USE.includes(v));
  for (const v of order) {
    const box = await startBox(BOXES[v]);
    try {
      execFileSync('python3', ['benches/upload_client.py', '--host', ADDR, '--port', String(box.port), '--file', file.path, '--name', 'rtc-bench.bin'], { stdio: ['ignore', 'ignore', 'inherit'] });
      // The manifest is computed on first request; do that outside the measurement.
      await fetch(`http://${ADDR}:${box.port}/api/files/rtc-bench.bin/manifest`);
      const cpu0 = cpuMs(box.proc.pid);
      const r = await fetchFromBox(box.port, 'rtc-bench.bin');
      const cpu = cpuMs(box.proc.pid) - cpu0;
      if (r.error) { boxMissing = r.error; break; }
      boxRuns[v].push({ mbs: r.bytes / 1e6 / (r.ms / 1000), cpu: cpu / (r.bytes / MiB) });
      console.error(`[rtc-bench] box round ${i + 1} ${v}: ${boxRuns[v].at(-1).mbs.toFixed(1)} MB/s, box ${boxRuns[v].at(-1).cpu.toFixed(1)} ms/MiB`);
    } finally {
      box.proc.kill('SIGKILL');
      rmSync(box.dataDir, { recursive: true, force: true });
    }
  }
}
rmSync(dir, { recursive: true, force: true });
console.log(`\nThe box as a source: a Chromium page fetches a ${SIZE / MiB} MiB stored file's chunks from the box over lanvan-chunks (16 requests outstanding), box CPU from /proc\n`);
if (boxMissing) {
  console.log(`Not measured: ${boxMissing}`);
} else {
  console.log('| box build | box -> Chromium MB/s | box CPU ms/MiB |');
  console.log('|---|---|---|');
  for (const v of USE) {
    const mm = (k) => med(boxRuns[v].map((r) => r[k]));
    const aa = (k) => boxRuns[v].map((r) => r[k].toFixed(1)).join(', ');
    console.log(`| ${LABELS[v]} | ${mm('mbs').toFixed(1)} (${aa('mbs')}) | ${mm('cpu').toFixed(1)} (${aa('cpu')}) |`);
  }
}
await browser.close();
