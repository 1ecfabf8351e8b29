// The box as a WebRTC peer, from real Chromium: a page opens an RTCPeerConnection to the box
// over `/ws` (rtc_offer, trickled rtc_candidate), its `lanvan-chunks` channel opens, the box
// says `hello` and serves a stored file's chunks. Chromium hides its address behind `.local`
// mDNS names the box cannot read, so this also shows the peer-reflexive path works. Runs in
// the network namespace of scripts/netns-lan.sh (Chromium leaves loopback out of ICE):
// scripts/test-rtc.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBox, launch, fillRandom, sha256 } from './harness.mjs';

const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run this through scripts/test-rtc.sh: it needs its own network namespace');

let browser;
let box;
let origin;

before(async () => {
  browser = await launch();
  box = await startBox({ host: ADDR, settings: ['p2p.stun_port=0'] });
  origin = `http://${ADDR}:${box.port}`;
});
after(async () => {
  await browser?.close();
  await box?.stop();
});

/** In the page: connects to the box and runs `steps` on the open channel. */
async function pageToBox(page, manifest) {
  return page.evaluate(async (manifest) => {
    const ws = new WebSocket(`ws://${location.host}/ws/page-${Math.random().toString(16).slice(2)}?name=page`);
    const inbox = [];
    let wake = () => {};
    ws.onmessage = (e) => { inbox.push(JSON.parse(e.data)); wake(); };
    const next = (pred, ms = 10000) => new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('timed out')), ms);
      const look = () => {
        const i = inbox.findIndex(pred);
        if (i >= 0) { clearTimeout(t); res(inbox.splice(i, 1)[0]); } else wake = look;
      };
      look();
    });
    await next((m) => m.type === 'welcome');
    const pc = new RTCPeerConnection({ iceServers: [] });
    const dc = pc.createDataChannel('lanvan-chunks');
    dc.binaryType = 'arraybuffer';
    const candidates = [];
    const offer = await pc.createOffer();
    ws.send(JSON.stringify({ type: 'rtc_offer', session: 'b1', sdp: offer.sdp }));
    pc.onicecandidate = (e) => {
      if (e.candidate) candidates.push(e.candidate.candidate);
      ws.send(JSON.stringify({ type: 'rtc_candidate', session: 'b1', candidate: e.candidate ? e.candidate.toJSON() : null }));
    };
    await pc.setLocalDescription(offer);
    const answer = await next((m) => m.type === 'rtc_answer' || m.type === 'error');
    if (answer.type !== 'rtc_answer') throw new Error(JSON.stringify(answer));
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    const texts = [];
    const pieces = [];
    let poke = () => {};
    dc.onmessage = (e) => {
      if (typeof e.data === 'string') texts.push(JSON.parse(e.data)); else pieces.push(new Uint8Array(e.data));
      poke();
    };
    const nextText = (pred, ms = 10000) => new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`no such message; got ${JSON.stringify(texts)}`)), ms);
      const look = () => {
        const i = texts.findIndex(pred);
        if (i >= 0) { clearTimeout(t); res(texts.splice(i, 1)[0]); } else poke = look;
      };
      look();
    });
    await new Promise((res, rej) => { dc.onopen = res; setTimeout(() => rej(new Error('channel did not open')), 10000); });
    const hello = await nextText((m) => m.t === 'hello');
    dc.send(JSON.stringify({ t: 'hello', id: 'page', name: 'page', role: 'browser', max_requests: 16 }));
    const out = { hello, candidates };
    dc.send(JSON.stringify({ t: 'query', manifest: '00'.repeat(32) }));
    out.unknown = await nextText((m) => m.t === 'error');
    if (manifest) {
      dc.send(JSON.stringify({ t: 'query', manifest: manifest.manifest }));
      out.have = await nextText((m) => m.t === 'have');
      // Every chunk, 16 at most outstanding, assembled from 64 KiB pieces.
      const file = new Uint8Array(manifest.size);
      let asked = 0;
      let got = 0;
      const ask = () => {
        while (asked < manifest.chunks.length && asked - got < 16) {
          dc.send(JSON.stringify({ t: 'request_chunk', manifest: manifest.manifest, index: asked, hash: manifest.chunks[asked] }));
          asked++;
        }
      };
      ask();
      let filled = 0;
      await new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error(`stalled at ${filled} bytes`)), 30000);
        const take = () => {
          while (pieces.length) {
            const p = pieces.shift();
            const v = new DataView(p.buffer, p.byteOffset);
            const index = v.getUint32(4);
            const offset = v.getUint32(8);
            const len = v.getUint32(12);
            file.set(p.subarray(48), index * manifest.chunk_size + offset);
            filled += p.length - 48;
            if (offset + p.length - 48 === len) { got++; ask(); }
          }
          if (got === manifest.chunks.length) { clearTimeout(t); res(); } else poke = take;
        };
        take();
      });
      // No crypto.subtle on a plain-HTTP LAN origin: the test hashes the bytes.
      let bin = '';
      for (let i = 0; i < file.length; i += 32768) bin += String.fromCharCode(...file.subarray(i, i + 32768));
      out.base64 = btoa(bin);
    }
    const stats = await pc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        const local = stats.get(s.localCandidateId);
        const remote = stats.get(s.remoteCandidateId);
        out.pair = { local: local?.candidateType, remote: `${remote?.address}:${remote?.port}` };
      }
    }
    pc.close();
    ws.close();
    return out;
  }, manifest);
}

test('a Chromium page opens the chunk channel to the box and downloads a stored file from it', async () => {
  const data = fillRandom(new Uint8Array(3 * 262144 + 777), 42);
  await upload('page.bin', data);
  const manifest = await box.json('/api/files/page.bin/manifest');
  assert.equal(manifest.chunks.length, 4);
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(origin);
  const status = await box.json('/api/status');
  assert.equal(status.p2p.box_peer, true);
  const got = await pageToBox(page, manifest);
  assert.equal(got.hello.role, 'box');
  assert.equal(got.unknown.code, 'not_found');
  assert.equal(got.have.all, true);
  assert.equal(sha256(Buffer.from(got.base64, 'base64')), sha256(data));
  // The box's answer names its socket on the LAN address; the page paired with it.
  assert.equal(got.pair.remote.split(':')[0], ADDR);
  console.log(`page candidates: ${got.candidates.join(' | ') || '(none)'}; pair: ${JSON.stringify(got.pair)}`);
  await context.close();
  await waitForPeers(0);
});

/** Stores a file on the box through the upload API. */
async function upload(name, data) {
  const post = (path, body) => fetch(`${origin}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const created = await (await post('/api/uploads', { name, size: data.length, sha256: sha256(data) })).json();
  for (let i = 0, n = 0; i < data.length; i += created.chunk_size, n++) {
    const part = data.subarray(i, i + created.chunk_size);
    const r = await fetch(`${origin}/api/uploads/${created.id}/chunks/${n}`, {
      method: 'PUT', body: part, headers: { 'x-chunk-sha256': sha256(part) },
    });
    assert.equal(r.status, 200);
  }
  const done = await post(`/api/uploads/${created.id}/finish`, {});
  assert.ok(done.ok, `finish: ${done.status}`);
}

async function waitForPeers(n) {
  const end = Date.now() + 10000;
  for (;;) {
    const s = await box.json('/api/status');
    if (s.box_peers === n) return;
    if (Date.now() > end) throw new Error(`box_peers is ${s.box_peers}, not ${n}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
