// P2P on the page: opt-in, the request/accept handshake and WebRTC signaling through the box
// (SEED-PROTOCOL, request-scoped form), and file sends straight over an RTCDataChannel that
// move to the box's relay (from the last chunk the receiver confirmed) when the direct path
// fails or a page goes to the background. The only ICE server is the box's own STUN: a page
// never contacts anything outside the LAN. Wire format: docs/protocol.md, "P2P transfers".

import { Sha256, toHex } from './sha256.js';
import { Meter } from './relay.js';
import { el, toast } from './ui.js';

/** No acknowledgement for this long while chunks are outstanding: the direct path is dead. */
export const STALL_MS = 3000;
/** Chunks sent but not yet confirmed by the receiver (at 256 KiB: 4 MiB in flight). */
const WINDOW = 16;
/** A chunk travels as pieces of at most this size: Chromium's SCTP takes 256 KiB messages. */
const PIECE = 64 * 1024;
/** Piece header: transfer number, chunk index, offset in the chunk (u32 BE), chunk SHA-256. */
const HEADER = 12 + 32;
/** The channel's send buffer is refilled below LOW and not filled past HIGH. */
const LOW = 1 << 20;
const HIGH = 4 << 20;
/** How long a send in p2p-first mode waits for a direct connection before using the box. */
const AUTO_CONNECT_MS = 10000;
/** How long a receiver whose channel died waits for the sender's relay offer. */
const RECEIVE_GRACE_MS = 30000;
const CHOICE_KEY = 'lanvan.transferMode';
/** Files one peer may be sending this page at once, and connection requests waiting. */
const MAX_RECEIVES = 16;
const MAX_REQUESTS = 16;
/** The largest chunk a peer may announce (the box's relay chunk is 256 KiB by default). */
const MAX_CHUNK = 4 << 20;

const STATUS = {
  off: '', server: 'Server', connecting: 'P2P connecting…', connected: 'P2P connected',
  failed: 'P2P failed', fallback: 'P2P failed, using server',
};

const now = () => performance.now();
const hidden = () => document.visibilityState === 'hidden';

/** Events a test or the benchmark reads: setup times, fallbacks and how long they took. */
const log = [];
function record(entry) {
  log.push({ at: Date.now(), ...entry });
  if (log.length > 200) log.shift();
  console.info('p2p:', JSON.stringify(entry));
}

/** The page's P2P side: links to other devices and the transfers over them. */
export class P2P {
  constructor(conn, sends, ui) {
    this.conn = conn;
    this.sends = sends;
    this.ui = ui; // {card, mode, status, statusText, list, empty, dialog}
    this.box = { mode: 'off', stun_port: null, chunk_size: 262144, signal_timeout_ms: 60000 };
    this.choice = 'server';
    this.enabled = false;
    this.peers = new Map(); // P2P-enabled devices: id -> {id, name}
    this.links = new Map(); // peer id -> Link
    this.requests = []; // incoming requests waiting for an answer, oldest first
    this.moving = new Set(); // sends that fell back to the box and are still running
    this.failedAt = 0;
    this.log = log;
    this.swarm = null; // swarm.js sets itself here: it serves and opens chunk channels
    this.swarmAccepted = new Set(); // request ids accepted for a swarm download

    sends.p2p = this;

    conn.on('welcome', (m) => this.welcome(m));
    conn.on('p2p_enabled', () => { this.enabled = true; this.render(); });
    conn.on('p2p_disabled', (m) => {
      this.enabled = false;
      if (m.reason) toast(m.message || 'P2P is off.', 'info');
      this.render();
    });
    conn.on('p2p_devices_update', (m) => this.devicesUpdate(m.devices || []));
    conn.on('device_left', (m) => this.peerGone(m.device_id));
    conn.on('p2p_request_received', (m) => this.requested(m));
    conn.on('p2p_request_declined', (m) => this.declined(m.from));
    // The box's own reply to a request: its id, so a request that times out unanswered
    // (p2p_connection_failed with that id) ends the link that asked.
    conn.on('p2p_request_sent', (m) => {
      const link = this.links.get(m.to);
      if (link && link.state === 'requested' && link.requestId == null) link.requestId = m.request_id;
    });
    conn.on('p2p_connection_accepted', (m) => this.linkFor(m.to, m.request_id));
    conn.on('p2p_request_accepted', (m) => this.linkFor(m.from, m.request_id));
    conn.on('webrtc_handshake_start', (m) => this.handshake(m));
    conn.on('webrtc_offer', (m) => this.signal(m, 'offer'));
    conn.on('webrtc_answer', (m) => this.signal(m, 'answer'));
    conn.on('webrtc_ice_candidate', (m) => this.signal(m, 'ice_candidate'));
    conn.on('p2p_connection_established', (m) => {
      const link = this.byRequest(m.request_id);
      if (link && m.peer_name) link.name = m.peer_name;
      this.render();
    });
    conn.on('p2p_connection_failed', (m) => {
      const link = this.byRequest(m.request_id);
      if (link && link.state !== 'connected') link.fail(m.message || 'signaling timed out');
      this.unprompt(m.request_id);
    });
    conn.on('error', (m) => {
      const t = String(m.ref_type || '');
      if (!t.startsWith('p2p_') && !t.startsWith('webrtc_') && t !== 'enable_p2p') return;
      if (t === 'p2p_request') {
        // The other device is not P2P-enabled (any more), or the box refused.
        for (const link of this.links.values()) if (link.state === 'requested') link.fail(m.message);
      }
      if (t !== 'enable_p2p') toast(m.message || 'P2P: the box refused a message.');
    });

    ui.mode.addEventListener('change', () => this.choose(ui.mode.value, true));
    ui.dialog.querySelector('[data-answer="accept"]').addEventListener('click', () => this.answer(true));
    ui.dialog.querySelector('[data-answer="decline"]').addEventListener('click', () => this.answer(false));
    ui.dialog.addEventListener('cancel', (e) => { e.preventDefault(); this.answer(false); });
    document.addEventListener('visibilitychange', () => this.visibility());
    this.render();
  }

