// Device-to-device sends on the page, through the box (relay.js) or straight to a device
// connected over P2P (p2p.js picks the path): a "Send file" button on
// every other device, a prompt for incoming files, and a row per transfer with progress,
// speed and time left. A received file streams to disk where the browser allows it (the
// File System Access API, on secure origins); elsewhere it collects in a Blob, which the
// browser keeps on disk once it is large, and is saved through the download mechanism.

import { Relay } from './relay.js';
import { addDeviceAction } from './devices.js';
import { el, formatBytes, formatDuration, describeError, toast } from './ui.js';

/** How long a device has to accept before the send waits on the box for it. */
const ACCEPT_TIMEOUT_MS = 60000;
/** Received bytes gathered before they are folded into the Blob (kept on disk when large). */
const FOLD_BYTES = 8 << 20;
const AUTO_KEY = 'lanvan.autoAccept';

/** Plain words for the relay's error and decline codes (docs/protocol.md). */
const WORDS = {
  hash_mismatch: 'The file arrived damaged, so it was thrown away. Send it again.',
  peer_gone: 'The other device went away and did not come back in time.',
  lost: 'The box no longer knows this transfer (it may have restarted). Send it again.',
  disconnected: 'The connection to the box dropped before the box answered. Send it again.',
  device_offline: 'That device is not connected to the box right now.',
  too_many_transfers: 'Too many files are moving right now. Try again in a moment.',
  inbox_full: 'That device has too many files waiting on the box already.',
  store_failed: 'The box could not keep the file for that device.',
  sender_left: 'The sender went away.',
  timeout: 'Nobody answered in time.',
  not_accepted: 'The other device did not accept the file.',
  no_space: 'The box is out of space, so it cannot keep the file for that device.',
};

const words = (e) => WORDS[e?.code] || describeError(e?.code, e?.message);

function loadAuto() {
  try { return new Set(JSON.parse(localStorage.getItem(AUTO_KEY)) || []); } catch { return new Set(); }
}

/**
 * Where a received file goes. Resolves to a relay.js writer, or null if the user closed the
 * save dialog. Call it straight from a click: the save dialog needs the user's gesture.
 */
export async function saveTarget(name, mayAsk = true) {
  if (mayAsk && typeof window.showSaveFilePicker === 'function') {
    try {
      const handle = await window.showSaveFilePicker({ suggestedName: name });
      const out = await handle.createWritable();
      return {
        where: 'disk',
        write: (bytes) => out.write(bytes),
        close: () => out.close(),
        abort: () => { out.abort().catch(() => {}); },
      };
    } catch (e) {
      if (e?.name === 'AbortError') return null;
      // Not allowed here after all: fall back to a download.
    }
  }
  let blob = new Blob([]);
  let parts = [];
  let held = 0;
  const fold = () => { blob = new Blob([blob, ...parts]); parts = []; held = 0; };
  return {
    where: 'download',
    write(bytes) {
      parts.push(bytes);
      held += bytes.length;
      if (held >= FOLD_BYTES) fold();
    },
    close() {
      fold();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: name, class: 'offscreen' });
      document.body.append(a);
      a.click();
      a.remove();
      blob = null;
      // The download has its own reference by then; give slow disks a while anyway.
      setTimeout(() => URL.revokeObjectURL(url), 120000);
    },
    abort() { blob = null; parts = []; },
  };
}

/** One transfer's row: name, the other device, progress, status and Cancel. */
class Row {
  constructor(list, dir, name, size, peerName) {
    this.dir = dir;
    this.size = size;
    this.peer = peerName;
    this.bar = el('progress', { max: 1000, value: 0, 'aria-label': `Progress of ${name}` });
    this.status = el('span', { class: 'status' }, '');
    this.button = el('button', {
      class: 'btn small', type: 'button',
      'aria-label': `Cancel ${dir === 'out' ? 'sending' : 'receiving'} ${name}`,
    }, 'Cancel');
    const arrow = dir === 'out' ? `to ${peerName}` : `from ${peerName}`;
    this.li = el('li', { class: 'upload transfer', 'data-dir': dir, 'data-state': 'waiting' },
      el('div', { class: 'line' },
        el('span', { class: 'name', title: name }, name),
        this.button),
      el('span', { class: 'peer' }, arrow),
      this.bar, this.status);
    this.viaTag = null;
    list.prepend(this.li);
    list.closest('section').hidden = false;
  }

  onCancel(fn) { this.button.onclick = fn; }

  /** Which path the bytes take: "p2p", "fallback" (P2P failed, the box took over), "inbox". */
  via(kind, text) {
    if (!this.viaTag) {
      this.viaTag = el('span', { class: 'via', role: 'status' });
      this.li.querySelector('.peer').after(this.viaTag);
    }
    this.li.dataset.via = kind;
    this.viaTag.dataset.via = kind;
    this.viaTag.textContent = text;
    if (kind === 'inbox' && this.dir === 'in') this.set('waiting', 'Waiting for the box…');
  }

