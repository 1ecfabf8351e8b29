// LANVan relay client: device-to-device sends through the box, over the page's existing
// WebSocket (`/ws/{device_id}`). An ES module with no DOM and no dependencies; it follows
// the same steps as the Rust test client (tests/common/relay.rs). Protocol: docs/protocol.md,
// "Relay transfers".
//
// API
// ---
//   import { Relay } from "./relay.js";
//   const relay = new Relay(ws, { onOffer, onNotice });
//       Listens on `ws` (sets binaryType to "arraybuffer") beside the app's own listener;
//       it ignores every message that is not a relay message. Create it right after the
//       WebSocket, before `open`: stored sends are offered right after `welcome`. Call
//       `relay.setAutoAccept(deviceIds)` after each (re)connect if the user marked devices.
//   relay.attach(newWs)
//       After a reconnect (same device id): moves every transfer to the new socket. The box
//       answers with `relay_resume` and both sides continue from the last acknowledged
//       chunk, if the reconnect came within the box's grace period (30 s by default).
//       A transfer the box says nothing about within 5 s of the reconnect (the grace
//       period passed, the box restarted, or it was an offer still waiting for an answer,
//       which a sender's reconnect withdraws) ends with onError({code: "lost"}).
//       An offer still waiting for this device's answer is made again: onOffer is called
//       again with the same id; show one prompt per id.
//   relay.setAutoAccept(deviceIds)
//       Offers from these devices are accepted without asking; `onOffer` then gets
//       `offer.autoAccepted === true` and must call `offer.accept(writer)` at once.
//
//   const t = relay.send(file, toDeviceId, callbacks, options)
//       Sends a File/Blob. It is read one chunk at a time with `file.slice()`, never whole.
//       options: { inbox: bool (leave it on the box if the device is away or does not
//       answer), acceptTimeoutMs: number, startChunk: number (the receiver already has the
//       chunks before it, e.g. from P2P), sha256: hex (if already known), ref: string
//       (<= 64 bytes, echoed to both sides: "p2p:<id>" continues a P2P transfer),
//       store: bool (leave it in the receiver's inbox even if it is connected),
//       hasher: a Sha256 already fed with the file's chunks 0..hashedChunks-1 (a P2P
//       send hands over its running hash, so nothing is read twice), hashedChunks }.
//       callbacks (all optional):
//         onOffered({id, mode})        mode "live", or "inbox" (the device is away)
//         onAccepted()                  the receiver accepted; chunks flow
//         onToInbox()                   no answer in time: it goes to the device's inbox
//         onDeclined({reason})
//         onProgress(p)                 p = {bytes, total, speed (bytes/s), eta (s or null)}
//         onAcked(acked)                every confirmation, unthrottled (chunks 0..acked-1)
//         onPaused({reason})            the other side's socket dropped; waiting for it
//         onResumed({fromChunk})
//         onStored({inboxId, expiresAt})  "waiting on the box" (final for this send)
//         onComplete({sha256})          the receiver has every byte and the hashes match
//         onCancelled({by, reason})
//         onError({code, message})      relay_failed (e.g. hash_mismatch, peer_gone) or a refused offer
//         onWarning({code, message})    the box refused one chunk or message of this send
//                                       (e.g. window_exceeded); the send goes on
//       t.cancel(reason) cancels it; t.id is the transfer id once offered.
//   Notices about earlier inbox sends arrive as onNotice(msg) with msg.type
//       "relay_delivered" | "relay_expired" | "relay_declined" (each with inbox_id, to, name),
//       also right after a (re)connect for what happened while this device was away.
//
//   onOffer(offer)
//       offer = {id, from, fromName, name, size, sha256, stored, storedAt, startChunk,
//                autoAccepted, accept(writer, callbacks), decline(reason)}
//       writer = { write(Uint8Array) -> Promise|void, close() -> Promise|void,
//                  abort(reason) -> void }   (the UI streams to disk or collects a Blob)
//       Chunks are given to `writer.write` in order, one at a time (each write is awaited
//       before the chunk is acknowledged, so a slow writer slows the sender, nothing
//       piles up). callbacks as above: onProgress, onPaused, onResumed, onComplete (after
//       writer.close()), onCancelled, onError (after writer.abort()).
//       With startChunk > 0 the receiver must already hold the bytes before
//       startChunk * chunkSize; pass them as `accept(writer, callbacks, prefixBytes)` so
//       they count in the SHA-256 (they are not written again). A P2P receive that
//       already wrote chunks passes `{after, resume}` instead: `after` is a promise of
//       its last write, then `resume()` returns `{hasher, held}`: its running Sha256 of
//       chunks 0..held-1 (held >= startChunk). The relay acks chunks below `held` without
//       writing or hashing them again. Accept at once either way: chunks wait in order.
//       offer.ref is the sender's `ref` (e.g. "p2p:<id>"), if it gave one.
//   The returned incoming has .cancel(reason).
//   offer.onWithdrawn = ({by, reason, code}) => ...   set it to hear that an offer nobody
//       has answered yet was cancelled by the sender or failed (e.g. the sender left), so
//       the UI can take its prompt down.