  get me() { return this.conn.me.id; }

  welcome(m) {
    const p = m.p2p || { mode: 'off' };
    this.box = { ...this.box, ...p };
    this.enabled = false; // the box forgets the opt-in with the old socket
    if (this.box.mode === 'off') {
      this.choice = 'server';
      for (const link of this.links.values()) link.close('P2P is off on this box');
    } else {
      let saved = null;
      try { saved = localStorage.getItem(CHOICE_KEY); } catch { /* private mode */ }
      this.choice = saved || (this.box.mode === 'p2p-first' ? 'p2p' : 'server');
      if (this.choice === 'p2p') this.enable();
    }
    this.render();
  }

  /** The transfer-mode selector: "p2p" opts this device in, "server" opts it out. */
  choose(choice, byUser) {
    this.choice = choice === 'p2p' ? 'p2p' : 'server';
    if (byUser) try { localStorage.setItem(CHOICE_KEY, this.choice); } catch { /* private mode */ }
    if (this.choice === 'p2p') this.enable();
    else {
      this.conn.send({ type: 'disable_p2p', device_id: this.me });
      for (const link of this.links.values()) link.close('P2P turned off');
    }
    this.render();
  }

  enable() {
    this.conn.send({ type: 'enable_p2p', device_id: this.me, device_name: this.conn.me.name });
  }

  devicesUpdate(devices) {
    this.peers = new Map(devices.filter((d) => d.id !== this.me).map((d) => [d.id, d]));
    for (const [id, link] of this.links) {
      if (!this.peers.has(id) && link.state !== 'connected') link.close('the device turned P2P off');
    }
    this.render();
  }

  peerGone(id) {
    const link = this.links.get(id);
    // A connected channel does not need the box; it ends on its own if the device is gone.
    if (link && link.state !== 'connected') link.close('the device left');
    this.peers.delete(id);
    this.render();
  }

  nameOf(id) {
    return this.peers.get(id)?.name || this.sends.nameOf(id);
  }

  byRequest(rid) {
    for (const link of this.links.values()) if (link.requestId === rid) return link;
    return null;
  }

  /** "Connect": asks `peer` for a direct connection. */
  connect(peer) {
    const old = this.links.get(peer);
    if (old && ['requested', 'connecting', 'connected'].includes(old.state)) return old;
    const link = new Link(this, peer, null);
    link.state = 'requested';
    this.links.set(peer, link);
    this.conn.send({ type: 'p2p_request', from: this.me, to: peer });
    this.render();
    return link;
  }

  requested(m) {
    // A page downloading a file this page announced: served without asking (it serves only
    // what it announced); anything else under that purpose is declined, never prompted.
    if (m.purpose === 'swarm') {
      const ok = this.enabled && !!this.swarm?.serves(m.manifest);
      if (ok) this.swarmAccepted.add(m.request_id);
      this.conn.send({ type: ok ? 'p2p_accept' : 'p2p_decline', from: m.from, to: this.me });
      return;
    }
    // Both asked each other at once: the device with the larger id takes the other's
    // request, the other lets its copy time out, so one connection is made, not two.
    if (this.links.get(m.from)?.state === 'requested') {
      if (this.me > m.from) this.conn.send({ type: 'p2p_accept', from: m.from, to: this.me });
      return;
    }
    // p2p-first: every P2P-enabled device is let in without asking.
    if (this.box.mode === 'p2p-first' && this.choice === 'p2p') {
      this.conn.send({ type: 'p2p_accept', from: m.from, to: this.me });
      return;
    }
    if (this.requests.length >= MAX_REQUESTS) {
      this.conn.send({ type: 'p2p_decline', from: m.from, to: this.me });
      return;
    }
    this.requests.push(m);
    this.prompt();
  }

  prompt() {
    const d = this.ui.dialog;
    if (d.open || !this.requests.length) return;
    const r = this.requests[0];
    d.querySelector('.p2p-from').textContent = r.from_name || this.nameOf(r.from);
    d.showModal();
  }

  /** A request that ended before it was answered (it timed out): its prompt goes away. */
  unprompt(rid) {
    const showing = this.ui.dialog.open && this.requests[0]?.request_id === rid;
    this.requests = this.requests.filter((r) => r.request_id !== rid);
    if (showing) {
      this.ui.dialog.close();
      this.prompt();
    }
  }

  answer(yes) {
    const r = this.requests.shift();
    this.ui.dialog.close();
    if (r) this.conn.send({ type: yes ? 'p2p_accept' : 'p2p_decline', from: r.from, to: this.me });
    this.prompt();
  }

  declined(from) {
    const link = this.links.get(from);
    if (link && link.state === 'requested' && link.purpose === 'swarm') {
      link.close('declined');
    } else if (link && link.state === 'requested') {
      link.state = 'declined';
      toast(`${this.nameOf(from)} declined the direct connection.`, 'info');
      link.waiters.splice(0).forEach((w) => w(false));
    }
    this.render();
  }

  /** The box paired the request: from here on the link is known by its request id. */
  linkFor(peer, rid) {
    let link = this.links.get(peer);
    if (!link || link.state === 'failed' || link.state === 'closed' || link.state === 'declined') {
      link = new Link(this, peer, rid);
      this.links.set(peer, link);
    }
    if (this.swarmAccepted.delete(rid)) link.purpose = 'swarm';
    link.requestId = rid;
    if (link.state === 'requested') link.state = 'connecting';
    this.render();
    return link;
  }

  handshake(m) {
    const link = this.linkFor(m.peer_device_id, m.request_id);
    link.start(!!m.is_initiator);
  }

  signal(m, kind) {
    const link = m.request_id != null ? this.byRequest(m.request_id) : this.links.get(m.from_device_id);
    if (!link) return;
    link.signal(kind, m).catch((e) => link.fail(`signaling: ${e.message || e}`));
  }

