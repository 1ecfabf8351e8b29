// Test support for the browser tests: starts the real box binary on a loopback port with
// its own data folder, launches Debian's Chromium headless through playwright-core, and
// makes deterministic test files.

import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
export const BIN = process.env.LANVAN_BIN
  || join(process.env.CARGO_TARGET_DIR || join(process.env.HOME, '.cache/lanvan-target'), 'debug/lanvan');
export const ARTIFACTS = join(ROOT, 'test-artifacts');

/**
 * Starts `lanvan serve` on 127.0.0.1 (port 0 = any free one). Resolves when it listens.
 * `host` is another address to listen on: only ever one inside a network namespace the
 * test made (tests/browser/p2p.test.mjs), never the machine's real LAN.
 */
export function startBox({ settings = [], dataDir, port = 0, host = '127.0.0.1' } = {}) {
  dataDir ||= mkdtempSync(join(tmpdir(), 'lanvan-browser-'));
  const args = ['serve', '--listen', `${host}:${port}`, '--data-dir', dataDir];
  for (const s of settings) args.push('-s', s);
  const proc = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`box did not start:\n${log}`)), 20000);
    proc.on('exit', (code) => rej(new Error(`box exited (${code}):\n${log}`)));
    proc.stderr.on('data', (d) => {
      log += d;
      if (process.env.LANVAN_TEST_LOG) process.stderr.write(`[box] ${d}`);
      const m = /listening on (\S+)\r?\n/.exec(log);
      if (m && !box.url) {
        clearTimeout(timer);
        box.addr = m[1];
        box.port = Number(m[1].split(':').pop());
        box.url = `http://${m[1]}`;
        res(box);
      }
    });
    const box = {
      proc, dataDir, url: null,
      /** SIGKILLs the box and waits for it to be gone. */
      kill: () => new Promise((r) => {
        if (proc.exitCode !== null || proc.signalCode) return r();
        proc.removeAllListeners('exit');
        proc.on('exit', () => r());
        proc.kill('SIGKILL');
      }),
      async stop(keepData = false) {
        await box.kill();
        if (!keepData) rmSync(dataDir, { recursive: true, force: true });
      },
      async json(path, init) {
        const r = await fetch(box.url + path, init);
        return r.json();
      },
    };
  });
}

/**
 * `lanvan.test` resolves to 127.0.0.1 inside this browser only. Pages opened there are a
 * plain-HTTP, non-loopback origin, like `http://192.168.1.20:8080` on a LAN: no
 * crypto.subtle, no navigator.clipboard, no service workers. Traffic stays on loopback.
 */
export const LAN_HOST = 'lanvan.test';

export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run',
  `--host-resolver-rules=MAP ${LAN_HOST} 127.0.0.1`,
  // Never a proxy: every request of the tests stays on loopback.
  '--no-proxy-server',
];

/** The box's URL as a LAN device would see it (an insecure origin). */
export const lanUrl = (box) => `http://${LAN_HOST}:${box.port}`;

/**
 * Launches headless Chromium. Playwright gives every launch a fresh, empty user-data dir
 * of its own (it refuses `--user-data-dir` in `args`), and each context is a fresh profile
 * with empty localStorage, so two contexts are two different devices.
 */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/**
 * Opens the app in a new context (a new device) and waits until it is connected. `origin`
 * replaces the LAN-like `lanvan.test` origin (e.g. the namespace address of the P2P tests).
 */
export async function openApp(browser, box, { origin, ...options } = {}) {
  const context = await browser.newContext({ acceptDownloads: true, ...options });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  // File-chooser interception is switched on in the browser when the first listener is
  // added. Switching it on here, long before any click, means a later
  // waitForEvent('filechooser') cannot lose a race with a fast click or key press.
  page.on('filechooser', () => {});
  await page.goto((origin || lanUrl(box)) + '/');
  await waitConnected(page);
  return { context, page };
}

export async function waitConnected(page) {
  await page.locator('#conn[data-state="open"]').waitFor({ timeout: 10000 });
}

/** Deterministic pseudo-random bytes (xorshift32), the same in Node and in a page. */
export function fillRandom(u8, seed) {
  let x = seed >>> 0 || 1;
  const words = new Uint32Array(u8.buffer, u8.byteOffset, u8.length >>> 2);
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  for (let i = words.length * 4; i < u8.length; i++) u8[i] = i & 0xff;
  return u8;
}

export function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex');
}

/** Writes a pseudo-random test file and returns its path and SHA-256. */
export function makeFile(dir, name, size, seed) {
  mkdirSync(dir, { recursive: true });
  const data = fillRandom(new Uint8Array(size), seed);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, size, sha256: sha256(data), name };
}