import { Sha256 } from "./sha256.js";

// Re-exported for the Node test driver (tests/web/relay_node.mjs).
export { Sha256 };

const HEADER = 8;

export class Relay {
  constructor(ws, { onOffer = () => {}, onNotice = () => {} } = {}) {
    this.onOffer = onOffer;
    this.onNotice = onNotice;
    this.out = new Map(); // id -> Outgoing
    this.pending = []; // Outgoing waiting for relay_offered, oldest first
    this.inc = new Map(); // id -> Incoming
    this.listener = (ev) => this._onMessage(ev);
    this.attach(ws);
  }

  attach(ws) {
    const reconnect = !!this.ws;
    if (this.ws) this.ws.removeEventListener("message", this.listener);
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.addEventListener("message", this.listener);
    // Offers not yet answered by the box died with the old socket.
    for (const o of this.pending.splice(0)) o._end("onError", { code: "disconnected", message: "the socket closed before the box answered" });
    if (!reconnect) return;
    const at = performance.now();
    setTimeout(() => {
      for (const t of [...this.out.values(), ...this.inc.values()]) {
        if (!t.done && t.heard < at) t._lost();
      }
    }, 5000);
  }

  setAutoAccept(deviceIds) {
    this._json({ type: "relay_auto_accept", devices: deviceIds });
  }

  send(file, to, callbacks = {}, options = {}) {
    const o = new Outgoing(this, file, to, callbacks, options);
    const msg = { type: "relay_offer", to, name: file.name || "file", size: file.size };
    if (options.sha256) msg.sha256 = options.sha256;
    if (options.inbox) msg.inbox = true;
    if (options.acceptTimeoutMs != null) msg.accept_timeout_ms = options.acceptTimeoutMs;
    if (options.startChunk) msg.start_chunk = options.startChunk;
    if (options.ref) msg.ref = options.ref;
    if (options.store) msg.store = true;
    this.pending.push(o);
    this._json(msg);
    return o;
  }

  _json(msg) {
    if (this.ws.readyState === 1) this.ws.send(JSON.stringify(msg));
  }