  /**
   * A `lanvan-chunks` channel to `peer` for a multi-source download of `manifest`
   * (swarm.js): on the connection already open to it, or through a P2P request with
   * `purpose: "swarm"`, which a page holding the manifest accepts by itself. Resolves
   * `{dc, close}` once the channel is open; rejects after `ms` or when the link fails.
   */
  swarmChannel(peer, manifest, ms) {
    const old = this.links.get(peer);
    if (old && ['requested', 'connecting'].includes(old.state)) return Promise.reject(new Error('a connection to it is being made'));
    let link = old;
    if (old?.state === 'connected' && old.pc) {
      const dc = old.pc.createDataChannel(SWARM_LABEL, { ordered: true });
      return opening(dc, ms).then(() => ({ dc, close: () => { try { dc.close(); } catch { /* closed */ } } }));
    }
    link = new Link(this, peer, null);
    link.state = 'requested';
    link.purpose = 'swarm';
    this.links.set(peer, link);
    this.conn.send({ type: 'p2p_request', from: this.me, to: peer, purpose: 'swarm', manifest });
    this.render();
    return new Promise((res, rej) => {
      const t = setTimeout(() => { link.close('no swarm channel in time'); rej(new Error('no channel in time')); }, ms);
      link.chunkWaiters.push((dc) => {
        clearTimeout(t);
        if (dc) res({ dc, close: () => link.close('download done') });
        else rej(new Error('the connection failed'));
      });
    });
  }

  /**
   * The link to send a file to `to` over, or null to use the box. In p2p-first mode, asks
   * for a connection to a P2P-enabled device first and waits for it a little.
   */
  async route(to, onConnecting = () => {}) {
    if (this.box.mode === 'off' || this.choice !== 'p2p' || !this.enabled || hidden()) return null;
    let link = this.links.get(to);
    if (link?.usable()) return link;
    if (this.box.mode !== 'p2p-first' || !this.peers.has(to)) return null;
    link = this.connect(to);
    onConnecting();
    const ok = await link.wait(AUTO_CONNECT_MS);
    return ok && link.usable() ? link : null;
  }

  /** Sends `file` over `link` (from `route`); `callbacks` as for a relay send (send.js). */
  sendDirect(link, file, callbacks) {
    return new DirectSend(link, file, callbacks);
  }

  /** A relay offer that continues one of this page's P2P receives is taken over here. */
  claim(offer) {
    for (const link of this.links.values()) {
      for (const rx of link.receives.values()) {
        if (rx.matches(offer)) return rx.continueViaRelay(offer);
      }
    }
    for (const rx of orphans) if (rx.matches(offer)) return rx.continueViaRelay(offer);
    return false;
  }

  visibility() {
    const h = hidden();
    for (const link of this.links.values()) {
      link.say({ t: 'vis', hidden: h });
      if (!h) continue;
      // This page may be frozen any moment: its sends go on through the box from the
      // confirmed chunk, and what it receives is left on the box (the sender moves it).
      for (const tx of link.sends.values()) tx.fallback('hidden', 'This page went to the background: continuing through the box');
      for (const rx of link.receives.values()) rx.toInbox();
    }
  }

  /** The status indicator: what the next or current transfer uses. */
  status() {
    if (this.box.mode === 'off') return 'off';
    if (this.moving.size) return 'fallback';
    const states = [...this.links.values()].map((l) => l.state);
    if (states.includes('connected')) return 'connected';
    if (states.includes('connecting') || states.includes('requested')) return 'connecting';
    if (this.failedAt && now() - this.failedAt < 15000) return 'failed';
    return 'server';
  }

  render() {
    const { card, mode, status, statusText, list, empty } = this.ui;
    const off = this.box.mode === 'off';
    card.hidden = off;
    if (off) return;
    mode.value = this.choice;
    const s = this.status();
    status.dataset.state = s;
    statusText.textContent = STATUS[s];
    const rows = [];
    if (this.choice === 'p2p') {
      for (const d of this.peers.values()) rows.push(this.row(d));
    }
    list.replaceChildren(...rows);
    empty.hidden = rows.length > 0;
    empty.textContent = this.choice !== 'p2p'
      ? 'Choose P2P to send files straight to another device. The box stays in between when it must.'
      : this.enabled ? 'No other device has P2P on. Choose P2P on the other device too.'
        : 'Turning P2P on…';
  }

  row(d) {
    const link = this.links.get(d.id);
    const state = link?.state || 'idle';
    const label = {
      idle: '', requested: 'Asking…', connecting: 'Connecting…', connected: 'Connected',
      failed: 'Failed', declined: 'Declined', closed: '',
    }[state];
    const busy = state === 'requested' || state === 'connecting';
    const button = state === 'connected'
      ? el('button', {
        class: 'btn small', type: 'button', 'data-p2p-disconnect': d.id,
        'aria-label': `Disconnect from ${d.name}`, onclick: () => link.close('disconnected'),
      }, 'Disconnect')
      : el('button', {
        class: 'btn small primary', type: 'button', 'data-p2p-connect': d.id, disabled: busy,
        'aria-label': `Connect directly to ${d.name}`, onclick: () => this.connect(d.id),
      }, 'Connect');
    return el('li', { class: 'device p2p-peer', 'data-id': d.id, 'data-state': state },
      el('div', { class: 'info' },
        el('span', { class: 'name' }, d.name),
        el('span', { class: 'meta' }, label)),
      el('div', { class: 'actions' }, button));
  }
}

/** Receives whose channel died, waiting for the sender's relay offer (the newest 64). */
const orphans = new Set();
function orphan(rx) {
  orphans.add(rx);
  if (orphans.size > 64) orphans.delete(orphans.values().next().value);
}

