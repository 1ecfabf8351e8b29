// LANVan's browser app: wires the connection, the uploader, the file list, the clipboard
// and the device list to the page. Plain ES modules, no build step, nothing from outside
// the box; works on plain-HTTP LAN origins (no crypto.subtle, clipboard API or workers).

import { identity, saveIdentity, Connection } from './conn.js';
import { Uploader } from './uploads.js';
import { FileList } from './files.js';
import { Clipboard } from './clipboard.js';
import { DeviceList } from './devices.js';
import { Sends } from './send.js';
import { P2P } from './p2p.js';
import { Swarm } from './swarm.js';
import { describeError, toast } from './ui.js';

const $ = (id) => document.getElementById(id);

const me = identity();
const conn = new Connection(me);
const files = new FileList($('files'), $('files-empty'), $('files-count'));
const uploader = new Uploader(me, $('uploads'));
const devices = new DeviceList(conn, $('devices'), $('dev-count'));
const sends = new Sends(conn, devices, {
  list: $('transfers'), dialog: $('offer'), picker: $('send-pick'),
});
const p2p = new P2P(conn, sends, {
  card: $('p2p-card'), mode: $('p2p-mode'), status: $('p2p-status'), statusText: $('p2p-status-text'),
  list: $('p2p-devices'), empty: $('p2p-empty'), dialog: $('p2p-request'),
});
const swarm = new Swarm(conn, p2p);
files.swarm = swarm;
new Clipboard(conn, {
  form: $('clip-form'), text: $('clip-text'), send: $('clip-send'), current: $('clip-current'),
  historyBox: $('clip-history-box'), history: $('clip-history'), historyCount: $('clip-history-count'),
});

// For modules added later (relay.js) and for tests.
window.lanvan = { me, conn, uploader, files, sends, p2p, swarm };

// Connection indicator.
const STATES = { open: 'Connected', connecting: 'Connecting…' };
let countdown = null;
conn.on('state', (state) => {
  $('conn').dataset.state = state;
  clearInterval(countdown);
  if (state === 'waiting') {
    const show = () => {
      const s = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      $('conn-text').textContent = s > 0 ? `Offline · retrying in ${s} s` : 'Offline · retrying…';
    };
    show();
    countdown = setInterval(show, 1000);
  } else {
    $('conn-text').textContent = STATES[state];
  }
});
conn.on('welcome', (m) => {
  files.reload();
  uploader.wake(); // uploads waiting for the box retry now
  if (m.name && m.name !== me.name) $('me-name').value = m.name;
});
conn.on('file_added', (m) => files.added(m.file));
conn.on('file_deleted', (m) => files.deleted(m.name));
conn.on('error', (m) => {
  // Relay errors reach the transfer they belong to (send.js), P2P errors p2p.js.
  const ref = String(m.ref_type || '');
  if (m.code !== 'not_implemented' && !/^(relay_|p2p_|webrtc_|enable_p2p|rtc_|announce|query)/.test(ref)) {
    toast(describeError(m.code, m.message));
  }
});

// This device's name.
$('me-name').value = me.name;
$('me-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const name = $('me-name').value.trim();
  if (!name) return;
  me.name = name;
  saveIdentity(me);
  conn.send({ type: 'hello', name });
  toast('Name saved.', 'info');
});

// Choosing files: the pickers, and dropping anywhere on the page.
for (const id of ['pick-files', 'pick-folder']) {
  $(id).addEventListener('change', (e) => {
    uploader.add([...e.target.files]);
    swarm.picked([...e.target.files]);
    e.target.value = '';
  });
}
$('choose-files').addEventListener('click', () => $('pick-files').click());
$('choose-folder').addEventListener('click', () => $('pick-folder').click());
$('parallel').value = String(uploader.limit);
$('parallel').addEventListener('change', (e) => uploader.setLimit(e.target.value));

let dragDepth = 0;
const zone = $('dropzone');
const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes('Files');
addEventListener('dragenter', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth++;
  zone.hidden = false;
});
addEventListener('dragover', (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  e.dataTransfer.dropEffect = 'copy';
});
addEventListener('dragleave', () => {
  if (--dragDepth <= 0) { dragDepth = 0; zone.hidden = true; }
});
addEventListener('drop', async (e) => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  zone.hidden = true;
  const dropped = await droppedFiles(e.dataTransfer);
  uploader.add(dropped);
  swarm.picked(dropped);
});

/** Files from a drop, with the files inside dropped folders (flattened). */
async function droppedFiles(dt) {
  const entries = [...(dt.items || [])].map((it) => it.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length || entries.every((en) => en.isFile)) return [...dt.files];
  const out = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      out.push(await new Promise((res, rej) => entry.file(res, rej)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const en of entries) {
    try { await walk(en); } catch { toast(`Could not read “${en.name}”.`); }
  }
  return out;
}

// The QR code of the box's address, drawn by the box.
async function showQr() {
  try {
    const res = await fetch('/api/qr.svg');
    const url = res.headers.get('x-lanvan-url') || location.href;
    $('qr').innerHTML = await res.text();
    $('qr').setAttribute('aria-label', `QR code of ${url}`);
    $('box-url').textContent = url.replace(/\/$/, '');
    $('box-url').href = url;
  } catch { /* shown again on the next load */ }
}

uploader.showUnfinished(() => $('pick-files').click());
showQr();
files.reload();
conn.connect();