  _onMessage(ev) {
    if (typeof ev.data !== "string") return this._onChunk(ev.data);
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    const type = msg.type || "";
    if (type === "error" && msg.ref_type === "relay_offer") {
      const o = this.pending.shift();
      return o && o._end("onError", { code: msg.code, message: msg.message });
    }
    if (type === "error" && typeof msg.ref_type === "string" && msg.ref_type.startsWith("relay_") && msg.id != null) {
      const t = this.out.get(msg.id) || this.inc.get(msg.id);
      return t && t._cb("onWarning", { code: msg.code, message: msg.message });
    }
    if (!type.startsWith("relay_")) return;
    if (type === "relay_offered") {
      const o = this.pending.shift();
      return o && o._offered(msg);
    }
    if (type === "relay_offer") return this._offer(msg);
    if (msg.id == null) {
      if (["relay_delivered", "relay_expired", "relay_declined"].includes(type)) this.onNotice(msg);
      return;
    }
    if (this.out.has(msg.id)) return this.out.get(msg.id)._on(msg);
    if (this.inc.has(msg.id)) return this.inc.get(msg.id)._on(msg);
    if (type === "relay_resume") {
      // A transfer this page no longer knows (it was reloaded): end it cleanly.
      this._json({ type: "relay_cancel", id: msg.id, reason: "the page lost this transfer" });
    }
  }

  _offer(msg) {
    const inc = new Incoming(this, msg);
    this.inc.set(msg.id, inc);
    inc.prompt = {
      id: msg.id,
      from: msg.from,
      fromName: msg.from_name,
      name: msg.name,
      size: msg.size,
      sha256: msg.sha256,
      stored: !!msg.stored,
      storedAt: msg.stored_at,
      startChunk: msg.start_chunk,
      ref: msg.ref,
      autoAccepted: !!msg.auto_accepted,
      accept: (writer, callbacks, prefix) => inc._accept(writer, callbacks, prefix),
      decline: (reason) => inc._decline(reason),
      cancel: (reason) => inc.cancel(reason),
      onWithdrawn: null,
    };
    this.onOffer(inc.prompt);
  }

  _onChunk(buf) {
    if (!(buf instanceof ArrayBuffer) || buf.byteLength < HEADER) return;
    const v = new DataView(buf);
    const inc = this.inc.get(v.getUint32(0));
    if (inc) inc._chunk(v.getUint32(4), new Uint8Array(buf, HEADER));
  }
}

/// Progress with speed (moving average) and ETA, reported at most every 250 ms.
/// Also used by P2P transfers (p2p.js), so both paths report alike.
export class Meter {
  constructor(total, cb) {
    this.total = total;
    this.cb = cb;
    this.lastT = 0;
    this.lastB = 0;
    this.speed = 0;
  }
  update(bytes, force = false) {
    const now = performance.now();
    if (!this.lastT) { this.lastT = now; this.lastB = bytes; }
    const dt = (now - this.lastT) / 1000;
    if (!force && dt < 0.25) return;
    if (dt > 0) {
      const inst = (bytes - this.lastB) / dt;
      this.speed = this.speed ? 0.7 * this.speed + 0.3 * inst : inst;
    }
    this.lastT = now;
    this.lastB = bytes;
    const left = this.total - bytes;
    this.cb({ bytes, total: this.total, speed: this.speed, eta: this.speed > 0 ? left / this.speed : null });
  }
}

class Outgoing {
  constructor(relay, file, to, callbacks, options) {
    this.relay = relay;
    this.file = file;
    this.to = to;
    this.callbacks = callbacks;
    this.options = options;
    this.id = null;
    this.next = 0;
    this.windowEnd = 0;
    this.acked = 0;
    this.flowing = false; // accepted and not paused
    this.pumping = false;
    this.hasher = options.hasher || new Sha256();
    this.hashed = options.hasher ? options.hashedChunks : 0;
    this.ended = false;
    this.done = false;
    this.ready = Promise.resolve();
    this.heard = performance.now();
    this.meter = new Meter(file.size, (p) => this._cb("onProgress", p));
  }

  cancel(reason = "cancelled") {
    if (this.id != null && !this.done) this.relay._json({ type: "relay_cancel", id: this.id, reason });
  }

  _cb(name, arg) {
    const f = this.callbacks[name];
    if (f) try { f(arg); } catch (e) { console.error(e); }
  }

  _end(name, arg) {
    if (this.done) return;
    this.done = true;
    this.flowing = false;
    if (this.id != null) this.relay.out.delete(this.id);
    this._cb(name, arg);
  }