/** One direct connection to another device: its RTCPeerConnection and data channel. */
class Link {
  constructor(p2p, peer, requestId) {
    this.p2p = p2p;
    this.peer = peer;
    this.requestId = requestId;
    this.state = 'requested'; // requested | connecting | connected | failed | declined | closed
    this.pc = null;
    this.dc = null;
    this.remoteSet = false;
    this.pendingIce = [];
    this.sends = new Map(); // transfer id -> DirectSend
    this.receives = new Map(); // transfer id -> DirectReceive
    this.peerHidden = false;
    this.waiters = [];
    this.startedAt = now();
    this.timer = null;
    this.purpose = 'send'; // send | swarm (made for a multi-source download)
    this.chunkWaiters = []; // swarm: called with the chunk channel once open, or null
    this.chunkChannels = new Set();
  }

  usable() {
    return this.state === 'connected' && this.dc?.readyState === 'open' && !this.peerHidden;
  }

  /** Resolves true once connected, false on failure or after `ms`. */
  wait(ms) {
    if (this.state === 'connected') return Promise.resolve(true);
    return new Promise((res) => {
      const t = setTimeout(() => res(false), ms);
      this.waiters.push((ok) => { clearTimeout(t); res(ok); });
    });
  }

  start(initiator) {
    if (this.pc) return;
    const { stun_port: port, signal_timeout_ms: limit } = this.p2p.box;
    // The box's STUN is the only ICE server: no traffic ever leaves the LAN.
    const iceServers = port ? [{ urls: `stun:${location.hostname}:${port}` }] : [];
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    this.state = 'connecting';
    this.initiator = initiator;
    this.timer = setTimeout(() => {
      if (this.state !== 'connected') this.fail('no direct connection in time');
    }, limit || 60000);
    pc.onicecandidate = (e) => {
      if (e.candidate) this.sendSignal('ice_candidate', { candidate: e.candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      if (s === 'failed' || s === 'closed') this.fail(`the direct connection ${s}`);
      else if (s === 'disconnected') this.interrupted('the direct connection dropped');
    };
    // Channels the other side opens: the transfer channel, or chunk channels (swarm.js).
    pc.ondatachannel = (e) => {
      if (e.channel.label === SWARM_LABEL) this.chunkChannel(e.channel, false);
      else this.attach(e.channel);
    };
    if (initiator && this.purpose === 'swarm') {
      this.chunkChannel(pc.createDataChannel(SWARM_LABEL, { ordered: true }), true);
      pc.createOffer()
        .then((offer) => pc.setLocalDescription(offer))
        .then(() => this.sendSignal('offer', { offer: plain(pc.localDescription) }))
        .catch((e) => this.fail(`could not make an offer: ${e.message || e}`));
    } else if (initiator) {
      this.attach(pc.createDataChannel('lanvan', { ordered: true }));
      pc.createOffer()
        .then((offer) => pc.setLocalDescription(offer))
        .then(() => this.sendSignal('offer', { offer: plain(pc.localDescription) }))
        .catch((e) => this.fail(`could not make an offer: ${e.message || e}`));
    }
    this.p2p.render();
  }

  /**
   * A `lanvan-chunks` channel on this connection: the downloader's (`mine`) goes to the
   * download waiting for it, the other side's to this page's swarm, which serves it.
   */
  chunkChannel(dc, mine) {
    this.chunkChannels.add(dc);
    const open = () => {
      if (this.state !== 'connected') {
        clearTimeout(this.timer);
        this.state = 'connected';
        record({ event: 'connected', peer: this.peer, request_id: this.requestId, purpose: this.purpose, setup_ms: Math.round(now() - this.startedAt) });
        if (this.initiator) {
          this.p2p.conn.send({ type: 'p2p_connection_established', request_id: this.requestId, peer_device_id: this.peer });
        }
        this.p2p.render();
      }
      if (mine) this.chunkWaiters.splice(0).forEach((w) => w(dc));
      else if (this.p2p.swarm) this.p2p.swarm.serve(dc, this);
      else dc.close();
    };
    dc.addEventListener('close', () => this.chunkChannels.delete(dc));
    if (dc.readyState === 'open') open(); else dc.addEventListener('open', open, { once: true });
  }

  sendSignal(kind, body) {
    this.p2p.conn.send({
      type: 'webrtc_signal', signal_type: kind, target_device_id: this.peer,
      request_id: this.requestId, ...body,
    });
  }

  async signal(kind, m) {
    const pc = this.pc;
    if (!pc) return;
    if (kind === 'offer') {
      await pc.setRemoteDescription(desc(m.offer, 'offer'));
      await this.flushIce();
      await pc.setLocalDescription(await pc.createAnswer());
      this.sendSignal('answer', { answer: plain(pc.localDescription) });
    } else if (kind === 'answer') {
      await pc.setRemoteDescription(desc(m.answer, 'answer'));
      await this.flushIce();
    } else if (m.candidate) {
      const c = typeof m.candidate === 'string' ? { candidate: m.candidate, sdpMid: '0' } : m.candidate;
      if (this.remoteSet) await pc.addIceCandidate(c);
      else this.pendingIce.push(c);
    }
  }

  async flushIce() {
    this.remoteSet = true;
    for (const c of this.pendingIce.splice(0)) await this.pc.addIceCandidate(c).catch(() => {});
  }

  attach(dc) {
    this.dc = dc;
    dc.binaryType = 'arraybuffer';
    dc.bufferedAmountLowThreshold = LOW;
    dc.onopen = () => {
      if (this.state === 'connected') return;
      clearTimeout(this.timer);
      this.state = 'connected';
      this.setupMs = now() - this.startedAt;
      record({ event: 'connected', peer: this.peer, request_id: this.requestId, setup_ms: Math.round(this.setupMs) });
      if (this.initiator) {
        this.p2p.conn.send({ type: 'p2p_connection_established', request_id: this.requestId, peer_device_id: this.peer });
      }
      this.say({ t: 'vis', hidden: hidden() });
      this.waiters.splice(0).forEach((w) => w(true));
      this.p2p.render();
      this.logPath();
    };
    dc.onclose = () => this.fail('the data channel closed');
    dc.onerror = () => this.interrupted('the data channel failed');
    dc.onmessage = (e) => this.message(e.data);
    if (dc.readyState === 'open') dc.onopen();
  }

  /** Logs which candidates the connection uses: "srflx" is the address the box's STUN saw. */
  async logPath() {
    try {
      const stats = await this.pc.getStats();
      let pair = null;
      stats.forEach((r) => {
        if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId);
      });
      const local = pair && stats.get(pair.localCandidateId);
      const remote = pair && stats.get(pair.remoteCandidateId);
      record({ event: 'path', peer: this.peer, local: local?.candidateType, remote: remote?.candidateType });
    } catch { /* closed meanwhile */ }
  }

  /** Sends a control message if the channel is open. */
  say(msg) {
    if (this.dc?.readyState === 'open') {
      try { this.dc.send(JSON.stringify(msg)); return true; } catch { /* closing */ }
    }
    return false;
  }

  message(data) {
    if (typeof data !== 'string') {
      const v = new DataView(data);
      const rx = this.receives.get(v.getUint32(0));
      if (rx) rx.piece(v.getUint32(4), v.getUint32(8), new Uint8Array(data, 12, 32), new Uint8Array(data, HEADER));
      return;
    }
    let m;
    try { m = JSON.parse(data); } catch { return; }
    if (m.t === 'vis') {
      this.peerHidden = !!m.hidden;
      // The receiver went to the background: what it was getting waits on the box instead.
      if (this.peerHidden) for (const tx of this.sends.values()) tx.toInbox();
      return;
    }
    if (m.t === 'file') {
      const bad = badOffer(m);
      if (bad || this.receives.size >= MAX_RECEIVES || this.receives.has(m.id)) {
        this.say({ t: 'decline', id: m.id, reason: bad || 'too many files at once' });
        return;
      }
      const rx = new DirectReceive(this, m);
      this.receives.set(m.id, rx);
      rx.offer();
      return;
    }
    const tx = this.sends.get(m.id);
    if (tx) return tx.message(m);
    const rx = this.receives.get(m.id);
    if (rx) rx.message(m);
  }

  /** The path broke (maybe only for a moment): running sends move to the box at once. */
  interrupted(why) {
    for (const tx of this.sends.values()) tx.fallback('failed', why);
  }

  fail(why) {
    if (this.state === 'failed' || this.state === 'closed') return;
    const wasConnected = this.state === 'connected';
    this.state = 'failed';
    record({ event: 'link_failed', peer: this.peer, reason: why, was_connected: wasConnected, purpose: this.purpose });
    this.end(why);
    // A download's extra source that failed is the download's business (swarm.js), not news.
    if (this.purpose === 'swarm') return;
    this.p2p.failedAt = now();
    if (!wasConnected) toast(`P2P with ${this.p2p.nameOf(this.peer)} failed: ${why}. Files go through the box.`, 'info');
  }

  close(why) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.end(why);
  }

