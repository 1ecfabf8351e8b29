// The `lanvan` command line and a Chromium page as peers, with the box, the CLI and the
// browser inside a network namespace made by scripts/netns-lan.sh (run through
// scripts/test-p2p.sh). The CLI finds the box by mDNS, sends to the page and receives from
// it, and checks every file by SHA-256.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import {
  startLan, udpCutter, openApp, makeFile, sha256, tempDir, runCli,
} from './harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run this through scripts/test-p2p.sh: it needs its own network namespace');

let browser;
let box;
let origin;
const files = tempDir('cli-files');
const state = mkdtempSync(join(tmpdir(), 'lanvan-cli-state-'));

const { cut, uncut } = udpCutter('lanvan_cli_test');

before(async () => {
  ({ browser, box, origin } = await startLan(ADDR, 3478));
});
after(async () => {
  uncut();
  await browser?.close();
  await box?.stop();
  rmSync(state, { recursive: true, force: true });
});

/** Runs `lanvan ARGS` as the terminal "CLI test" (harness `runCli`), by default with `--box`. */
function cli(args, { withBox = true, ...opts } = {}) {
  return runCli(args, { box: withBox ? origin : null, state, ...opts });
}

/** A page with P2P chosen; resolves to it and its device id. */
async function p2pPage() {
  const a = await openApp(browser, box, { origin });
  await a.page.locator('#p2p-card:not([hidden])').waitFor({ timeout: 10000 });
  await a.page.selectOption('#p2p-mode', 'p2p');
  const id = await a.page.evaluate(() => window.lanvan.me.id);
  return { ...a, id };
}

/** The page accepts what comes (a P2P request, then the file); resolves to the file's SHA-256. */
async function pageReceives(page, timeout = 120000) {
  const request = page.locator('#p2p-request[open]');
  const offer = page.locator('#offer[open]');
  // A direct send asks for a connection first; a relay send shows the offer at once.
  const first = await Promise.race([
    request.waitFor({ timeout: 30000 }).then(() => 'request'),
    offer.waitFor({ timeout: 30000 }).then(() => 'offer'),
  ]);
  if (first === 'request') await request.locator('[data-answer="accept"]').click();
  await offer.waitFor({ timeout: 30000 });
  const text = await offer.locator('.offer-text').textContent();
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout }),
    page.click('#offer [data-answer="accept"]'),
  ]);
  return { sha: sha256(readFileSync(await download.path())), text };
}

test('CLI: finds the box by mDNS and lists its files', { timeout: 60000 }, async () => {
  const f = makeFile(files, 'listed.bin', 1000, 11);
  const up = await fetch(`${origin}/api/uploads`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: f.name, size: f.size, sha256: f.sha256 }),
  }).then((r) => r.json());
  await fetch(`${origin}/api/uploads/${up.id}/chunks/0`, {
    method: 'PUT', body: readFileSync(f.path), headers: { 'x-chunk-sha256': f.sha256 },
  });
  await fetch(`${origin}/api/uploads/${up.id}/finish`, { method: 'POST' });
  const { code, stdout, stderr } = await cli(['ls', '--json', '--discover-ms', '3000'], { withBox: false }).done;
  assert.equal(code, 0, stderr);
  const names = JSON.parse(stdout).files.map((x) => x.name);
  assert.ok(names.includes('listed.bin'), stdout);
});

test('CLI: `lanvan send --relay` to a page, which accepts; SHA-256 matches', { timeout: 120000 }, async () => {
  const p = await p2pPage();
  const f = makeFile(files, 'cli relay 3MiB.bin', 3 * MiB + 17, 21);
  const send = cli(['send', f.path, '--to', p.id, '--relay']);
  const got = await pageReceives(p.page);
  assert.equal(got.sha, f.sha256);
  const r = await send.done;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(f.sha256));
  await p.context.close();
});

test('CLI: a page sends to `lanvan receive` through the box; SHA-256 matches', { timeout: 120000 }, async () => {
  const dir = tempDir('cli-received');
  const rx = cli(['receive', '--once', '--dir', dir]);
  const p = await openApp(browser, box, { origin });
  // The terminal shows up in the page's device list; the page sends it a file.
  const id = readFileSync(join(state, 'lanvan/device-id'), 'utf8').trim();
  await p.page.locator(`button[data-send="${id}"]`).waitFor({ timeout: 20000 });
  const f = makeFile(files, 'from page.bin', 2 * MiB + 5, 31);
  const [chooser] = await Promise.all([
    p.page.waitForEvent('filechooser'),
    p.page.click(`button[data-send="${id}"]`),
  ]);
  await chooser.setFiles(f.path);
  const r = await rx.done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha256(readFileSync(r.stdout.trim())), f.sha256);
  await p.context.close();
  rmSync(dir, { recursive: true, force: true });
});