// Scratch folders (test files, downloads) go when the test process ends, so runs don't
// fill /tmp with hundreds of MB each; KEEP=1 keeps them for a post-mortem.
const scratch = [];
process.on('exit', () => {
  if (process.env.KEEP) return;
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

export function tempDir(tag) {
  const dir = mkdtempSync(join(tmpdir(), `lanvan-${tag}-`));
  scratch.push(dir);
  return dir;
}

export async function waitFor(cond, ms = 10000, what = 'condition') {
  const until = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Every status text the rows of list `#id` show (`uploads` or `transfers`), collected in the
 * page as it changes, into `window.statuses`.
 */
export async function recordStatuses(page, id = 'uploads') {
  await page.evaluate((id) => {
    window.statuses = [];
    const list = document.getElementById(id);
    new MutationObserver(() => {
      for (const s of list.querySelectorAll('.status')) {
        if (window.statuses.at(-1) !== s.textContent) window.statuses.push(s.textContent);
      }
    }).observe(list, { subtree: true, childList: true, characterData: true });
  }, id);
}

/**
 * Chromium and a box listening on `host`, the LAN address of the network namespace made by
 * scripts/netns-lan.sh (never the machine's real LAN), with the box's STUN on `stunPort`
 * (0: none). `origin` is the box's URL as the namespace's devices see it.
 */
export async function startLan(host, stunPort) {
  const browser = await launch();
  const box = await startBox({ host, settings: [`p2p.stun_port=${stunPort}`] });
  return { browser, box, origin: `http://${host}:${box.port}` };
}

/**
 * Cuts UDP inside the test's own network namespace with nft table `table`: `cut(...match)`
 * drops datagrams leaving its sockets that `match` (nft words; none: all UDP) until
 * `uncut()`, which is harmless when nothing is cut.
 */
export function udpCutter(table) {
  const nft = (args, mayFail = false) => {
    try { execFileSync('nft', args, { stdio: 'pipe' }); } catch (e) { if (!mayFail) throw e; }
  };
  return {
    cut(...match) {
      nft(['add', 'table', 'inet', table]);
      nft(['add', 'chain', 'inet', table, 'out', '{ type filter hook output priority 0 ; }']);
      nft(['add', 'rule', 'inet', table, 'out', 'meta', 'l4proto', 'udp', ...match, 'drop']);
    },
    uncut: () => nft(['delete', 'table', 'inet', table], true),
  };
}

/**
 * Runs the `lanvan` command line: `runCli(['get', 'a.bin'], {box, state})` with `--box` set
 * to `box` (unless null: mDNS), `--name`, and `XDG_STATE_HOME` = `state` (its device id).
 * Returns `{proc, done}`; `done` resolves to `{code, stdout, stderr}`; `onStderr(all)` sees
 * stderr as it grows. Killed after `timeout` ms.
 */
export function runCli(args, { box, state, name = 'CLI test', timeout = 120000, onStderr } = {}) {
  const all = box ? [...args, '--box', box] : args;
  const env = { ...process.env, XDG_STATE_HOME: state };
  delete env.LANVAN_BOX;
  const proc = spawn(BIN, [...all, '--name', name], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.LANVAN_TEST_LOG) process.stderr.write(`[cli] ${d}`);
    onStderr?.(stderr);
  });
  const done = new Promise((res, rej) => {
    const t = setTimeout(() => { proc.kill('SIGKILL'); rej(new Error(`lanvan ${args.join(' ')} ran over ${timeout} ms:\n${stderr}`)); }, timeout);
    proc.on('exit', (code) => { clearTimeout(t); res({ code, stdout, stderr }); });
  });
  return { proc, done };
}

/**
 * Stores `size` pseudo-random bytes (`seed`) on the box as `name`, as the app uploads
 * (create, chunks with their SHA-256, finish). Resolves to `{name, size, sha256, chunks}`,
 * `chunks` being the chunk count of its manifest (the chunk protocol's chunks).
 */
export async function storeFile(box, name, size, seed) {
  const data = fillRandom(new Uint8Array(size), seed);
  const hash = sha256(data);
  let r = await fetch(`${box.url}/api/uploads`, {
    method: 'POST', body: JSON.stringify({ name, size, sha256: hash, device_id: 'test-store' }),
  });
  const st = await r.json();
  if (r.status !== 201 && r.status !== 200) throw new Error(`create ${name}: ${r.status} ${JSON.stringify(st)}`);
  if (!st.complete) {
    for (let i = 0; i < st.chunks; i++) {
      const chunk = data.subarray(i * st.chunk_size, (i + 1) * st.chunk_size);
      r = await fetch(`${box.url}/api/uploads/${st.id}/chunks/${i}`, {
        method: 'PUT', body: chunk, headers: { 'x-chunk-sha256': sha256(chunk) },
      });
      if (r.status !== 200) throw new Error(`${name}: chunk ${i}: ${r.status}`);
    }
    r = await fetch(`${box.url}/api/uploads/${st.id}/finish`, { method: 'POST' });
    if (r.status !== 201) throw new Error(`${name}: finish: ${r.status}`);
  }
  r = await fetch(`${box.url}/api/files/${encodeURIComponent(name)}/manifest`);
  if (r.status !== 200) throw new Error(`${name}: manifest: ${r.status}`);
  return { name, size, sha256: hash, chunks: (await r.json()).chunks.length };
}