  end(why) {
    clearTimeout(this.timer);
    this.chunkWaiters.splice(0).forEach((w) => w(null));
    for (const dc of this.chunkChannels) try { dc.close(); } catch { /* closed */ }
    this.interrupted(why);
    for (const rx of this.receives.values()) rx.channelLost();
    this.waiters.splice(0).forEach((w) => w(false));
    const { pc, dc } = this;
    if (dc) { dc.onclose = dc.onerror = dc.onmessage = null; }
    if (pc) { pc.onconnectionstatechange = null; pc.close(); }
    this.p2p.render();
  }
}

/** Why a peer's `file` message cannot be taken, or null if it is sound. */
function badOffer(m) {
  const int = (v) => Number.isSafeInteger(v) && v >= 0;
  if (!int(m.id) || m.id > 0xffffffff) return 'bad id';
  if (typeof m.name !== 'string' || !m.name || m.name.length > 255) return 'bad name';
  if (!int(m.size)) return 'bad size';
  if (!int(m.chunk_size) || m.chunk_size === 0 || m.chunk_size > MAX_CHUNK) return 'bad chunk size';
  if (m.chunks !== Math.ceil(m.size / m.chunk_size)) return 'bad chunk count';
  return null;
}

/** The chunk protocol's channel label (docs/protocol.md "Chunk protocol", web/swarm.js). */
const SWARM_LABEL = 'lanvan-chunks';

/** Resolves when `dc` opens; rejects when it closes first or after `ms`. */
function opening(dc, ms) {
  if (dc.readyState === 'open') return Promise.resolve(dc);
  return new Promise((res, rej) => {
    const t = setTimeout(() => { try { dc.close(); } catch { /* */ } rej(new Error('the channel did not open in time')); }, ms);
    dc.addEventListener('open', () => { clearTimeout(t); res(dc); }, { once: true });
    dc.addEventListener('close', () => { clearTimeout(t); rej(new Error('the channel closed')); }, { once: true });
  });
}

/** An RTCSessionDescription as a plain object, and back from what a peer sent. */
const plain = (d) => ({ type: d.type, sdp: d.sdp });
const desc = (d, type) => (typeof d === 'string' ? { type, sdp: d } : d);

let serial = 0;
function newTransferId() {
  const b = new Uint32Array(1);
  crypto.getRandomValues(b);
  // Unique on this page; random so two pages' ids do not collide on one channel.
  return ((b[0] & 0xfff00000) | (++serial & 0xfffff)) >>> 0;
}

/**
 * A file sent over a data channel. `cb` are the relay's send callbacks (send.js), so the
 * row behaves alike whichever path the bytes take; plus onVia(kind, text).
 */