test('CLI: `lanvan send` to a page over a data channel; SHA-256 matches, the box carries no file bytes', { timeout: 120000 }, async () => {
  const p = await p2pPage();
  const f = makeFile(files, 'cli direct 6MiB.bin', 6 * MiB + 3, 41);
  const before = (await box.json('/api/status')).bytes_in;
  const send = cli(['send', f.path, '--to', p.id]);
  const got = await pageReceives(p.page);
  assert.match(got.text, /directly \(P2P\)/);
  assert.equal(got.sha, f.sha256);
  const r = await send.done;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /sent directly \(P2P\)/);
  const through = (await box.json('/api/status')).bytes_in - before;
  assert.ok(through < 1 * MiB, `the box received ${through} bytes during a direct send`);
  await p.context.close();
});

test('CLI: with UDP between the CLI and the page blocked, the send falls back to the relay; SHA-256 matches', { timeout: 120000 }, async () => {
  const p = await p2pPage();
  const f = makeFile(files, 'cli fallback 3MiB.bin', 3 * MiB + 9, 51);
  cut();
  try {
    const send = cli(['send', f.path, '--to', p.id]);
    const got = await pageReceives(p.page);
    assert.equal(got.sha, f.sha256);
    const r = await send.done;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /P2P failed/);
    assert.match(r.stderr, new RegExp(f.sha256));
  } finally {
    uncut();
  }
  await p.context.close();
});

test('CLI: a page sends to `lanvan receive` over a data channel; SHA-256 matches, the box carries no file bytes', { timeout: 120000 }, async () => {
  const dir = tempDir('cli-received-direct');
  let listening;
  const ready = new Promise((res) => { listening = res; });
  const rx = cli(['receive', '--once', '--dir', dir], {
    onStderr: (all) => { if (all.includes('receiving into')) listening(); },
  });
  await ready;
  const p = await p2pPage();
  const id = readFileSync(join(state, 'lanvan/device-id'), 'utf8').trim();
  // The terminal opted in to P2P: the page offers to connect to it, and `receive` accepts
  // without asking anyone.
  const connectBtn = p.page.locator(`button[data-p2p-connect="${id}"]`);
  await connectBtn.waitFor({ timeout: 20000 });
  await connectBtn.click();
  await p.page.locator('#p2p-status[data-state="connected"]').waitFor({ timeout: 20000 });
  const f = makeFile(files, 'page direct 6MiB.bin', 6 * MiB + 7, 61);
  const before = (await box.json('/api/status')).bytes_in;
  const [chooser] = await Promise.all([
    p.page.waitForEvent('filechooser'),
    p.page.click(`button[data-send="${id}"]`),
  ]);
  await chooser.setFiles(f.path);
  const r = await rx.done;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /receiving page direct 6MiB\.bin \(6\.0 MiB\) directly \(P2P\)/);
  assert.doesNotMatch(r.stderr, /through the box/);
  assert.equal(sha256(readFileSync(r.stdout.trim())), f.sha256);
  // The page heard the terminal's last acks and `done` (it would otherwise move the
  // finished send to the box after 3 s without progress).
  await p.page.locator('#transfers li[data-state="done"][data-via="p2p"]').waitFor({ timeout: 10000 })
    .catch(async (e) => {
      const rows = await p.page.evaluate(() => [...document.querySelectorAll('#transfers li')]
        .map((l) => `${l.dataset.state}/${l.dataset.via}: ${l.textContent}`));
      throw new Error(`${e.message}; the page's rows: ${JSON.stringify(rows)}`);
    });
  // The bytes went straight from the page to the terminal: the box saw signaling only.
  const through = (await box.json('/api/status')).bytes_in - before;
  assert.ok(through < 1 * MiB, `the box received ${through} bytes during a direct send`);
  await p.context.close();
  rmSync(dir, { recursive: true, force: true });
});
