// `lanvan get` as a multi-source downloader: a Chromium page that holds a stored file (it
// downloaded it, so it announced its manifest) serves chunks to the command line at the
// same time as the box does, every chunk checked by the CLI; and when that page goes away
// mid-download, the box finishes the file. The box, the CLI and Chromium run inside a network
// namespace (scripts/netns-lan.sh; run by scripts/test-rtc.sh): Chromium leaves loopback out
// of ICE.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { startLan, openApp, storeFile, makeFile, sha256, tempDir, runCli, waitFor } from './harness.mjs';

const MiB = 1 << 20;
const ADDR = process.env.LANVAN_LAN_ADDR;
if (!ADDR) throw new Error('run this through scripts/test-rtc.sh: it needs its own network namespace');

let browser;
let box;
let origin;
const out = tempDir('cli-swarm-out');
const state = mkdtempSync(join(tmpdir(), 'lanvan-cli-swarm-state-'));

before(async () => {
  ({ browser, box, origin } = await startLan(ADDR, 0));
});
after(async () => {
  await browser?.close();
  await box?.stop();
  rmSync(state, { recursive: true, force: true });
});

/** A page (a fresh browser context) with P2P on. */
async function p2pPage() {
  const d = await openApp(browser, box, { origin });
  await d.page.locator('#p2p-card:not([hidden])').waitFor({ timeout: 10000 });
  await d.page.selectOption('#p2p-mode', 'p2p');
  await d.page.waitForFunction(() => window.lanvan.p2p.enabled, null, { timeout: 10000 });
  const [id, name] = await d.page.evaluate(() => [window.lanvan.me.id, window.lanvan.me.name]);
  return { ...d, id, name };
}

/**
 * A page with P2P on that downloaded `file` from the box (from the box alone: it is the
 * first to have it) and announced it: a source. Resolves to the page, its id and name.
 */
async function holder(file) {
  const d = await p2pPage();
  const row = d.page.locator(`#files li.file[data-name="${file.name}"]`);
  await row.waitFor({ timeout: 10000 });
  const [saved] = await Promise.all([
    d.page.waitForEvent('download', { timeout: 120000 }),
    row.locator('a.btn', { hasText: 'Download' }).click(),
  ]);
  assert.equal(sha256(readFileSync(await saved.path())), file.sha256, 'the page holds the file');
  await d.page.waitForFunction(() => window.lanvan.swarm.announced >= 1, null, { timeout: 10000 });
  return d;
}

/** `lanvan get NAME -o PATH`; `onStderr` sees its stderr as it grows. */
function get(file, path, onStderr) {
  return runCli(['get', file.name, '-o', path], { box: origin, state, onStderr });
}

/** The final line's counts: `N chunks over data channels from 2 sources (the box: a, B: b)`. */
function counts(stderr) {
  const m = /(\d+) chunks over data channels from (\d+) sources \((.*)\)/.exec(stderr);
  if (!m) return null;
  const each = {};
  for (const part of m[3].split(', ')) {
    const at = part.lastIndexOf(': ');
    each[part.slice(0, at)] = Number(part.slice(at + 2));
  }
  return { chunks: Number(m[1]), sources: Number(m[2]), each };
}

test('CLI swarm: `lanvan get` fetches from the box and from a page at once; both send chunks', { timeout: 240000 }, async () => {
  const file = await storeFile(box, 'cli swarm 64MiB.bin', 64 * MiB + 4321, 1212);
  const b = await holder(file);
  const path = join(out, 'both.bin');
  const t0 = Date.now();
  const r = await get(file, path).done;
  const ms = Date.now() - t0;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha256(readFileSync(path)), file.sha256, 'the SHA-256 of what the CLI saved is the file\'s');
  assert.doesNotMatch(r.stderr, /over HTTP/, r.stderr);
  const c = counts(r.stderr);
  assert.ok(c, `the final line names the sources: ${r.stderr}`);
  console.log(`# ${file.chunks} chunks in ${ms} ms: ${JSON.stringify(c.each)}`);
  assert.equal(c.sources, 2, r.stderr);
  assert.ok(c.each['the box'] > 0, `the box sent chunks: ${r.stderr}`);
  assert.ok(c.each[b.name] > 0, `page B (${b.name}) sent chunks: ${r.stderr}`);
  assert.equal(c.each['the box'] + c.each[b.name], file.chunks, 'every chunk once');
  assert.equal(c.chunks, file.chunks);
  // While it ran, the progress said how many sources served (a line when it changed).
  assert.match(r.stderr, /% \(.* · 2 sources\n/, r.stderr);
  // The page served at least what the CLI took from it (endgame duplicates it lost, too).
  const served = await b.page.evaluate(() => window.lanvan.swarm.served);
  assert.ok(served >= c.each[b.name], `page B served ${served}`);
  await b.context.close();
});