export class DirectSend {
  constructor(link, file, cb) {
    this.link = link;
    this.p2p = link.p2p;
    this.file = file;
    this.cb = cb;
    this.id = newTransferId();
    this.chunkSize = this.p2p.box.chunk_size || 262144;
    this.chunks = Math.ceil(file.size / this.chunkSize);
    this.next = 0; // next chunk to send
    this.acked = 0; // chunks the receiver confirmed (all of 0..acked-1)
    this.hasher = new Sha256();
    this.hashed = 0;
    this.sha256 = null;
    this.state = 'offered'; // offered | moving | done | moved | ended
    this.lastProgress = now();
    this.pumping = false;
    this.relayed = null; // the relay send this one moved to
    this.meter = new Meter(file.size, (p) => this.call('onProgress', p));
    link.sends.set(this.id, this);
    this.watch = setInterval(() => this.check(), 250);
    link.say({
      t: 'file', id: this.id, name: file.name || 'file', size: file.size,
      chunk_size: this.chunkSize, chunks: this.chunks, sha256: null,
    });
    this.call('onVia', 'p2p', 'P2P');
    this.call('onOffered', { id: this.id, mode: 'p2p' });
  }

  call(name, arg, arg2) {
    const f = this.cb[name];
    if (f) try { f(arg, arg2); } catch (e) { console.error(e); }
  }

  cancel(reason = 'cancelled') {
    if (this.relayed) return this.relayed.cancel(reason);
    if (this.state === 'ended' || this.state === 'done') return;
    this.link.say({ t: 'cancel', id: this.id, reason });
    this.finish('onCancelled', { by: this.p2p.me, reason });
  }

  finish(name, arg) {
    this.state = name === 'onComplete' ? 'done' : 'ended';
    clearInterval(this.watch);
    this.link.sends.delete(this.id);
    this.call(name, arg);
  }

  message(m) {
    if (this.state !== 'offered' && this.state !== 'moving') return;
    switch (m.t) {
      case 'accept':
        this.state = 'moving';
        this.lastProgress = now();
        this.call('onAccepted');
        this.pump();
        break;
      case 'decline': this.finish('onDeclined', { reason: m.reason }); break;
      case 'cancel': this.finish('onCancelled', { by: this.link.peer, reason: m.reason }); break;
      case 'ack':
        if (m.acked > this.acked) {
          this.acked = Math.min(m.acked, this.chunks);
          this.lastProgress = now();
          this.meter.update(Math.min(this.file.size, this.acked * this.chunkSize));
          this.pump();
        }
        break;
      case 'nack': // a chunk arrived damaged: send again from there
        this.next = Math.max(this.acked, Math.min(this.next, m.from));
        this.lastProgress = now();
        this.pump();
        break;
      case 'done':
        if (m.sha256 === this.sha256) {
          this.meter.update(this.file.size, true);
          this.finish('onComplete', { sha256: m.sha256 });
        } else {
          this.finish('onError', { code: 'hash_mismatch', message: 'the file arrived damaged' });
        }
        break;
    }
  }

  read(index) {
    const start = index * this.chunkSize;
    return this.file.slice(start, Math.min(this.file.size, start + this.chunkSize))
      .arrayBuffer().then((b) => new Uint8Array(b));
  }

  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const dc = this.link.dc;
      while (this.state === 'moving' && this.next < this.chunks && this.next - this.acked < WINDOW) {
        const index = this.next;
        const bytes = await this.read(index);
        if (this.state !== 'moving' || index !== this.next) continue;
        if (index === this.hashed) { this.hasher.update(bytes); this.hashed++; }
        const digest = new Sha256().update(bytes).digest();
        for (let off = 0; off < bytes.length; off += PIECE) {
          if (dc.bufferedAmount > HIGH) await drained(dc);
          if (this.state !== 'moving' || dc.readyState !== 'open') return;
          const part = bytes.subarray(off, Math.min(bytes.length, off + PIECE));
          const frame = new Uint8Array(HEADER + part.length);
          const v = new DataView(frame.buffer);
          v.setUint32(0, this.id);
          v.setUint32(4, index);
          v.setUint32(8, off);
          frame.set(digest, 12);
          frame.set(part, HEADER);
          dc.send(frame);
        }
        // A `nack` that came meanwhile moved `next` back; it stands.
        if (this.next === index) this.next = index + 1;
      }
      if (this.state === 'moving' && this.next === this.chunks && !this.sha256 && this.hashed === this.chunks) {
        this.sha256 = this.hasher.hex();
        this.link.say({ t: 'end', id: this.id, sha256: this.sha256 });
      }
    } catch (e) {
      this.fallback('failed', `the data channel failed: ${e.message || e}`);
    } finally {
      this.pumping = false;
    }
  }

  /** Chunks outstanding and no confirmation for STALL_MS: the direct path is dead. */
  check() {
    if (this.state !== 'moving') return;
    const waiting = this.acked < this.next || (this.acked === this.chunks && this.sha256);
    if (waiting && now() - this.lastProgress > STALL_MS) {
      this.fallback('stalled', `no progress for ${STALL_MS / 1000} s`);
    }
  }

  /** The relay options that continue this send: the hash so far, never read twice. */
  relayOptions(startChunk, extra) {
    const opts = { startChunk, ref: `p2p:${this.id}`, ...extra };
    if (this.sha256) opts.sha256 = this.sha256;
    else { opts.hasher = this.hasher; opts.hashedChunks = this.hashed; }
    return opts;
  }

  /**
   * Moves a running send to the box's relay, live, from the receiver's confirmed chunk.
   * Called the moment the failure is detected; the offer leaves at once.
   */
  fallback(reason, why) {
    if (this.state !== 'moving' && this.state !== 'offered') return;
    const accepted = this.state === 'moving';
    const detectedAt = now();
    this.state = 'moved';
    clearInterval(this.watch);
    this.link.sends.delete(this.id);
    this.link.say({ t: 'moved', id: this.id, to: 'relay', reason });
    // Not yet accepted: the receiver's prompt comes again, from the box, from chunk 0.
    const start = accepted ? this.acked : 0;
    const entry = { event: 'fallback', id: this.id, reason, why, start_chunk: start, chunks: this.chunks };
    const text = reason === 'hidden' ? 'Page in the background: sending through the box' : 'P2P failed, using server';
    this.call('onVia', 'fallback', text);
    this.p2p.moving.add(this);
    this.p2p.render();
    const cb = this.relayCallbacks({
      onAccepted: () => {
        entry.switch_ms = Math.round(now() - detectedAt);
        this.call('onAccepted');
      },
      onAcked: (acked) => {
        if (entry.flowing_ms == null && acked > start) {
          entry.flowing_ms = Math.round(now() - detectedAt);
          record(entry);
          this.call('onSwitched', entry);
        }
      },
    });
    this.relayed = this.p2p.sends.relay.send(this.file, this.link.peer, cb,
      this.relayOptions(start, { inbox: true, acceptTimeoutMs: 60000 }));
    // A path that stopped moving bytes is dead: later sends go through the box too.
    if (reason === 'stalled') this.link.fail(why);
  }

  /** The receiver went to the background: the send is left in its inbox on the box. */
  toInbox() {
    if (this.state !== 'moving' && this.state !== 'offered') return;
    this.state = 'moved';
    clearInterval(this.watch);
    this.link.sends.delete(this.id);
    this.link.say({ t: 'moved', id: this.id, to: 'inbox' });
    record({ event: 'to_inbox', id: this.id, acked: this.acked, chunks: this.chunks });
    this.call('onVia', 'inbox', `${this.p2p.nameOf(this.link.peer)}’s page is in the background: leaving it on the box`);
    this.p2p.moving.add(this);
    this.p2p.render();
    // Inbox sends start at 0; the running hash still spares reading the start twice.
    this.relayed = this.p2p.sends.relay.send(this.file, this.link.peer, this.relayCallbacks({}),
      this.relayOptions(0, { inbox: true, store: true }));
  }

  relayCallbacks(over) {
    const done = () => { this.p2p.moving.delete(this); this.p2p.render(); };
    const cb = {};
    for (const name of ['onOffered', 'onAccepted', 'onAcked', 'onToInbox', 'onDeclined', 'onProgress', 'onPaused',
      'onResumed', 'onStored', 'onComplete', 'onCancelled', 'onError', 'onWarning']) {
      cb[name] = (arg) => {
        if (['onDeclined', 'onStored', 'onComplete', 'onCancelled', 'onError'].includes(name)) done();
        if (over[name]) over[name](arg);
        else this.call(name, arg);
      };
    }
    return cb;
  }
}

