// P2P between two Chromium pages (two browser contexts, two devices), with the box and the
// browser inside a network namespace made by scripts/netns-lan.sh: Chromium leaves loopback
// out of ICE, so the pages meet at 198.18.0.2 through the box's STUN. Run it with
// scripts/test-p2p.sh; it refuses to run outside such a namespace.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  startBox, startLan, udpCutter, openApp, makeFile, sha256, tempDir, recordStatuses, waitFor, ARTIFACTS,
} from './harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run this through scripts/test-p2p.sh: it needs its own network namespace');

let browser;
let box;
let origin;
const files = tempDir('p2p-files');
mkdirSync(ARTIFACTS, { recursive: true });

const { cut, uncut } = udpCutter('lanvan_p2p_test');

before(async () => {
  ({ browser, box, origin } = await startLan(ADDR, 3478));
});
after(async () => {
  uncut();
  await browser?.close();
  await box?.stop();
});

/** TCP bytes the box received so far (HTTP and WebSocket, relay chunks included). */
async function boxBytesIn() {
  return (await box.json('/api/status')).bytes_in;
}

/** Two devices with the transfer mode on P2P, each seeing the other in its P2P list. */
async function twoP2PDevices(on = box, at = origin) {
  const a = await openApp(browser, on, { origin: at });
  const b = await openApp(browser, on, { origin: at });
  const idA = await a.page.evaluate(() => window.lanvan.me.id);
  const idB = await b.page.evaluate(() => window.lanvan.me.id);
  for (const { page } of [a, b]) {
    await page.locator('#p2p-card:not([hidden])').waitFor({ timeout: 10000 });
    assert.equal(await page.locator('#p2p-status-text').textContent(), 'Server');
    await page.selectOption('#p2p-mode', 'p2p');
  }
  await a.page.locator(`button[data-p2p-connect="${idB}"]`).waitFor({ timeout: 10000 });
  await b.page.locator(`button[data-p2p-connect="${idA}"]`).waitFor({ timeout: 10000 });
  return { a, b, idA, idB };
}

/** A asks B for a direct connection, B accepts in its prompt; resolves when both are connected. */
async function connect({ a, b, idA, idB }, screenshot) {
  await a.page.click(`button[data-p2p-connect="${idB}"]`);
  const prompt = b.page.locator('#p2p-request[open]');
  await prompt.waitFor({ timeout: 10000 });
  assert.match(await prompt.textContent(), /wants to connect directly/);
  if (screenshot) {
    // What a phone sees: the request over the page at 360 px.
    await b.page.setViewportSize({ width: 360, height: 780 });
    await b.page.screenshot({ path: join(ARTIFACTS, screenshot) });
  }
  await prompt.locator('[data-answer="accept"]').click();
  for (const page of [a.page, b.page]) {
    await page.locator('#p2p-status[data-state="connected"]').waitFor({ timeout: 20000 });
  }
  await a.page.locator(`button[data-p2p-disconnect="${idB}"]`).waitFor({ timeout: 5000 });
  assert.equal(await a.page.locator('#p2p-status-text').textContent(), 'P2P connected');
}

async function pickFor(page, deviceId, path) {
  const [chooser] = await Promise.all([
    page.waitForEvent('filechooser'),
    page.click(`button[data-send="${deviceId}"]`),
  ]);
  await chooser.setFiles(path);
}

/** B accepts the incoming file; resolves to the downloaded bytes' SHA-256. */
async function acceptAndHash(b, timeout = 120000) {
  await b.page.locator('#offer[open]').waitFor({ timeout: 20000 });
  const [download] = await Promise.all([
    b.page.waitForEvent('download', { timeout }),
    b.page.click('#offer [data-answer="accept"]'),
  ]);
  return sha256(readFileSync(await download.path()));
}