  async _offered(msg) {
    this.id = msg.id;
    this.chunkSize = msg.chunk_size;
    this.chunks = msg.chunks;
    this.next = this.acked = msg.start_chunk;
    this.relay.out.set(this.id, this);
    this._cb("onOffered", { id: msg.id, mode: msg.mode });
    // Chunks before the start still count in the whole file's hash; nothing is sent
    // before they are hashed.
    this.ready = (async () => {
      if (this.options.sha256) return;
      while (this.hashed < msg.start_chunk) {
        this.hasher.update(await this._read(this.hashed));
        this.hashed++;
      }
    })();
    if (msg.mode === "inbox") { this.flowing = true; this._pump(); }
  }

  _lost() {
    this._end("onError", { code: "lost", message: "the box no longer has this transfer" });
  }

  _on(msg) {
    this.heard = performance.now();
    switch (msg.type) {
      case "relay_accepted": this.flowing = true; this._cb("onAccepted"); break;
      case "relay_to_inbox": this.flowing = true; this._cb("onToInbox"); break;
      case "relay_window":
        this.acked = msg.acked;
        this.windowEnd = msg.window_end;
        this.meter.update(Math.min(this.file.size, this.acked * this.chunkSize));
        if (this.callbacks.onAcked) this._cb("onAcked", this.acked);
        break;
      case "relay_paused": this.flowing = false; this._cb("onPaused", { reason: msg.reason }); break;
      case "relay_resume":
        this.next = this.acked = this.windowEnd = msg.from_chunk;
        this.flowing = true;
        this._cb("onResumed", { fromChunk: msg.from_chunk });
        break;
      case "relay_declined": return this._end("onDeclined", { reason: msg.reason });
      case "relay_stored": return this._end("onStored", { inboxId: msg.inbox_id, expiresAt: msg.expires_at });
      case "relay_complete":
        this.meter.update(this.file.size, true);
        return this._end("onComplete", { sha256: msg.sha256 });
      case "relay_cancelled": return this._end("onCancelled", { by: msg.by, reason: msg.reason });
      case "relay_failed": return this._end("onError", { code: msg.code, message: msg.message });
    }
    this._pump();
  }

  _read(index) {
    const start = index * this.chunkSize;
    return this.file.slice(start, Math.min(this.file.size, start + this.chunkSize))
      .arrayBuffer().then((b) => new Uint8Array(b));
  }

  /// Sends every chunk the credit allows, one file slice at a time.
  async _pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      await this.ready;
      while (this.flowing && !this.done && this.next < this.windowEnd && this.next < this.chunks) {
        const index = this.next;
        const bytes = await this._read(index);
        // A pause or resume may have moved `next` while the slice was read.
        if (!this.flowing || this.done || index !== this.next) continue;
        if (index === this.hashed && !this.options.sha256) { this.hasher.update(bytes); this.hashed++; }
        const frame = new Uint8Array(HEADER + bytes.length);
        const v = new DataView(frame.buffer);
        v.setUint32(0, this.id);
        v.setUint32(4, index);
        frame.set(bytes, HEADER);
        if (this.relay.ws.readyState !== 1) break;
        this.relay.ws.send(frame);
        this.next = index + 1;
      }
      if (this.flowing && !this.done && !this.ended && this.next === this.chunks && !this.options.sha256) {
        this.ended = true;
        this.relay._json({ type: "relay_end", id: this.id, sha256: this.hasher.hex() });
      }
    } finally {
      this.pumping = false;
    }
  }
}

class Incoming {
  constructor(relay, offer) {
    this.relay = relay;
    this.offer = offer;
    this.id = offer.id;
    this.next = offer.start_chunk || 0;
    this.held = 0; // chunks the page already wrote (a P2P receive it continues)
    this.chunks = offer.chunks;
    this.queue = Promise.resolve();
    this.hasher = new Sha256();
    this.writer = null;
    this.callbacks = {};
    this.received = 0;
    this.done = false;
    this.heard = performance.now();
  }

