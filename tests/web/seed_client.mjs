// A client written only from shared/SEED-PROTOCOL.md, the vocabulary clients of the seed
// plans speak, run against a real box (started by tests/seed_js.rs):
//   node --experimental-websocket tests/web/seed_client.mjs ws://127.0.0.1:PORT [--signal-timeout-s N] [--log]
// It knows nothing of LANVan's own code or docs: every message it sends is copied from that
// file's tables, and it checks every answer the tables promise. Extra fields the box adds
// are allowed (the file says the project may add its own). Exits non-zero on the first
// failure; prints "seed_client: ok" at the end. With --log it prints every frame.

import { createRequire } from "node:module";
import { isDeepStrictEqual } from "node:util";

const WebSocket = globalThis.WebSocket || createRequire(import.meta.url)("ws");
const base = process.argv[2];
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const signalTimeoutS = Number(arg("--signal-timeout-s") ?? 60);
const log = process.argv.includes("--log");
const fail = (msg) => { console.error("seed_client: " + msg); process.exit(1); };
const check = (cond, msg) => { if (!cond) fail(msg); };
setTimeout(() => fail("timed out"), 30_000 + signalTimeoutS * 2000).unref();

/// Every field of `want` is in `got` with the same value (extra fields are fine; JSON
/// objects are unordered, so key order is not compared).
function has(got, want, what) {
  for (const [k, v] of Object.entries(want)) {
    check(isDeepStrictEqual(got[k], v),
      `${what}: field ${k} is ${JSON.stringify(got[k])}, want ${JSON.stringify(v)} in ${JSON.stringify(got)}`);
  }
}

/// A socket whose text frames are kept as JSON, to be taken by type.
function open(path, name) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base + path);
    const c = { ws, name, inbox: [], waiters: [], closed: false };
    c.send = (msg) => {
      if (log) console.log(`${name} → ${JSON.stringify(msg)}`);
      ws.send(JSON.stringify(msg));
    };
    c.sendRaw = (text) => ws.send(text);
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data !== "string") return;
      const msg = JSON.parse(ev.data);
      if (log) console.log(`${name} ← ${ev.data}`);
      c.inbox.push(msg);
      c.waiters.splice(0).forEach((w) => w());
    });
    ws.addEventListener("close", () => { c.closed = true; c.waiters.splice(0).forEach((w) => w()); });
    ws.addEventListener("open", () => resolve(c));
    ws.addEventListener("error", () => reject(new Error("cannot open " + path)));
  });
}

/// The next frame of `type` (and matching `pred`), waiting up to `ms`.
async function take(c, type, ms = 5000, pred = () => true) {
  const deadline = Date.now() + ms;
  for (;;) {
    const i = c.inbox.findIndex((m) => m.type === type && pred(m));
    if (i >= 0) return c.inbox.splice(i, 1)[0];
    const left = deadline - Date.now();
    if (left <= 0) fail(`${c.name}: no ${type} within ${ms} ms; got ${JSON.stringify(c.inbox)}`);
    await new Promise((r) => { c.waiters.push(r); setTimeout(r, left); });
  }
}

/// True if a frame of `type` arrives within `ms`.
async function arrives(c, type, ms) {
  await new Promise((r) => setTimeout(r, ms));
  return c.inbox.some((m) => m.type === type);
}