/** Resolves when the channel's buffer drained below its low mark, or it closed. */
export function drained(dc) {
  return new Promise((res) => {
    const done = () => {
      dc.removeEventListener('bufferedamountlow', done);
      dc.removeEventListener('close', done);
      res();
    };
    dc.addEventListener('bufferedamountlow', done);
    dc.addEventListener('close', done);
  });
}

/** A file arriving over a data channel; offered to the user through send.js's prompt. */
class DirectReceive {
  constructor(link, meta) {
    this.link = link;
    this.p2p = link.p2p;
    this.from = link.peer;
    this.id = meta.id;
    this.name = String(meta.name || 'file');
    this.size = meta.size;
    this.chunkSize = meta.chunk_size;
    this.chunks = meta.chunks;
    this.next = 0; // chunks written (all of 0..next-1)
    this.expect = 0; // the chunk whose pieces come next
    this.hasher = new Sha256();
    this.sha256 = null; // ours, once every chunk is in
    this.theirs = null; // the sender's, from its `end`
    this.cur = null; // the chunk being put together from pieces
    this.queue = Promise.resolve();
    this.writer = null;
    this.cb = {};
    this.state = 'offered'; // offered | moving | relay | inbox | ended
    this.meter = new Meter(this.size, (p) => this.call('onProgress', p));
    this.prompt = null;
    this.graceTimer = null;
  }

  call(name, arg, arg2) {
    const f = this.cb[name];
    if (f) try { f(arg, arg2); } catch (e) { console.error(e); }
  }

  /** Puts the prompt up (or accepts at once for a trusted device), through send.js. */
  offer() {
    const sends = this.p2p.sends;
    this.prompt = {
      id: `p2p:${this.id}`, direct: true, from: this.from, fromName: this.p2p.nameOf(this.from),
      name: this.name, size: this.size, stored: false,
      autoAccepted: sends.auto.has(this.from),
      accept: (writer, cb) => this.accept(writer, cb),
      decline: (reason) => this.decline(reason),
      onWithdrawn: null,
    };
    sends.offered(this.prompt);
  }

  accept(writer, cb = {}) {
    this.writer = writer;
    this.cb = cb;
    if (this.state !== 'offered') {
      // The offer moved to the box meanwhile; the box's offer is prompted on its own.
      writer.abort?.('moved');
      return this;
    }
    this.state = 'moving';
    this.call('onVia', 'p2p', 'P2P');
    this.link.say({ t: 'accept', id: this.id });
    if (this.chunks === 0) this.queue = this.queue.then(() => this.maybeDone());
    return this;
  }

  decline(reason = 'declined') {
    this.state = 'ended';
    this.link.receives.delete(this.id);
    this.link.say({ t: 'decline', id: this.id, reason });
  }

  cancel(reason = 'cancelled') {
    if (this.relayed) return this.relayed.cancel(reason);
    if (this.state === 'ended') return;
    this.link.say({ t: 'cancel', id: this.id, reason });
    this.end('onCancelled', { by: this.p2p.me, reason });
  }

  end(name, arg, keep = false) {
    this.state = 'ended';
    clearTimeout(this.graceTimer);
    this.link.receives.delete(this.id);
    orphans.delete(this);
    if (!keep && this.writer) this.writer.abort?.(arg?.message || arg?.reason || 'ended');
    if (!this.writer && this.prompt?.onWithdrawn) this.prompt.onWithdrawn(arg || {});
    this.call(name, arg);
  }