/** The receiver's progress as a fraction, read from its transfer row's bar. */
function waitProgress(page, fraction) {
  return page.waitForFunction((f) => {
    const bar = document.querySelector('#transfers li[data-dir="in"] progress');
    return bar && bar.value >= f * 1000;
  }, fraction, { polling: 10, timeout: 60000 });
}

const p2pLog = (page) => page.evaluate(() => window.lanvan.p2p.log);

test('P2P: request, accept, and 50 MiB over the data channel, not through the box', { timeout: 180000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await a.page.screenshot({ path: join(ARTIFACTS, 'p2p-devices.png'), fullPage: true });
  // No multicast DNS: the pages cannot resolve each other's hidden host addresses, so only
  // the address the box's STUN reports (server-reflexive) can connect them.
  cut('udp', 'dport', '5353');
  try {
    await connect(pair, 'p2p-request-360.png');
  } finally {
    uncut();
  }
  await b.page.screenshot({ path: join(ARTIFACTS, 'p2p-connected-360.png'), fullPage: true });
  await waitFor(async () => (await p2pLog(a.page)).find((e) => e.event === 'path'), 5000, 'the path');
  const path = (await p2pLog(a.page)).find((e) => e.event === 'path');
  assert.ok([path.local, path.remote].some((t) => t === 'srflx' || t === 'prflx'),
    `the pair uses the box's STUN answer: ${JSON.stringify(path)}`);

  const file = makeFile(files, 'direct 50MiB.bin', 50 * MiB, 5050);
  await recordStatuses(a.page, 'transfers');
  await recordStatuses(b.page, 'transfers');
  const before = await boxBytesIn();
  await pickFor(a.page, idB, file.path);
  const offer = b.page.locator('#offer[open]');
  await offer.waitFor({ timeout: 10000 });
  assert.match(await offer.locator('.offer-text').textContent(), /directly \(P2P\)/);
  await b.page.screenshot({ path: join(ARTIFACTS, 'p2p-offer.png') });
  assert.equal(await acceptAndHash(b), file.sha256);
  const through = (await boxBytesIn()) - before;

  await a.page.locator('#transfers li[data-state="done"][data-via="p2p"] .status', { hasText: 'Delivered to' })
    .waitFor({ timeout: 10000 });
  await b.page.locator('#transfers li[data-state="done"][data-via="p2p"] .status', { hasText: 'Received · 52.4 MB' })
    .waitFor({ timeout: 10000 });
  await a.page.screenshot({ path: join(ARTIFACTS, 'p2p-sent.png'), fullPage: true });
  // The bytes went straight between the pages: the box saw signaling and acks only.
  assert.ok(through < 1 * MiB, `the box received ${through} bytes during a 50 MiB P2P send`);
  for (const page of [a.page, b.page]) {
    const seen = await page.evaluate(() => window.statuses);
    assert.ok(seen.some((s) => /^(Sending|Receiving) · \d+% of 52\.4 MB · .+\/s · .+ left$/.test(s)),
      `progress with speed and time left: ${JSON.stringify(seen)}`);
  }
  const setup = (await p2pLog(a.page)).find((e) => e.event === 'connected');
  console.log(`# P2P setup ${setup.setup_ms} ms; candidates ${path.local} -> ${path.remote}; ${through} bytes through the box`);
  await a.context.close();
  await b.context.close();
});

test('P2P: a declined request leaves both on the server', { timeout: 60000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await a.page.click(`button[data-p2p-connect="${idB}"]`);
  await a.page.locator('#p2p-status[data-state="connecting"]').waitFor({ timeout: 5000 });
  await b.page.locator('#p2p-request[open]').waitFor({ timeout: 10000 });
  await b.page.click('#p2p-request [data-answer="decline"]');
  await a.page.locator('#toasts', { hasText: 'declined the direct connection' }).waitFor({ timeout: 10000 });
  await a.page.locator('#p2p-status[data-state="server"]').waitFor({ timeout: 5000 });
  await a.page.locator(`li.p2p-peer[data-id="${idB}"][data-state="declined"]`).waitFor({ timeout: 5000 });
  assert.equal(await b.page.locator('#p2p-status').getAttribute('data-state'), 'server');
  // A file still goes, through the box.
  const small = makeFile(files, 'after-decline.txt', 1000, 3);
  await pickFor(a.page, idB, small.path);
  assert.equal(await acceptAndHash(b, 20000), small.sha256);
  await a.page.locator('#transfers li[data-state="done"][data-via="server"]').waitFor({ timeout: 10000 });
  await a.context.close();
  await b.context.close();
});