  cancel(reason = "cancelled") {
    if (!this.done) this.relay._json({ type: "relay_cancel", id: this.id, reason });
  }

  _lost() {
    this.done = true;
    this.relay.inc.delete(this.id);
    if (this.writer) this.writer.abort("the box no longer has this transfer");
    this._cb("onError", { code: "lost", message: "the box no longer has this transfer" });
  }

  _cb(name, arg) {
    const f = this.callbacks[name];
    if (f) try { f(arg); } catch (e) { console.error(e); }
  }

  _accept(writer, callbacks = {}, prefix) {
    this.writer = writer;
    this.callbacks = callbacks;
    const size = this.offer.size;
    this.meter = new Meter(size, (p) => this._cb("onProgress", p));
    this.received = Math.min(size, this.next * this.offer.chunk_size);
    if (prefix && prefix.resume) {
      // Chunks from the box queue behind the P2P receive's last write.
      this.queue = Promise.resolve(prefix.after).catch(() => {}).then(() => {
        const { hasher, held } = prefix.resume();
        this.hasher = hasher;
        this.held = held;
        this.received = Math.min(size, Math.max(this.next, held) * this.offer.chunk_size);
      });
    } else if (this.next > 0 && prefix) {
      this.hasher.update(prefix);
    }
    if (!this.offer.auto_accepted) this.relay._json({ type: "relay_accept", id: this.id });
    this.queue = this.queue.then(() => { if (this.next === this.chunks) this._done(); });
    return this;
  }

  _decline(reason = "declined") {
    this.relay.inc.delete(this.id);
    this.done = true;
    this.relay._json({ type: "relay_decline", id: this.id, reason });
  }

  _chunk(index, bytes) {
    this.heard = performance.now();
    // Writes are chained so chunks reach the writer in order, one at a time.
    this.queue = this.queue.then(async () => {
      if (this.done || !this.writer || index !== this.next) return; // a duplicate after a resume
      this.next++;
      if (index >= this.held) {
        this.hasher.update(bytes);
        await this.writer.write(bytes);
        this.received += bytes.length;
      }
      this.meter.update(this.received);
      this.relay._json({ type: "relay_ack", id: this.id, acked: this.next });
      if (this.next === this.chunks) this._done();
    }).catch((e) => {
      this.cancel("the receiver could not write: " + e);
    });
  }

  _done() {
    this.relay._json({ type: "relay_done", id: this.id, sha256: this.hasher.hex() });
  }

  _on(msg) {
    this.heard = performance.now();
    switch (msg.type) {
      case "relay_paused": this._cb("onPaused", { reason: msg.reason }); break;
      case "relay_resume":
        // Tell the box how far this side really is; it continues from there.
        this.queue = this.queue.then(() => {
          this.relay._json({ type: "relay_ack", id: this.id, acked: this.next });
          if (this.next === this.chunks) this._done();
          this._cb("onResumed", { fromChunk: this.next });
        });
        break;
      case "relay_complete":
        this.queue = this.queue.then(async () => {
          this.done = true;
          this.relay.inc.delete(this.id);
          if (this.meter) this.meter.update(this.offer.size, true);
          if (this.writer) await this.writer.close();
          this._cb("onComplete", { sha256: msg.sha256 });
        });
        break;
      case "relay_cancelled":
      case "relay_failed":
        this.queue = this.queue.then(() => {
          this.done = true;
          this.relay.inc.delete(this.id);
          if (this.writer) this.writer.abort(msg.message || msg.reason);
          else if (this.prompt?.onWithdrawn) this.prompt.onWithdrawn({ by: msg.by, reason: msg.reason, code: msg.code });
          if (msg.type === "relay_cancelled") this._cb("onCancelled", { by: msg.by, reason: msg.reason });
          else this._cb("onError", { code: msg.code, message: msg.message });
        });
        break;
    }
  }
}