  set(state, text) {
    this.li.dataset.state = state;
    this.status.textContent = text;
    if (state !== 'waiting' && state !== 'moving' && state !== 'paused') {
      this.button.textContent = 'Remove';
      this.button.setAttribute('aria-label', 'Remove from the list');
      this.button.onclick = () => this.li.remove();
      if (state === 'done') this.bar.value = 1000;
    }
  }

  progress(p) {
    this.bar.value = p.total ? Math.round((1000 * p.bytes) / p.total) : 1000;
    const pct = p.total ? Math.floor((100 * p.bytes) / p.total) : 100;
    const rate = p.speed > 0 ? ` · ${formatBytes(p.speed)}/s` : '';
    const left = p.eta != null && p.speed > 0 ? ` · ${formatDuration(p.eta)} left` : '';
    const verb = this.dir === 'out' ? 'Sending' : 'Receiving';
    this.set('moving', `${verb} · ${pct}% of ${formatBytes(this.size)}${rate}${left}`);
  }
}

/** The page's side of device-to-device sends. */
export class Sends {
  constructor(conn, devices, { list, dialog, picker }) {
    this.conn = conn;
    this.devices = devices; // DeviceList, for names
    this.list = list;
    this.dialog = dialog;
    this.picker = picker;
    this.relay = null;
    this.auto = loadAuto();
    this.offers = []; // incoming offers waiting for an answer, oldest first
    this.prompted = new Set(); // offer ids already asked about
    this.byInbox = new Map(); // inbox id -> Row, for "delivered" notices
    this.target = null;
    this.p2p = null; // p2p.js sets itself here when the box offers P2P
    this.saveTarget = saveTarget;

    conn.on('socket', (ws) => {
      const handlers = { onOffer: (o) => this.offered(o), onNotice: (m) => this.notice(m) };
      if (this.relay) this.relay.attach(ws);
      else this.relay = new Relay(ws, handlers);
    });
    conn.on('welcome', () => this.relay?.setAutoAccept([...this.auto]));
    picker.addEventListener('change', () => {
      const files = [...picker.files];
      picker.value = '';
      if (this.target) for (const f of files) this.send(f, this.target);
    });
    addDeviceAction((d, slot) => slot.append(
      el('button', {
        class: 'btn small primary', type: 'button', 'data-send': d.id,
        'aria-label': `Send a file to ${d.name}`,
        onclick: () => { this.target = d.id; picker.click(); },
      }, 'Send file'),
      el('button', {
        class: 'btn small', type: 'button', 'data-auto': d.id,
        'aria-pressed': String(this.auto.has(d.id)),
        title: 'Accept files from this device without asking',
        'aria-label': `Accept files from ${d.name} without asking`,
        onclick: (e) => this.toggleAuto(d.id, e.currentTarget),
      }, this.auto.has(d.id) ? 'Trusted ✓' : 'Trust'),
    ));
    dialog.querySelector('[data-answer="accept"]').addEventListener('click', () => this.answer(true));
    dialog.querySelector('[data-answer="decline"]').addEventListener('click', () => this.answer(false));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); this.answer(false); });
  }

  nameOf(id) { return this.devices.devices.get(id)?.name || 'the other device'; }

  toggleAuto(id, button) {
    if (this.auto.has(id)) this.auto.delete(id); else this.auto.add(id);
    try { localStorage.setItem(AUTO_KEY, JSON.stringify([...this.auto])); } catch { /* private mode */ }
    button.setAttribute('aria-pressed', String(this.auto.has(id)));
    button.textContent = this.auto.has(id) ? 'Trusted ✓' : 'Trust';
    this.relay?.setAutoAccept([...this.auto]);
  }

  /**
   * Sends `file` to device `to`: straight over a P2P link when the transfer mode and the
   * link allow it (p2p.js), else through the box; if the device is away or does not
   * answer, it waits on the box.
   */
  async send(file, to) {
    if (!this.relay || this.conn.state !== 'open') {
      toast('Not connected to the box. Try again when the dot is green.');
      return;
    }
    const peer = this.nameOf(to);
    const row = new Row(this.list, 'out', file.name, file.size, peer);
    row.set('waiting', `Waiting for ${peer} to accept…`);
    const link = this.p2p ? await this.p2p.route(to, () => row.set('waiting', `Connecting directly to ${peer}…`)) : null;
    const callbacks = {
      onOffered: ({ mode }) => {
        if (mode === 'inbox') row.set('waiting', `${peer} is away: leaving it on the box…`);
      },
      onAccepted: () => row.set('moving', 'Sending…'),
      onToInbox: () => row.set('waiting', `No answer from ${peer}: leaving it on the box…`),
      onProgress: (p) => row.progress(p),
      onPaused: () => row.set('paused', `${peer} lost the connection · waiting for it to come back…`),
      onResumed: () => row.set('moving', 'Sending…'),
      onStored: ({ inboxId }) => {
        this.byInbox.set(inboxId, row);
        row.set('stored', `Waiting on the box · ${peer} gets it when it connects`);
      },
      onComplete: () => row.set('done', `Delivered to ${peer} · ${formatBytes(file.size)}`),
      onDeclined: () => row.set('error', `${peer} declined the file.`),
      onCancelled: ({ by }) => row.set('error', by === this.conn.me.id ? 'Cancelled.' : `${peer} cancelled.`),
      onError: (e) => row.set('error', words(e)),
      onWarning: (e) => console.warn('relay:', e),
      onVia: (kind, text) => row.via(kind, text),
      onSwitched: (s) => {
        row.li.dataset.switchMs = String(s.switch_ms);
        row.li.dataset.startChunk = String(s.start_chunk);
      },
    };
    const t = link ? this.p2p.sendDirect(link, file, callbacks)
      : this.relay.send(file, to, callbacks, { inbox: true, acceptTimeoutMs: ACCEPT_TIMEOUT_MS });
    if (!link && this.p2p?.box.mode !== 'off' && this.p2p) row.via('server', 'Server');
    row.onCancel(() => t.cancel('cancelled'));
  }

  /** An earlier send that waited on the box was delivered, expired or declined. */
  notice(m) {
    const row = this.byInbox.get(m.inbox_id);
    const who = this.nameOf(m.to);
    const text = {
      relay_delivered: `Delivered to ${who} from the box`,
      relay_expired: `Not picked up in time; the box deleted it.`,
      relay_declined: `${who} declined the file.`,
    }[m.type];
    if (!text) return;
    if (row) row.set(m.type === 'relay_delivered' ? 'done' : 'error', text);
    toast(`“${m.name}”: ${text}`, m.type === 'relay_delivered' ? 'info' : 'error');
  }

  offered(offer) {
    // A box offer that continues a P2P receive is taken over by that receive.
    if (!offer.direct && this.p2p?.claim(offer)) return;
    if (offer.autoAccepted) {
      this.accept(offer, null);
      return;
    }
    if (this.prompted.has(offer.id)) return;
    this.prompted.add(offer.id);
    offer.onWithdrawn = (info) => {
      const showing = this.dialog.open && this.offers[0] === offer;
      this.offers = this.offers.filter((o) => o !== offer);
      if (showing) this.dialog.close();
      if (info?.reason !== 'moved') toast(`${offer.fromName || this.nameOf(offer.from)} cancelled “${offer.name}”.`, 'info');
      this.prompt();
    };
    this.offers.push(offer);
    this.prompt();
  }

  /** Shows the oldest unanswered offer, one at a time. */
  prompt() {
    if (this.dialog.open || !this.offers.length) return;
    const o = this.offers[0];
    const from = o.fromName || this.nameOf(o.from);
    this.dialog.querySelector('.offer-text').textContent = o.stored
      ? `${from} left a file for you on the box:`
      : o.direct ? `${from} wants to send you a file directly (P2P):`
        : `${from} wants to send you a file:`;
    this.dialog.querySelector('.offer-name').textContent = o.name;
    this.dialog.querySelector('.offer-size').textContent = formatBytes(o.size);
    this.dialog.showModal();
  }

  async answer(yes) {
    const o = this.offers.shift();
    this.dialog.close();
    if (o) {
      if (yes) await this.accept(o, saveTarget(o.name));
      else o.decline('declined');
    }
    this.prompt();
  }

  /** Accepts `offer`, saving to `target` (a promise of a writer), or a new download. */
  async accept(offer, target) {
    const from = offer.fromName || this.nameOf(offer.from);
    // Without a click there is no gesture for a save dialog: a trusted device's file downloads.
    const writer = await (target || saveTarget(offer.name, false));
    if (!writer) {
      offer.decline('declined');
      return;
    }
    const row = new Row(this.list, 'in', offer.name, offer.size, from);
    row.set('moving', 'Receiving…');
    const saved = writer.where === 'disk' ? 'saved' : 'saved to your downloads';
    const t = offer.accept(writer, {
      onProgress: (p) => row.progress(p),
      onPaused: () => row.set('paused', `${from} lost the connection · waiting for it to come back…`),
      onResumed: () => row.set('moving', 'Receiving…'),
      onComplete: () => row.set('done', `Received · ${formatBytes(offer.size)} · ${saved}`),
      onCancelled: ({ by }) => row.set('error', by === this.conn.me.id ? 'Cancelled.' : `${from} cancelled.`),
      onError: (e) => row.set('error', words(e)),
      onVia: (kind, text) => row.via(kind, text),
    });
    row.onCancel(() => t.cancel('cancelled'));
  }
}