test('P2P: a request nobody answers times out: the prompt goes away and the asker is told', { timeout: 60000 }, async () => {
  const quick = await startBox({ host: ADDR, settings: ['p2p.signal_timeout_secs=2'] });
  try {
    const { a, b, idB } = await twoP2PDevices(quick, `http://${ADDR}:${quick.port}`);
    await a.page.click(`button[data-p2p-connect="${idB}"]`);
    await b.page.locator('#p2p-request[open]').waitFor({ timeout: 10000 });
    // Nobody answers: after the box's 2 s the prompt closes by itself.
    await b.page.locator('#p2p-request:not([open])').waitFor({ state: 'attached', timeout: 10000 });
    await a.page.locator(`li.p2p-peer[data-id="${idB}"][data-state="failed"]`).waitFor({ timeout: 5000 });
    await a.page.locator('#toasts', { hasText: 'Files go through the box' }).waitFor({ timeout: 5000 });
    assert.equal(await b.page.locator('#p2p-request').evaluate((d) => d.open), false);
    await a.context.close();
    await b.context.close();
  } finally {
    await quick.stop();
  }
});

test('P2P: the direct path cut mid-transfer, the box continues from the confirmed chunk', { timeout: 180000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await connect(pair);
  const file = makeFile(files, 'cut 50MiB.bin', 50 * MiB, 6060);
  const stun = '3478';
  // Every text the sender's P2P indicator shows from here on.
  await a.page.evaluate(() => {
    const el = document.getElementById('p2p-status');
    window.indicator = [el.textContent];
    new MutationObserver(() => {
      if (window.indicator.at(-1) !== el.textContent) window.indicator.push(el.textContent);
    }).observe(el, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await pickFor(a.page, idB, file.path);
  const hash = acceptAndHash(b);
  await waitProgress(b.page, 0.2);
  const before = await boxBytesIn();
  // Drop every UDP datagram between the pages; the box's STUN port stays open.
  cut('udp', 'sport', '!=', stun, 'udp', 'dport', '!=', stun);
  try {
    assert.equal(await hash, file.sha256);
  } finally {
    uncut();
  }
  const through = (await boxBytesIn()) - before;
  const moved = (await p2pLog(a.page)).find((e) => e.event === 'fallback');
  assert.ok(moved, 'the sender logged the fallback');
  // Seen either as 3 s without an acknowledgement, or as ICE reporting the path gone.
  assert.ok(['stalled', 'failed'].includes(moved.reason), moved.reason);
  assert.ok(moved.start_chunk > 0, `resumed, not restarted: start_chunk ${moved.start_chunk}`);
  assert.ok(through < file.size, `only the rest went through the box: ${through} of ${file.size}`);
  assert.ok(moved.switch_ms <= 1000, `switch took ${moved.switch_ms} ms after detection`);
  await a.page.locator('#transfers li[data-state="done"][data-via="fallback"] .via', { hasText: 'P2P failed, using server' })
    .waitFor({ timeout: 10000 });
  await b.page.locator('#transfers li[data-state="done"][data-via="fallback"]').waitFor({ timeout: 10000 });
  const shown = await a.page.evaluate(() => window.indicator);
  assert.ok(shown.includes('P2P failed, using server'), JSON.stringify(shown));
  await a.page.screenshot({ path: join(ARTIFACTS, 'p2p-fallback.png'), fullPage: true });
  console.log(`# fallback: detection -> relay accepted ${moved.switch_ms} ms, -> first relay ack ${moved.flowing_ms} ms; `
    + `from chunk ${moved.start_chunk} of ${moved.chunks}; ${through} bytes through the box`);
  await a.context.close();
  await b.context.close();
});

test('P2P: a peer connection closed mid-transfer moves the send to the box at once', { timeout: 120000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await connect(pair);
  const file = makeFile(files, 'closed 20MiB.bin', 20 * MiB, 6161);
  await pickFor(a.page, idB, file.path);
  const hash = acceptAndHash(b);
  await waitProgress(b.page, 0.2);
  await b.page.evaluate(() => { for (const link of window.lanvan.p2p.links.values()) link.pc.close(); });
  assert.equal(await hash, file.sha256);
  const moved = (await p2pLog(a.page)).find((e) => e.event === 'fallback');
  assert.equal(moved.reason, 'failed');
  assert.ok(moved.start_chunk > 0, `resumed from chunk ${moved.start_chunk}`);
  assert.ok(moved.switch_ms <= 1000, `switch took ${moved.switch_ms} ms after detection`);
  const got = (await p2pLog(b.page)).find((e) => e.event === 'receiver_switched');
  assert.ok(got.held >= moved.start_chunk, JSON.stringify(got));
  await b.page.locator('#transfers li[data-state="done"] .via', { hasText: 'P2P failed, using server' })
    .waitFor({ timeout: 10000 });
  await a.context.close();
  await b.context.close();
});

test('P2P: a chunk damaged on the way is sent again, and the file arrives intact', { timeout: 120000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await connect(pair);
  // Flip one byte of the 20th piece B receives, before the app sees it.
  await b.page.evaluate(() => {
    const link = [...window.lanvan.p2p.links.values()][0];
    const take = link.message.bind(link);
    let pieces = 0;
    link.message = (data) => {
      if (typeof data !== 'string' && ++pieces === 20) {
        const copy = data.slice(0);
        new Uint8Array(copy)[1000] ^= 0xff;
        return take(copy);
      }
      return take(data);
    };
  });
  const file = makeFile(files, 'damaged.bin', 5 * MiB, 4444);
  await pickFor(a.page, idB, file.path);
  assert.equal(await acceptAndHash(b), file.sha256);
  const damaged = (await p2pLog(b.page)).filter((e) => e.event === 'chunk_damaged');
  assert.equal(damaged.length, 1, JSON.stringify(damaged));
  assert.equal(damaged[0].index, 4); // 20th piece of 64 KiB: chunk 4 of 256 KiB
  await a.page.locator('#transfers li[data-state="done"][data-via="p2p"]').waitFor({ timeout: 10000 });
  await a.context.close();
  await b.context.close();
});

/** Emulates the Page Visibility API going to `state` ('hidden' or 'visible'). */
function setVisibility(page, state) {
  return page.evaluate((state) => {
    Object.defineProperty(document, 'visibilityState', { value: state, configurable: true });
    Object.defineProperty(document, 'hidden', { value: state === 'hidden', configurable: true });
    document.dispatchEvent(new Event('visibilitychange'));
  }, state);
}

test('P2P: a sender that goes to the background moves the send to the box, live', { timeout: 180000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await connect(pair);
  const file = makeFile(files, 'hidden-sender.bin', 50 * MiB, 7070);
  await pickFor(a.page, idB, file.path);
  const hash = acceptAndHash(b);
  await waitProgress(b.page, 0.2);
  await setVisibility(a.page, 'hidden');
  assert.equal(await hash, file.sha256);
  const moved = (await p2pLog(a.page)).find((e) => e.event === 'fallback');
  assert.equal(moved.reason, 'hidden');
  assert.ok(moved.start_chunk > 0, `continued from chunk ${moved.start_chunk}`);

  // Both visible again: the next send goes straight over P2P.
  await setVisibility(a.page, 'visible');
  const next = makeFile(files, 'visible-again.bin', 2 * MiB, 7071);
  await pickFor(a.page, idB, next.path);
  assert.equal(await acceptAndHash(b), next.sha256);
  await a.page.locator('#transfers li[data-state="done"][data-via="p2p"] .name', { hasText: 'visible-again.bin' })
    .waitFor({ timeout: 10000 });
  await a.context.close();
  await b.context.close();
});

test('P2P: a receiver that goes to the background gets the file from its inbox on the box', { timeout: 180000 }, async () => {
  const pair = await twoP2PDevices();
  const { a, b, idB } = pair;
  await connect(pair);
  const file = makeFile(files, 'hidden-receiver.bin', 50 * MiB, 8080);
  await pickFor(a.page, idB, file.path);
  await b.page.locator('#offer[open]').waitFor({ timeout: 20000 });
  let downloads = 0;
  const got = new Promise((res) => b.page.on('download', (d) => { downloads++; res(d); }));
  await b.page.click('#offer [data-answer="accept"]');
  await waitProgress(b.page, 0.2);
  await setVisibility(b.page, 'hidden');
  await a.page.locator('#transfers li[data-via="inbox"]').waitFor({ timeout: 10000 });
  const download = await Promise.race([got, new Promise((_, rej) => setTimeout(() => rej(new Error('no download')), 120000))]);
  assert.equal(sha256(readFileSync(await download.path())), file.sha256);
  assert.equal(downloads, 1, 'the partial P2P file was dropped, not saved');
  await b.page.locator('#transfers li[data-state="done"] .status', { hasText: 'Received · 52.4 MB' })
    .waitFor({ timeout: 10000 });
  const log = await p2pLog(a.page);
  assert.ok(log.some((e) => e.event === 'to_inbox'), JSON.stringify(log));
  await b.page.screenshot({ path: join(ARTIFACTS, 'p2p-receiver-hidden.png'), fullPage: true });
  await a.context.close();
  await b.context.close();
});

test('P2P: in p2p-first mode a send connects by itself and goes direct', { timeout: 120000 }, async () => {
  const first = await startBox({ host: ADDR, settings: ['p2p.mode=p2p-first', 'p2p.stun_port=3479'] });
  const o = `http://${ADDR}:${first.port}`;
  try {
    const a = await openApp(browser, first, { origin: o });
    const b = await openApp(browser, first, { origin: o });
    const idB = await b.page.evaluate(() => window.lanvan.me.id);
    const idA = await a.page.evaluate(() => window.lanvan.me.id);
    // P2P is the default choice; each sees the other without touching anything.
    for (const page of [a.page, b.page]) assert.equal(await page.inputValue('#p2p-mode'), 'p2p');
    await a.page.locator(`button[data-p2p-connect="${idB}"]`).waitFor({ timeout: 10000 });
    await b.page.locator(`button[data-p2p-connect="${idA}"]`).waitFor({ timeout: 10000 });
    const file = makeFile(files, 'first.bin', 5 * MiB, 9090);
    await pickFor(a.page, idB, file.path);
    // No connection prompt: only the file's.
    assert.equal(await acceptAndHash(b), file.sha256);
    assert.equal(await b.page.locator('#p2p-request[open]').count(), 0);
    await a.page.locator('#transfers li[data-state="done"][data-via="p2p"]').waitFor({ timeout: 10000 });
    await a.context.close();
    await b.context.close();
  } finally {
    await first.stop();
  }
});

test('P2P: mode off hides every P2P control', { timeout: 60000 }, async () => {
  const off = await startBox({ host: ADDR, settings: ['p2p.mode=off'] });
  try {
    const c = await openApp(browser, off, { origin: `http://${ADDR}:${off.port}` });
    await waitFor(() => c.page.evaluate(() => window.lanvan.p2p.box.mode === 'off'), 5000, 'welcome');
    assert.equal(await c.page.locator('#p2p-card').isHidden(), true);
    await c.context.close();
  } finally {
    await off.stop();
  }
});
