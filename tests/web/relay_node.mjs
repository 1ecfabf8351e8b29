// Drives web/relay.js in Node against a real box (started by tests/relay_js.rs), until the
// browser app that loads it lands and a Playwright test takes over:
//   node --experimental-websocket tests/web/relay_node.mjs ws://127.0.0.1:PORT
// Checks relay.js's SHA-256 against Node's, a send between two Relay instances (bytes and
// SHA-256 compared, progress seen, the File read slice by slice), a decline, a cancel
// from the receiver, a send to an offline device left in its inbox and delivered when it
// connects, and a receiver socket dropped mid-file and resumed through relay.attach(). Exits non-zero with a message on the first failure.

import { Relay, Sha256 } from "../../web/relay.js";
import { createHash } from "node:crypto";
import { createRequire } from "node:module";

// Node 22 has a WebSocket like the browser's (20 behind --experimental-websocket); older
// Nodes use the `ws` package (Debian: node-ws), which has the same event interface.
const WebSocket = globalThis.WebSocket || createRequire(import.meta.url)("ws");
// Node 18 has Blob but no File: a Blob with a name is all relay.js uses.
const File = globalThis.File || class extends Blob {
  constructor(parts, name) { super(parts); this.name = name; }
};

const base = process.argv[2];
const fail = (msg) => { console.error("relay_node: " + msg); process.exit(1); };
const check = (cond, msg) => { if (!cond) fail(msg); };
const sha = (bytes) => createHash("sha256").update(bytes).digest("hex");
setTimeout(() => fail("timed out"), 60_000).unref();

// 1. SHA-256 against Node's, across block boundaries and in uneven pieces.
for (const len of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 100_003]) {
  const data = new Uint8Array(len).map((_, i) => (i * 31 + 7) & 255);
  const h = new Sha256();
  for (let i = 0; i < len; i += 37) h.update(data.subarray(i, Math.min(len, i + 37)));
  check(h.hex() === sha(data), `sha256 of ${len} bytes: ${h.hex()} != ${sha(data)}`);
}

