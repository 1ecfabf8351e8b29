// The browser app in real headless Chromium against the real box on loopback. Pages are
// opened at http://lanvan.test:PORT (mapped to 127.0.0.1 inside the browser), an insecure
// origin like a LAN address, so nothing may rely on crypto.subtle or navigator.clipboard.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  startBox, launch, openApp, waitConnected, fillRandom, sha256, makeFile, tempDir, waitFor,
  lanUrl, ARTIFACTS, recordStatuses,
} from './harness.mjs';

const MiB = 1 << 20;
let browser;
let box;
const files = tempDir('browser-files');

before(async () => {
  browser = await launch();
  box = await startBox();
});
after(async () => {
  await browser?.close();
  await box?.stop();
});

async function downloadSha(page, name) {
  const [dl] = await Promise.all([
    page.waitForEvent('download'),
    page.click(`#files li[data-name="${name}"] a.btn`),
  ]);
  assert.equal(dl.suggestedFilename(), name);
  return sha256(readFileSync(await dl.path()));
}

test('the page is an insecure origin: no crypto.subtle, no navigator.clipboard', { timeout: 90000 }, async () => {
  const { context, page } = await openApp(browser, box);
  const env = await page.evaluate(() => ({
    secure: isSecureContext, subtle: !!globalThis.crypto?.subtle, clipboard: !!navigator.clipboard,
  }));
  assert.deepEqual(env, { secure: false, subtle: false, clipboard: false });
  await context.close();
});