const sdpOffer = { type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n" };
const sdpAnswer = { type: "answer", sdp: "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" };
const cand = { candidate: "candidate:1 1 udp 2122260223 192.168.1.20 54321 typ host", sdpMid: "0", sdpMLineIndex: 0 };

// Transport: WebSocket at /ws/{device_id}, ids chosen by the client.
const suffix = Math.random().toString(36).slice(2, 8);
const A = "seed-a-" + suffix, B = "seed-b-" + suffix, C = "seed-c-" + suffix;
const a = await open(`/ws/${A}`, "A");
const b = await open(`/ws/${B}`, "B");
const c = await open(`/ws/${C}`, "C");

// Device presence and P2P opt-in.
a.send({ type: "enable_p2p", device_id: A, device_name: "Seed A" });
const enabled = await take(a, "p2p_enabled");
check(typeof enabled.message === "string", "p2p_enabled has a message");
b.send({ type: "enable_p2p", device_id: B, device_name: "Seed B" });
await take(b, "p2p_enabled");
c.send({ type: "enable_p2p", device_id: C, device_name: "Seed C" });
await take(c, "p2p_enabled");
const listed = (m, ids) => ids.every((id) => m.devices.some((d) => d.id === id && typeof d.name === "string"));
await take(a, "p2p_devices_update", 5000, (m) => listed(m, [A, B, C]));
const listB = await take(b, "p2p_devices_update", 5000, (m) => listed(m, [A, B, C]));
check(listB.devices.find((d) => d.id === A).name === "Seed A", "A's name in the list");

// Request / accept.
a.send({ type: "p2p_request", from: A, to: B });
const received = await take(b, "p2p_request_received");
has(received, { from: A, from_name: "Seed A" }, "p2p_request_received");
const R = received.request_id;
check(R !== undefined && R !== null, "request_id given");
b.send({ type: "p2p_accept", from: A, to: B });
has(await take(a, "p2p_connection_accepted"), { to: B, start_webrtc: true, request_id: R }, "p2p_connection_accepted");
has(await take(b, "p2p_request_accepted"), { from: A, start_webrtc: true, request_id: R }, "p2p_request_accepted");
has(await take(a, "webrtc_handshake_start"), { is_initiator: true, peer_device_id: B, request_id: R }, "handshake A");
has(await take(b, "webrtc_handshake_start"), { is_initiator: false, peer_device_id: A, request_id: R }, "handshake B");

// Signaling relay, request-scoped form.
a.send({ type: "webrtc_signal", signal_type: "offer", target_device_id: B, request_id: R, offer: sdpOffer });
has(await take(b, "webrtc_offer"), { from_device_id: A, request_id: R, offer: sdpOffer }, "scoped offer");
b.send({ type: "webrtc_signal", signal_type: "answer", target_device_id: A, request_id: R, answer: sdpAnswer });
has(await take(a, "webrtc_answer"), { from_device_id: B, request_id: R, answer: sdpAnswer }, "scoped answer");
a.send({ type: "webrtc_signal", signal_type: "ice_candidate", target_device_id: B, request_id: R, candidate: cand });
has(await take(b, "webrtc_ice_candidate"), { from_device_id: A, request_id: R, candidate: cand }, "scoped candidate");

// Signaling relay, older form.
a.send({ type: "webrtc_offer", offer: sdpOffer, target: B, from: A });
has(await take(b, "webrtc_offer"), { offer: sdpOffer, from: A }, "older offer");
b.send({ type: "webrtc_answer", answer: sdpAnswer, target: A, from: B });
has(await take(a, "webrtc_answer"), { answer: sdpAnswer, from: B }, "older answer");
a.send({ type: "ice_candidate", candidate: cand, target: B, from: A });
has(await take(b, "ice_candidate"), { candidate: cand, from: A }, "older candidate");

// A signal whose request does not pair the two devices is refused, with an error to C.
c.send({ type: "webrtc_signal", signal_type: "offer", target_device_id: B, request_id: R, offer: sdpOffer });
const refused = await take(c, "error");
check(typeof refused.message === "string" && refused.message.length > 0, "the refusal names the problem");
check(!(await arrives(b, "webrtc_offer", 300)), "the refused offer did not reach B");

// Established.
a.send({ type: "p2p_connection_established", request_id: R, peer_device_id: B });
has(await take(a, "p2p_connection_established"), { request_id: R, peer_device_id: B, peer_name: "Seed B" }, "established A");
has(await take(b, "p2p_connection_established"), { request_id: R, peer_device_id: A, peer_name: "Seed A" }, "established B");

// Decline: the requester learns of it.
c.send({ type: "p2p_request", from: C, to: B });
await take(b, "p2p_request_received", 5000, (m) => m.from === C);
b.send({ type: "p2p_decline", from: C, to: B });
has(await take(c, "p2p_request_declined"), { from: B }, "p2p_request_declined");

// Asking a device that is not P2P-enabled gets an error.
c.send({ type: "disable_p2p", device_id: C });
check(typeof (await take(c, "p2p_disabled")).message === "string", "p2p_disabled has a message");
await take(a, "p2p_devices_update", 5000, (m) => !m.devices.some((d) => d.id === C));
a.send({ type: "p2p_request", from: A, to: C });
await take(a, "error");

// The 60 s signaling timeout (the box under test may be set shorter): accept, then silence.
c.send({ type: "enable_p2p", device_id: C, device_name: "Seed C" });
await take(c, "p2p_enabled");
c.send({ type: "p2p_request", from: C, to: A });
const R2 = (await take(a, "p2p_request_received", 5000, (m) => m.from === C)).request_id;
a.send({ type: "p2p_accept", from: C, to: A });
await take(c, "webrtc_handshake_start");
const t0 = Date.now();
const ms = signalTimeoutS * 1000;
has(await take(c, "p2p_connection_failed", ms + 5000), { request_id: R2, message: "WebRTC signaling timeout" }, "timeout C");
has(await take(a, "p2p_connection_failed", 1000), { request_id: R2, message: "WebRTC signaling timeout" }, "timeout A");
check(Date.now() - t0 >= ms - 500, `timeout came after ${Date.now() - t0} ms, before ${ms}`);

// Existing services: the shared clipboard.
a.send({ type: "clipboard_update", text: "from the seed client" });
check((await take(b, "clipboard_update", 5000, (m) => m.text === "from the seed client")).text === "from the seed client", "clipboard to B");
await take(c, "clipboard_update", 5000, (m) => m.text === "from the seed client");
const late = await open(`/ws/seed-late-${suffix}`, "Late");
await take(late, "clipboard_update", 5000, (m) => m.text === "from the seed client");

// Malformed frames, unknown types and missing fields get an error naming the problem, and
// close nobody.
a.sendRaw("{not json");
await take(a, "error");
a.send({ type: "no_such_message" });
check((await take(a, "error")).message.includes("no_such_message"), "unknown type named");
a.send({ type: "p2p_request", from: A });
check((await take(a, "error")).message.includes("to"), "missing field named");
check(!a.closed && !b.closed, "sockets still open");

// Socket closes: same as disable_p2p, plus the end of A's session with B.
a.ws.close();
await take(b, "p2p_devices_update", 5000, (m) => !m.devices.some((d) => d.id === A));

// Family signaling on /signal.
const F = "family-" + suffix, F2 = "other-" + suffix;
const p = await open("/signal", "Phone");
p.send({ type: "register", familyId: F, userId: "u1", deviceId: "phone" });
const t = await open("/signal", "Tablet");
t.send({ type: "register", familyId: F, userId: "u2", deviceId: "tablet" });
has(await take(p, "device-online"), { familyId: F, deviceId: "tablet" }, "online to phone");
has(await take(t, "device-online"), { familyId: F, deviceId: "phone" }, "online to tablet");
const o = await open("/signal", "Outsider");
o.send({ type: "register", familyId: F2, userId: "u3", deviceId: "laptop" });
p.send({ type: "offer", familyId: F, toDeviceId: "tablet", sdp: sdpOffer.sdp });
has(await take(t, "offer"), { fromDeviceId: "phone", sdp: sdpOffer.sdp }, "family offer");
t.send({ type: "answer", familyId: F, toDeviceId: "phone", sdp: sdpAnswer.sdp });
has(await take(p, "answer"), { fromDeviceId: "tablet", sdp: sdpAnswer.sdp }, "family answer");
p.send({ type: "ice-candidate", familyId: F, toDeviceId: "tablet", candidate: cand });
has(await take(t, "ice-candidate"), { fromDeviceId: "phone", candidate: cand }, "family candidate");
p.send({ type: "offer", familyId: F, toDeviceId: "laptop", sdp: "x" });
check(!(await arrives(o, "offer", 300)), "an offer crossed into another family");
check(!o.inbox.some((m) => m.type === "device-online"), "another family saw our devices");
t.ws.close();
has(await take(p, "device-offline"), { familyId: F, deviceId: "tablet" }, "offline");

for (const s of [b, c, late, p, o]) s.ws.close();
console.log("seed_client: ok");
process.exit(0);