  message(m) {
    switch (m.t) {
      case 'end':
        this.theirs = m.sha256;
        this.queue = this.queue.then(() => this.maybeDone());
        break;
      case 'cancel':
        if (this.state === 'offered' || this.state === 'moving') this.end('onCancelled', { by: this.from, reason: m.reason });
        break;
      case 'moved':
        // The sender continues through the box; its offer is claimed when it comes.
        this.movedWhy = m.reason;
        if (this.state === 'offered') this.withdrawPrompt();
        break;
    }
  }

  piece(index, off, digest, part) {
    // Pieces come in order on the ordered channel; anything else is a chunk to be sent again.
    if (this.state !== 'moving' || index !== this.expect) return;
    const len = Math.min(this.chunkSize, this.size - index * this.chunkSize);
    if (off === 0) this.cur = { index, buf: new Uint8Array(len), got: 0, digest: digest.slice() };
    const cur = this.cur;
    if (!cur || cur.index !== index || off !== cur.got || off + part.length > len) {
      this.cur = null;
      return;
    }
    cur.buf.set(part, off);
    cur.got += part.length;
    if (cur.got < len) return;
    this.cur = null;
    this.expect++;
    this.queue = this.queue.then(() => this.chunk(cur)).catch((e) => {
      this.cancel(`the receiver could not write: ${e}`);
    });
  }

  async chunk(cur) {
    if (this.state !== 'moving' || cur.index !== this.next) return;
    const mine = new Sha256().update(cur.buf).digest();
    if (toHex(mine) !== toHex(cur.digest)) {
      // Damaged on the way: ask again from here, and drop what follows until it comes.
      record({ event: 'chunk_damaged', id: this.id, index: cur.index });
      this.expect = this.next;
      this.link.say({ t: 'nack', id: this.id, from: this.next });
      return;
    }
    this.hasher.update(cur.buf);
    await this.writer.write(cur.buf);
    this.next++;
    this.meter.update(Math.min(this.size, this.next * this.chunkSize));
    this.link.say({ t: 'ack', id: this.id, acked: this.next });
    await this.maybeDone();
  }

  async maybeDone() {
    if (this.state !== 'moving' || this.next !== this.chunks) return;
    if (!this.sha256) this.sha256 = this.hasher.hex();
    if (!this.theirs) return;
    this.link.say({ t: 'done', id: this.id, sha256: this.sha256 });
    if (this.sha256 !== this.theirs) {
      this.end('onError', { code: 'hash_mismatch', message: 'the file arrived damaged' });
      return;
    }
    this.state = 'ended';
    this.link.receives.delete(this.id);
    this.meter.update(this.size, true);
    await this.writer.close();
    this.call('onComplete', { sha256: this.sha256 });
  }

  withdrawPrompt() {
    this.state = 'ended';
    this.link.receives.delete(this.id);
    this.prompt?.onWithdrawn?.({ reason: 'moved' });
  }

  /** The channel died: wait a while for the sender to continue through the box. */
  channelLost() {
    if (this.state === 'offered') return this.withdrawPrompt();
    if (this.state !== 'moving') return;
    orphan(this);
    this.call('onVia', 'fallback', 'P2P failed, waiting for the box…');
    this.graceTimer = setTimeout(() => {
      if (this.state === 'moving') this.end('onError', { code: 'lost', message: 'the sender did not continue through the box' });
    }, RECEIVE_GRACE_MS);
  }

  /** This page went to the background: drop the partial file; the sender stores it on the box. */
  toInbox() {
    if (this.state !== 'moving') return;
    this.state = 'inbox';
    clearTimeout(this.graceTimer);
    orphan(this);
    this.writer?.abort?.('moved to the box');
    this.writer = null;
    record({ event: 'receiver_hidden', id: this.id, had: this.next, chunks: this.chunks });
    this.call('onVia', 'inbox', 'This page went to the background: the box keeps this file for you');
  }

  /** Whether relay offer `o` continues this receive: the sender's `ref` names it. */
  matches(o) {
    return o.from === this.from && o.ref === `p2p:${this.id}`;
  }

  /**
   * Takes over the box's offer that continues this receive: a live one from a chunk this
   * page holds, written on after the chunks already written; or, after this page went to
   * the background, the stored copy from the start. Returns true if it took the offer.
   */
  continueViaRelay(offer) {
    if (this.state === 'offered') { this.withdrawPrompt(); return false; }
    if (this.state === 'inbox') {
      if (!offer.stored) return false;
      return this.fromInbox(offer);
    }
    if (this.state !== 'moving') return false;
    const at = now();
    this.state = 'relay';
    clearTimeout(this.graceTimer);
    orphans.delete(this);
    this.link.receives.delete(this.id);
    this.call('onVia', 'fallback', this.movedWhy === 'hidden'
      ? 'Continuing through the box (the sender’s page is in the background)' : 'P2P failed, using server');
    // Accepted at once (the box sends nothing before); chunks already on their way to the
    // writer go first, then the relay writes on after them.
    this.relayed = offer.accept(this.writer, this.cb, {
      after: this.queue,
      resume: () => {
        const held = this.next;
        const spent = this.sha256;
        record({ event: 'receiver_switched', id: this.id, held, start_chunk: offer.startChunk || 0, wait_ms: Math.round(now() - at) });
        return { hasher: spent ? { update() {}, hex: () => spent } : this.hasher, held };
      },
    });
    return true;
  }

  fromInbox(offer) {
    this.state = 'relay';
    orphans.delete(this);
    this.link.receives.delete(this.id);
    this.p2p.sends.saveTarget(this.name).then((writer) => {
      this.writer = writer;
      this.call('onVia', 'inbox', 'Received from the box');
      this.call('onResumed', { fromChunk: 0 });
      this.relayed = offer.accept(writer, this.cb);
    });
    return true;
  }
}