test('a 50 MiB file dropped on the page uploads with progress, is listed, and downloads intact', { timeout: 90000 }, async () => {
  const { context, page } = await openApp(browser, box);
  await recordStatuses(page);
  const size = 50 * MiB;
  const seed = 50;
  const expected = sha256(fillRandom(new Uint8Array(size), seed));
  const overlay = await page.evaluate(({ size, seed, fill }) => {
    const fillRandom = new Function(`return ${fill}`)();
    const file = new File([fillRandom(new Uint8Array(size), seed)], 'drop 50MiB.bin');
    const dt = new DataTransfer();
    dt.items.add(file);
    const fire = (type) => document.body.dispatchEvent(
      new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    fire('dragenter');
    fire('dragover');
    const shown = !document.getElementById('dropzone').hidden;
    fire('drop');
    return shown;
  }, { size, seed, fill: fillRandom.toString() });
  assert.ok(overlay, 'dragging files over the page shows the drop overlay');
  const row = page.locator('#files li[data-name="drop 50MiB.bin"]');
  await row.waitFor({ timeout: 60000 });
  assert.match(await row.locator('.meta').textContent(), /^52\.4 MB · just now · from Linux computer$/);
  const seen = await page.evaluate(() => window.statuses);
  assert.ok(seen.some((s) => /^Sending · \d+% of 52\.4 MB · [\d.]+ [kMG]?B\/s · \d+ s left/.test(s)),
    `a status with percent, speed and time left: ${JSON.stringify(seen)}`);
  assert.ok(seen.some((s) => /^Checking the file · \d+%/.test(s)), 'hashing shows its progress');
  const { files: listed } = await box.json('/api/files');
  assert.equal(listed.find((f) => f.name === 'drop 50MiB.bin').sha256, expected);
  assert.equal(await downloadSha(page, 'drop 50MiB.bin'), expected);
  await context.close();
});

test('an upload interrupted by a reload resumes when the file is chosen again', { timeout: 90000 }, async () => {
  const f = makeFile(files, 'resume.bin', 24 * MiB, 24);
  const { context, page } = await openApp(browser, box);
  // Let 6 chunks through, then hold every further chunk request in the browser.
  let acked = 0;
  const held = [];
  page.on('response', (r) => { if (r.request().method() === 'PUT' && r.status() === 200) acked++; });
  let passed = 0;
  await page.route('**/api/uploads/*/chunks/*', (route) => {
    if (passed < 6) { passed++; route.continue(); } else held.push(route);
  });
  await page.setInputFiles('#pick-files', f.path);
  await waitFor(() => acked >= 6 && held.length > 0, 30000, 'six chunks stored');
  await page.reload();
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  await waitConnected(page);
  const unfinished = page.locator('#uploads li[data-state="unfinished"]');
  await unfinished.waitFor();
  assert.match(await unfinished.textContent(), /resume\.bin.*Unfinished · 25% of 25\.2 MB · choose this file again/);

  await recordStatuses(page);
  const before = (await box.json('/api/status')).bytes_in;
  const putChunks = [];
  page.on('request', (r) => {
    if (r.method() === 'PUT') putChunks.push(Number(r.url().split('/').pop()));
  });
  await page.setInputFiles('#pick-files', f.path);
  await page.locator('#files li[data-name="resume.bin"]').waitFor({ timeout: 30000 });
  const sent = (await box.json('/api/status')).bytes_in - before;
  putChunks.sort((x, y) => x - y);
  assert.deepEqual(putChunks, Array.from({ length: 18 }, (_, i) => i + 6), 'only the missing chunks were sent again');
  assert.ok(sent < f.size - 5 * MiB, `the box received ${sent} bytes, less than the file's ${f.size}`);
  const seen = await page.evaluate(() => window.statuses);
  assert.ok(seen.some((s) => s.includes('resumed at 25%')), JSON.stringify(seen));
  assert.ok(!seen.some((s) => s.startsWith('Checking')), 'a known file is not hashed again');
  assert.equal(await downloadSha(page, 'resume.bin'), f.sha256);
  await context.close();
});

test('an upload survives the box being killed and restarted, on its own', { timeout: 90000 }, async () => {
  const own = await startBox();
  const f = makeFile(files, 'restart.bin', 12 * MiB, 12);
  const { context, page } = await openApp(browser, own);
  let acked = 0;
  const held = [];
  page.on('response', (r) => { if (r.request().method() === 'PUT' && r.status() === 200) acked++; });
  let passed = 0;
  await page.route('**/api/uploads/*/chunks/*', (route) => {
    if (passed < 4) { passed++; route.continue(); } else held.push(route);
  });
  await page.setInputFiles('#pick-files', f.path);
  await waitFor(() => acked >= 4 && held.length > 0, 30000, 'four chunks stored');
  await own.kill();
  await page.locator('#conn[data-state="waiting"]').waitFor({ timeout: 10000 });
  assert.match(await page.locator('#conn-text').textContent(), /^Offline/);
  // The held requests fail as if the box had vanished with them.
  await page.unrouteAll({ behavior: 'ignoreErrors' });
  for (const r of held.splice(0)) await r.abort('connectionreset').catch(() => {});
  await page.locator('#uploads li[data-state="retrying"]').waitFor({ timeout: 10000 });
  assert.match(await page.locator('#uploads .status').textContent(), /The box cannot be reached\. Trying again in \d+ s/);
  const back = await startBox({ dataDir: own.dataDir, port: own.port });
  await waitConnected(page);
  await page.locator('#files li[data-name="restart.bin"]').waitFor({ timeout: 30000 });
  const { files: listed } = await back.json('/api/files');
  assert.equal(listed.find((x) => x.name === 'restart.bin').sha256, f.sha256);
  await context.close();
  await back.stop();
});

test('a clipboard item shared on one page appears on another within 500 ms, and copies', { timeout: 90000 }, async () => {
  const a = await openApp(browser, box);
  const b = await openApp(browser, box);
  const text = `hello from A ${Date.now()}`;
  await b.page.evaluate((text) => {
    new MutationObserver(() => {
      if (!window.seenAt && document.getElementById('clip-current').textContent.includes(text)) {
        window.seenAt = Date.now();
      }
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  }, text);
  await a.page.fill('#clip-text', text);
  const sentAt = await a.page.evaluate(() => {
    document.getElementById('clip-send').click();
    return Date.now();
  });
  const seenAt = await (await b.page.waitForFunction(() => window.seenAt, null, { timeout: 5000 })).jsonValue();
  assert.ok(seenAt - sentAt < 500, `appeared after ${seenAt - sentAt} ms`);
  assert.match(await b.page.locator('#clip-current .meta').textContent(), /^Latest · from Linux computer/);
  assert.match(await a.page.locator('#clip-current .meta').textContent(), /^Latest · from you/);

  // Copy on a plain-HTTP page (the execCommand fallback), then paste it back.
  await b.page.click('#clip-current button');
  await b.page.locator('#clip-current button', { hasText: 'Copied' }).waitFor();
  await b.page.fill('#clip-text', '');
  await b.page.focus('#clip-text');
  await b.page.keyboard.press('Control+V');
  assert.equal(await b.page.inputValue('#clip-text'), text);

  // A second item pushes the first into the history.
  await b.page.fill('#clip-text', 'second item');
  await b.page.keyboard.press('Control+Enter');
  await a.page.locator('#clip-current', { hasText: 'second item' }).waitFor();
  assert.equal(await a.page.locator('#clip-history-count').textContent(), '(1)');
  assert.ok((await a.page.locator('#clip-history').textContent()).includes(text));
  await a.context.close();
  await b.context.close();
});

test('the device list follows pages opening, renaming and closing', { timeout: 90000 }, async () => {
  const own = await startBox();
  const a = await openApp(browser, own);
  const names = async () => a.page.locator('#devices .name').allTextContents();
  assert.deepEqual(await names(), ['Linux computerthis device']);
  const b = await openApp(browser, own);
  const bId = await b.page.evaluate(() => window.lanvan.me.id);
  await a.page.locator(`#devices li[data-id="${bId}"]`).waitFor();
  assert.equal(await a.page.locator('#dev-count').textContent(), '(2)');

  await b.page.fill('#me-name', 'Kitchen tablet');
  await b.page.press('#me-name', 'Enter');
  await a.page.locator(`#devices li[data-id="${bId}"] .name`, { hasText: 'Kitchen tablet' }).waitFor();

  // The name and id are kept by the browser: after a reload it is the same device.
  await b.page.reload();
  await waitConnected(b.page);
  assert.equal(await b.page.evaluate(() => window.lanvan.me.id), bId);
  assert.equal(await b.page.inputValue('#me-name'), 'Kitchen tablet');
  await a.page.waitForTimeout(200);
  assert.equal(await a.page.locator('#devices li').count(), 2);
  assert.equal(await a.page.locator(`#devices li[data-id="${bId}"] .name`).textContent(), 'Kitchen tablet');

  await b.context.close();
  await a.page.locator(`#devices li[data-id="${bId}"]`).waitFor({ state: 'detached', timeout: 5000 });
  assert.equal(await a.page.locator('#dev-count').textContent(), '(1)');
  await a.context.close();
  await own.stop();
});

test('a folder chosen with the folder picker sends every file in it', { timeout: 90000 }, async () => {
  const dir = tempDir('folder');
  const made = [makeFile(join(dir, 'pics'), 'one.jpg', 3000, 1), makeFile(join(dir, 'pics'), 'two.jpg', 5000, 2),
    makeFile(join(dir, 'pics', 'deeper'), 'three.txt', 70, 3)];
  const { context, page } = await openApp(browser, box);
  await page.setInputFiles('#pick-folder', join(dir, 'pics'));
  for (const f of made) await page.locator(`#files li[data-name="${f.name}"]`).waitFor({ timeout: 15000 });
  const { files: listed } = await box.json('/api/files');
  for (const f of made) assert.equal(listed.find((x) => x.name === f.name).sha256, f.sha256);
  await context.close();
});

test('delete removes a file on every open page', { timeout: 90000 }, async () => {
  const a = await openApp(browser, box);
  const b = await openApp(browser, box);
  await a.page.setInputFiles('#pick-files', { name: 'doomed.txt', mimeType: 'text/plain', buffer: Buffer.from('bye') });
  await b.page.locator('#files li[data-name="doomed.txt"]').waitFor();
  a.page.once('dialog', (d) => d.accept());
  await a.page.click('#files li[data-name="doomed.txt"] button');
  await b.page.locator('#files li[data-name="doomed.txt"]').waitFor({ state: 'detached' });
  assert.ok(!(await box.json('/api/files')).files.some((f) => f.name === 'doomed.txt'));
  await a.context.close();
  await b.context.close();
});

test('errors from the box are shown in plain words', { timeout: 90000 }, async () => {
  const own = await startBox({ settings: ['store.quota=1MiB'] });
  const { context, page } = await openApp(browser, own);
  await page.setInputFiles('#pick-files', { name: 'big.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(2 * MiB, 1) });
  const row = page.locator('#uploads li[data-state="error"]');
  await row.waitFor({ timeout: 10000 });
  assert.match(await row.locator('.status').textContent(), /^The box has reached its storage limit\. Delete some files/);
  await page.evaluate(() => window.lanvan.uploader.add([new File(['x'], '..')]));
  await page.locator('#uploads li[data-state="error"]', { hasText: 'cannot use this file name' }).waitFor();
  await context.close();
  await own.stop();
});

test('phone and desktop layouts: no sideways scrolling, labelled controls, screenshots', { timeout: 90000 }, async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  // Some content, so the screenshots show every part of the app.
  await fetch(`${lanUrl(box).replace('lanvan.test', '127.0.0.1')}/api/files`);
  for (const [name, options] of [
    ['app-360-light.png', { viewport: { width: 360, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 }],
    ['app-360-dark.png', { viewport: { width: 360, height: 760 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2, colorScheme: 'dark' }],
    ['app-1280-light.png', { viewport: { width: 1280, height: 900 } }],
  ]) {
    const { context, page } = await openApp(browser, box, options);
    await page.fill('#clip-text', 'A shared note: the Wi-Fi password is on the fridge.');
    await page.click('#clip-send');
    await page.locator('#clip-current').waitFor();
    await page.locator('#qr svg').waitFor();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= options.viewport.width, `${name}: page is ${width} px wide`);
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
      .filter((e) => !e.closest('[hidden]'))
      .filter((e) => !(e.getAttribute('aria-label') || e.labels?.[0]?.textContent.trim() || e.textContent.trim()))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unlabelled, []);
    const path = join(ARTIFACTS, name);
    await page.screenshot({ path, fullPage: true });
    console.log(`screenshot: ${path}`);
    await context.close();
  }
});

test('keyboard only: Tab reaches the file chooser, Enter opens it, Ctrl+Enter shares text', { timeout: 90000 }, async () => {
  const { context, page } = await openApp(browser, box);
  await page.keyboard.press('Tab');
  const first = await page.evaluate(() => document.activeElement.id);
  assert.equal(first, 'choose-files');
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.keyboard.press('Enter')]);
  assert.ok(chooser.isMultiple());
  await chooser.setFiles({ name: 'typed.txt', mimeType: 'text/plain', buffer: Buffer.from('by keyboard') });
  await page.locator('#files li[data-name="typed.txt"]').waitFor();
  // Then on through the clipboard: type, Ctrl+Enter shares.
  await page.focus('#clip-text');
  await page.keyboard.type('typed, not clicked');
  await page.keyboard.press('Control+Enter');
  await page.locator('#clip-current', { hasText: 'typed, not clicked' }).waitFor();
  await context.close();
});

test('the QR code is drawn by the box for the address the page was opened at', { timeout: 90000 }, async () => {
  const { context, page } = await openApp(browser, box);
  await page.locator('#qr svg').waitFor();
  assert.equal(await page.locator('#box-url').textContent(), lanUrl(box));
  assert.equal(await page.locator('#qr').getAttribute('aria-label'), `QR code of ${lanUrl(box)}/`);
  await context.close();
});

test('files are sent one at a time, or several at once, as the setting says', { timeout: 90000 }, async () => {
  const own = await startBox();
  const { context, page } = await openApp(browser, own);
  const picks = [1, 2, 3, 4].map((i) => makeFile(files, `par${i}.bin`, 3 * MiB, 300 + i));
  const maxActive = async (limit, batch) => {
    if (!(await page.locator('#parallel').isVisible())) await page.click('.settings summary');
    await page.selectOption('#parallel', String(limit));
    await page.evaluate(() => {
      window.maxActive = 0;
      const count = () => {
        const n = document.querySelectorAll('#uploads li:is([data-state="hashing"],[data-state="sending"],[data-state="finishing"])').length;
        window.maxActive = Math.max(window.maxActive, n);
      };
      window.activeObserver?.disconnect();
      window.activeObserver = new MutationObserver(count);
      window.activeObserver.observe(document.getElementById('uploads'), { subtree: true, attributes: true, attributeFilter: ['data-state'] });
    });
    await page.setInputFiles('#pick-files', batch.map((f) => f.path));
    for (const f of batch) await page.locator(`#files li[data-name="${f.name}"]`).waitFor({ timeout: 30000 });
    return page.evaluate(() => window.maxActive);
  };
  assert.equal(await maxActive(1, picks.slice(0, 2)), 1);
  assert.equal(await maxActive(3, picks.slice(2)), 2, 'both files of the batch went at once');
  // The setting is kept by the browser.
  await page.reload();
  assert.equal(await page.locator('#parallel').inputValue(), '3');
  await context.close();
  await own.stop();
});

test('a 1 GiB file is sent without the page holding it in memory', { timeout: 180000 }, async () => {
  const own = await startBox();
  const big = makeFile(files, 'big1g.bin', 1024 * MiB, 1024);
  // Its own browser, so its renderer process holds nothing from other tests.
  const solo = await launch();
  const { context, page } = await openApp(solo, own);
  const cdp = await solo.newBrowserCDPSession();
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo');
  const renderers = processInfo.filter((p) => p.type === 'renderer').map((p) => p.id);
  const rss = () => renderers.reduce((sum, pid) => {
    try {
      const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return sum + (kb ? Number(kb[1]) * 1024 : 0);
    } catch { return sum; }
  }, 0);
  const baseline = rss();
  let peak = baseline;
  const sampler = setInterval(() => { peak = Math.max(peak, rss()); }, 50);
  await page.setInputFiles('#pick-files', big.path);
  await page.locator('#files li[data-name="big1g.bin"]').waitFor({ timeout: 170000 });
  clearInterval(sampler);
  const grew = peak - baseline;
  console.log(`renderer RSS: ${(baseline / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB while sending 1 GiB`);
  assert.ok(renderers.length > 0);
  // Each 1 MiB slice read for hashing is garbage at once; V8 frees it in batches, so RSS
  // saw-tooths (peak growth measured 235 to 356 MiB, more when the CPU is busy, since
  // collection then lags) but does not follow the file's size. Holding the file would
  // grow it by at least 1 GiB.
  assert.ok(grew < 512 * MiB, `the page grew by ${(grew / MiB).toFixed(0)} MiB`);
  const { files: listed } = await own.json('/api/files');
  assert.equal(listed[0].sha256, big.sha256);
  await solo.close();
  await own.stop();
  rmSync(big.path);
});
