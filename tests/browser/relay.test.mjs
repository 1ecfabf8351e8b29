// Device-to-device sends through the box's relay, in real headless Chromium: two pages
// (two devices, each its own browser context) at an insecure LAN-like origin. The sender
// picks "Send file" on the other device, the receiver accepts in the prompt, and the file
// is saved through the browser's download mechanism.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  startBox, launch, openApp, makeFile, sha256, tempDir, recordStatuses, ARTIFACTS,
} from './harness.mjs';

const MiB = 1 << 20;
let browser;
let box;
const files = tempDir('relay-files');

before(async () => {
  browser = await launch();
  box = await startBox();
});
after(async () => {
  await browser?.close();
  await box?.stop();
});

/** Opens two devices and waits until each lists the other with a "Send file" button. */
async function twoDevices() {
  const a = await openApp(browser, box);
  const b = await openApp(browser, box);
  const idA = await a.page.evaluate(() => window.lanvan.me.id);
  const idB = await b.page.evaluate(() => window.lanvan.me.id);
  await a.page.locator(`button[data-send="${idB}"]`).waitFor({ timeout: 10000 });
  await b.page.locator(`button[data-send="${idA}"]`).waitFor({ timeout: 10000 });
  return { a, b, idA, idB };
}

async function pickFor(page, deviceId, path) {
  const [chooser] = await Promise.all([
    page.waitForEvent('filechooser'),
    page.click(`button[data-send="${deviceId}"]`),
  ]);
  await chooser.setFiles(path);
}

test('a 50 MiB file sent through the relay arrives with the same SHA-256', { timeout: 120000 }, async () => {
  const { a, b, idB } = await twoDevices();
  const file = makeFile(files, 'relay 50MiB.bin', 50 * MiB, 4242);
  await recordStatuses(a.page, 'transfers');
  await recordStatuses(b.page, 'transfers');
  await pickFor(a.page, idB, file.path);

  const prompt = b.page.locator('#offer[open]');
  await prompt.waitFor({ timeout: 10000 });
  assert.match(await prompt.locator('.offer-text').textContent(), /wants to send you a file/);
  assert.equal(await prompt.locator('.offer-name').textContent(), 'relay 50MiB.bin');
  assert.equal(await prompt.locator('.offer-size').textContent(), '52.4 MB');
  // What a phone sees: the prompt over the page at 360 px (a test artifact).
  await b.page.setViewportSize({ width: 360, height: 780 });
  mkdirSync(ARTIFACTS, { recursive: true });
  await b.page.screenshot({ path: join(ARTIFACTS, 'relay-offer-360.png') });
  console.log(`# screenshot: ${join(ARTIFACTS, 'relay-offer-360.png')}`);

  const [download] = await Promise.all([
    b.page.waitForEvent('download', { timeout: 90000 }),
    b.page.click('#offer [data-answer="accept"]'),
  ]);
  assert.equal(download.suggestedFilename(), 'relay 50MiB.bin');
  assert.equal(sha256(readFileSync(await download.path())), file.sha256);

  await a.page.locator('#transfers li[data-state="done"] .status', { hasText: 'Delivered to' })
    .waitFor({ timeout: 10000 });
  await b.page.locator('#transfers li[data-state="done"] .status', { hasText: 'Received · 52.4 MB' })
    .waitFor({ timeout: 10000 });
  // Both sides showed progress with percent, speed and time left on the way.
  for (const page of [a.page, b.page]) {
    const seen = await page.evaluate(() => window.statuses);
    assert.ok(seen.some((s) => /^(Sending|Receiving) · \d+% of 52\.4 MB · .+\/s · .+ left$/.test(s)),
      `progress with speed and time left: ${JSON.stringify(seen)}`);
  }
  // Nothing of a live send stays on the box.
  const list = await box.json('/api/files');
  assert.ok(!list.files.some((f) => f.name === 'relay 50MiB.bin'));
  await a.context.close();
  await b.context.close();
});

test('a declined file tells the sender, and nothing is downloaded', { timeout: 60000 }, async () => {
  const { a, b, idB } = await twoDevices();
  const file = makeFile(files, 'unwanted.txt', 1000, 7);
  let downloads = 0;
  b.page.on('download', () => downloads++);
  await pickFor(a.page, idB, file.path);
  await b.page.locator('#offer[open]').waitFor({ timeout: 10000 });
  await b.page.keyboard.press('Escape'); // closing the prompt declines
  await a.page.locator('#transfers li[data-state="error"] .status', { hasText: 'declined the file' })
    .waitFor({ timeout: 10000 });
  assert.equal(await b.page.locator('#offer[open]').count(), 0);
  assert.equal(downloads, 0);
  await a.context.close();
  await b.context.close();
});

test('a trusted device\'s file downloads without a prompt; the sender can cancel', { timeout: 60000 }, async () => {
  const { a, b, idA, idB } = await twoDevices();
  await b.page.click(`button[data-auto="${idA}"]`);
  assert.equal(await b.page.getAttribute(`button[data-auto="${idA}"]`, 'aria-pressed'), 'true');
  const small = makeFile(files, 'trusted.bin', 3 * MiB + 17, 99);
  const [download] = await Promise.all([
    b.page.waitForEvent('download', { timeout: 30000 }),
    pickFor(a.page, idB, small.path),
  ]);
  assert.equal(sha256(readFileSync(await download.path())), small.sha256);
  assert.equal(await b.page.locator('#offer[open]').count(), 0, 'no prompt for a trusted device');

  // The trust survives a reload of the receiver's page.
  await b.page.reload();
  await b.page.locator(`button[data-auto="${idA}"][aria-pressed="true"]`).waitFor({ timeout: 10000 });
  await b.context.close();

  // The receiver is gone: the send waits for an answer, and the sender cancels it.
  const c = await openApp(browser, box);
  const idC = await c.page.evaluate(() => window.lanvan.me.id);
  await a.page.locator(`button[data-send="${idC}"]`).waitFor({ timeout: 10000 });
  await pickFor(a.page, idC, small.path);
  await c.page.locator('#offer[open]').waitFor({ timeout: 10000 });
  const waiting = a.page.locator('#transfers li[data-state="waiting"]');
  await waiting.waitFor({ timeout: 10000 });
  await waiting.locator('button').click();
  await a.page.locator('#transfers li[data-state="error"] .status', { hasText: 'Cancelled.' })
    .waitFor({ timeout: 10000 });
  // The receiver's prompt goes away, and it is told why.
  await c.page.locator('#offer[open]').waitFor({ state: 'detached', timeout: 10000 });
  await c.page.locator('#toasts', { hasText: 'cancelled “trusted.bin”' }).waitFor({ timeout: 5000 });
  await a.context.close();
  await c.context.close();
});