function connect(id) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base}/ws/${id}?name=${id}`);
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string" && JSON.parse(ev.data).type === "welcome") resolve(ws);
    });
    ws.addEventListener("error", () => reject(new Error("cannot connect " + id)));
  });
}

/// A File whose slices are counted, to show it is never read whole.
function countingFile(bytes, name) {
  const file = new File([bytes], name);
  const slices = [];
  const orig = file.slice.bind(file);
  file.slice = (a, b) => { slices.push(b - a); return orig(a, b); };
  return { file, slices };
}

function collector() {
  const parts = [];
  return {
    parts,
    writer: { write: (b) => { parts.push(new Uint8Array(b)); }, close: () => {}, abort: () => {} },
    bytes: () => Buffer.concat(parts),
  };
}

const wsA = await connect("node-a");
let wsB = await connect("node-b");
let onOfferB = () => {};
const a = new Relay(wsA);
const b = new Relay(wsB, { onOffer: (o) => onOfferB(o) });

// 2. A 5 MiB + 3 bytes send, hash in relay_end.
{
  const data = new Uint8Array(5 * 1024 * 1024 + 3).map((_, i) => (i * 131) & 255);
  const { file, slices } = countingFile(data, "five.bin");
  const got = collector();
  let progress = 0;
  const received = new Promise((resolve, reject) => {
    onOfferB = (o) => {
      check(o.name === "five.bin" && o.size === data.length && o.from === "node-a", "offer fields");
      o.accept(got.writer, { onComplete: resolve, onError: reject, onProgress: () => progress++ });
    };
  });
  const sent = new Promise((resolve, reject) => {
    a.send(file, "node-b", { onComplete: resolve, onError: reject, onDeclined: reject });
  });
  const [r, s] = await Promise.all([received, sent]);
  check(Buffer.compare(got.bytes(), Buffer.from(data)) === 0, "received bytes differ");
  check(r.sha256 === sha(data) && s.sha256 === sha(data), "completion hashes");
  check(Math.max(...slices) <= 256 * 1024, "file read in chunk-sized slices, not whole");
  check(progress > 0, "progress events");
}

// 3. A decline.
{
  onOfferB = (o) => o.decline("no thanks");
  const r = await new Promise((resolve, reject) =>
    a.send(new File([new Uint8Array(10)], "no.bin"), "node-b", { onDeclined: resolve, onComplete: reject }));
  check(r.reason === "no thanks", "decline reason");
}

// 4. The receiver cancels mid-file; the sender hears who cancelled.
{
  const data = new Uint8Array(32 * 1024 * 1024);
  let incoming;
  onOfferB = (o) => {
    incoming = o;
    let n = 0;
    o.accept({ write: () => { if (++n === 2) o.cancel("stop"); }, close() {}, abort() {} }, {});
  };
  const r = await new Promise((resolve, reject) =>
    a.send(new File([data], "big.bin"), "node-b", { onCancelled: resolve, onComplete: reject }));
  check(r.by === "node-b" && r.reason === "stop", "cancel seen by the sender: " + JSON.stringify(r));
  check(incoming, "offer seen");
}

// 5. To an offline device: left in its inbox, delivered when it connects.
{
  const data = new Uint8Array(700_000).map((_, i) => (i * 7) & 255);
  const stored = await new Promise((resolve, reject) =>
    a.send(new File([data], "later.bin"), "node-c", { onStored: resolve, onError: reject }, { inbox: true }));
  check(/^[0-9a-f]{16}$/.test(stored.inboxId), "inbox id");
  const delivered = new Promise((resolve) => { a.onNotice = (m) => m.type === "relay_delivered" && resolve(m); });
  const got = collector();
  // The Relay listens from the socket's creation: the stored offer follows the welcome.
  const wsC = new WebSocket(`${base}/ws/node-c`);
  const done = new Promise((resolve, reject) => {
    new Relay(wsC, {
      onOffer: (o) => {
        check(o.stored && o.from === "node-a", "stored offer");
        o.accept(got.writer, { onComplete: resolve, onError: reject });
      },
    });
  });
  const r = await done;
  check(r.sha256 === sha(data) && Buffer.compare(got.bytes(), Buffer.from(data)) === 0, "inbox bytes");
  const d = await delivered;
  check(d.inbox_id === stored.inboxId, "delivered notice");
  wsC.close();
}

// 6. The receiver's socket drops mid-file; relay.attach() on a new socket resumes it.
{
  const data = new Uint8Array(6 * 1024 * 1024 + 11).map((_, i) => (i * 13 + 1) & 255);
  const got = collector();
  let writes = 0;
  let resumed = null;
  const received = new Promise((resolve, reject) => {
    onOfferB = (o) => {
      const writer = {
        write: (bytes) => {
          got.writer.write(bytes);
          if (++writes === 3) {
            // Drop the socket, then come back on a new one.
            wsB.close();
            wsB = new WebSocket(`${base}/ws/node-b`);
            b.attach(wsB);
          }
        },
        close() {},
        abort() {},
      };
      o.accept(writer, { onComplete: resolve, onError: reject, onResumed: (r) => { resumed = r; } });
    };
  });
  const sent = new Promise((resolve, reject) =>
    a.send(new File([data], "drop.bin"), "node-b", { onComplete: resolve, onError: reject }));
  const [r] = await Promise.all([received, sent]);
  check(resumed && resumed.fromChunk >= 3, "receiver resumed: " + JSON.stringify(resumed));
  check(r.sha256 === sha(data) && Buffer.compare(got.bytes(), Buffer.from(data)) === 0, "bytes after resume");
}

wsA.close();
wsB.close();
console.log("relay_node: ok");
process.exit(0);