test('CLI swarm: the page closing mid-download leaves the box to finish it', { timeout: 240000 }, async () => {
  const file = await storeFile(box, 'cli swarm leaving 64MiB.bin', 64 * MiB, 1313);
  const b = await holder(file);
  const path = join(out, 'leaving.bin');
  let closing = null;
  let seenAtClose = null;
  let latest = '';
  const run = get(file, path, (stderr) => {
    latest = stderr;
    // B has joined (the progress line says 2 sources) and served some chunks: B's page
    // goes away.
    if (!closing && /· 2 sources\n/.test(stderr)) {
      closing = b.page.waitForFunction(() => window.lanvan.swarm.served >= 2, null, { polling: 10, timeout: 60000 })
        .then(() => { seenAtClose = latest; return b.context.close(); });
    }
  });
  const r = await run.done;
  assert.ok(closing, `B joined the download: ${r.stderr}`);
  await closing;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha256(readFileSync(path)), file.sha256);
  assert.doesNotMatch(r.stderr, /over HTTP/, 'it carried on over the data channel');
  assert.doesNotMatch(seenAtClose, /chunks over/, `B left before the download was done: ${seenAtClose}`);
  const done = /(\d+) chunks over (?:a data channel|data channels) from (\d+) sources? \((.*)\)/.exec(r.stderr);
  assert.ok(done, r.stderr);
  assert.equal(Number(done[1]), file.chunks);
  assert.match(done[3], /the box(: \d+)?/);
  console.log(`# B left after serving 2+ chunks; ${done[0]}${/no longer a source.*/.exec(r.stderr)?.[0] ? `; ${/no longer a source.*/.exec(r.stderr)[0]}` : ''}`);
});

test('CLI swarm: a page sending damaged chunks is dropped and told so; the file arrives intact', { timeout: 240000 }, async () => {
  const file = await storeFile(box, 'cli swarm lying 48MiB.bin', 48 * MiB + 77, 1414);
  const b = await holder(file);
  // The test hook: B flips a byte in every chunk it serves (its headers name the right hash).
  await b.page.evaluate(() => { window.lanvan.swarm.corrupt = true; });
  const path = join(out, 'lying.bin');
  const r = await get(file, path, null).done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sha256(readFileSync(path)), file.sha256, 'no damaged byte reached the file');
  assert.match(r.stderr, new RegExp(`${b.name} is no longer a source \\(it sent a chunk that failed its SHA-256\\)`), r.stderr);
  assert.match(r.stderr, new RegExp(`${file.chunks} chunks over a data channel from 1 source \\(the box\\)`), r.stderr);
  assert.doesNotMatch(r.stderr, /over HTTP/, r.stderr);
  // B was told why it was dropped.
  await b.page.waitForFunction(() => window.lanvan.swarm.log.some((e) => e.event === 'dropped_by_peer'), null, { timeout: 5000 });
  await b.context.close();
});

test('CLI swarm: `lanvan share` serves a page downloading the same file, beside the box', { timeout: 240000 }, async () => {
  const file = await storeFile(box, 'cli shared 48MiB.bin', 48 * MiB + 99, 1515);
  // The same bytes on this terminal's disk (makeFile and storeFile fill alike from a seed).
  const local = makeFile(out, 'my copy.bin', file.size, 1515);
  assert.equal(local.sha256, file.sha256);
  const sharing = runCli(['share', local.path], { box: origin, state, timeout: 200000 });
  let stderr = '';
  sharing.proc.stderr.on('data', (d) => { stderr += d; });
  await waitFor(() => stderr.includes('Ctrl-C to stop'), 30000, `the CLI shares the file: ${stderr}`);
  assert.doesNotMatch(stderr, /holds no file with these bytes/, stderr);
  const cli = `${readFileSync(join(state, 'lanvan/device-id'), 'utf8').trim()}-share`;
  const a = await p2pPage();
  const row = a.page.locator(`#files li.file[data-name="${file.name}"]`);
  await row.waitFor({ timeout: 10000 });
  const [saved] = await Promise.all([
    a.page.waitForEvent('download', { timeout: 120000 }),
    row.locator('a.btn', { hasText: 'Download' }).click(),
  ]);
  assert.equal(sha256(readFileSync(await saved.path())), file.sha256);
  const counts = await a.page.evaluate(() => window.lanvan.swarm.last.counts);
  console.log(`# page A: ${JSON.stringify(counts)}`);
  assert.ok(counts[`page:${cli}`] > 0, `the CLI sent chunks: ${JSON.stringify(counts)}; CLI said:\n${stderr}`);
  assert.ok(counts.box > 0, JSON.stringify(counts));
  assert.equal(counts.box + counts[`page:${cli}`], file.chunks);
  await waitFor(() => stderr.includes(`serving ${a.name}`), 5000, `the CLI named who it served: ${stderr}`);
  sharing.proc.kill('SIGINT');
  await sharing.done;
  await a.context.close();
});
