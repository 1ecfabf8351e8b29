// The app's JavaScript SHA-256 (web/sha256.js): the NIST vectors, every split of a message
// across update() calls, and agreement with the box's own hashes of the same bytes, the
// box checking each chunk's hash and the whole file's as a browser's upload makes it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Sha256, sha256hex } from '../../web/sha256.js';
import { startBox, fillRandom } from './harness.mjs';

const hex = (s) => Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16));

test('NIST FIPS 180-4 example vectors and SHAVS short messages', () => {
  const vectors = [
    ['', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'],
    ['abc', 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'],
    ['abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq',
      '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1'],
    ['abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu',
      'cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1'],
  ];
  for (const [msg, md] of vectors) assert.equal(sha256hex(msg), md, `"${msg}"`);
  // SHA256ShortMsg.rsp, Len = 8 and 16.
  assert.equal(sha256hex(hex('d3')), '28969cdfa74a12c82f3bad960b0b000aca2ac329deea5c2328ebc6f2ba9802c1');
  assert.equal(sha256hex(hex('11af')), '5ca7133fa735326081558ac312c620eeca9970d1e70a4b95533d956f072d1f98');
  // One million times "a", fed in uneven pieces.
  const h = new Sha256();
  const a = new Uint8Array(1000).fill(0x61);
  for (let n = 0; n < 1000000;) {
    const take = Math.min(1 + (n % 997), 1000000 - n, 1000);
    h.update(a.subarray(0, take));
    n += take;
  }
  assert.equal(h.hex(), 'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0');
});

test('every length around the block and padding boundaries, split at every point', () => {
  const data = fillRandom(new Uint8Array(300), 3);
  for (let len = 0; len <= 200; len++) {
    const msg = data.subarray(0, len);
    const want = createHash('sha256').update(msg).digest('hex');
    assert.equal(sha256hex(msg), want, `length ${len}`);
    for (let cut = 0; cut <= len; cut += len > 130 ? 7 : 1) {
      const h = new Sha256().update(msg.subarray(0, cut)).update(msg.subarray(cut));
      assert.equal(h.hex(), want, `length ${len} cut at ${cut}`);
    }
  }
});

let box;
before(async () => { box = await startBox(); });
after(async () => { await box?.stop(); });

/** Uploads `data` the way the app does: JS hashes for every chunk and the whole file. */
async function upload(name, data) {
  const sha256 = sha256hex(data);
  let r = await fetch(`${box.url}/api/uploads`, {
    method: 'POST',
    body: JSON.stringify({ name, size: data.length, sha256, device_id: 'sha-test' }),
  });
  const st = await r.json();
  assert.ok(r.status === 201, `create ${name}: ${r.status} ${JSON.stringify(st)}`);
  for (let i = 0; i < st.chunks; i++) {
    const chunk = data.subarray(i * st.chunk_size, (i + 1) * st.chunk_size);
    r = await fetch(`${box.url}/api/uploads/${st.id}/chunks/${i}`, {
      method: 'PUT', body: chunk, headers: { 'x-chunk-sha256': sha256hex(chunk) },
    });
    assert.equal(r.status, 200, `chunk ${i} of ${name}: ${await r.text()}`);
  }
  r = await fetch(`${box.url}/api/uploads/${st.id}/finish`, { method: 'POST' });
  const fin = await r.json();
  assert.equal(r.status, 201, JSON.stringify(fin));
  return { sha256, file: fin.file };
}

test('the box computes the same SHA-256 as the JS for the same bytes', async () => {
  const MiB = 1 << 20;
  const sizes = [0, 1, 55, 56, 63, 64, 65, 1000, MiB - 1, MiB, MiB + 1, 3 * MiB + 5];
  for (const [i, size] of sizes.entries()) {
    const data = fillRandom(new Uint8Array(size), 100 + i);
    const { sha256, file } = await upload(`f${i}.bin`, data);
    assert.equal(file.sha256, sha256, `size ${size}`);
  }
  const { files } = await box.json('/api/files');
  assert.equal(files.length, sizes.length);
});
