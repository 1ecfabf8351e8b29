// The devices connected to the box, kept live from welcome / device_joined / device_left /
// device_updated. Each row has an actions slot: other modules add buttons to it with
// `addDeviceAction((device, slot, conn) => ...)` (e.g. a "Send file" button).

import { el, formatAge } from './ui.js';

const actions = [];

/** Registers a renderer called for every other device's row, with its actions slot. */
export function addDeviceAction(render) {
  actions.push(render);
  for (const list of lists) list.render();
}

const lists = new Set();

export class DeviceList {
  constructor(conn, list, count) {
    this.conn = conn;
    this.list = list;
    this.count = count;
    this.devices = new Map();
    lists.add(this);
    conn.on('welcome', (m) => {
      this.devices = new Map(m.devices.map((d) => [d.id, d]));
      this.render();
    });
    const upsert = (m) => { this.devices.set(m.device.id, m.device); this.render(); };
    conn.on('device_joined', upsert);
    conn.on('device_updated', upsert);
    conn.on('devices', (m) => { this.devices = new Map(m.devices.map((d) => [d.id, d])); this.render(); });
    conn.on('device_left', (m) => { this.devices.delete(m.device_id); this.render(); });
    conn.on('closed', () => { this.devices.clear(); this.render(); });
  }

  render() {
    const me = this.conn.me.id;
    const sorted = [...this.devices.values()].sort((a, b) => (b.id === me) - (a.id === me)
      || a.connected_at - b.connected_at || a.id.localeCompare(b.id));
    this.list.replaceChildren(...sorted.map((d) => this.row(d, d.id === me)));
    this.count.textContent = sorted.length ? `(${sorted.length})` : '';
  }

  row(d, isMe) {
    const slot = el('div', { class: 'actions' });
    if (!isMe) {
      for (const render of actions) {
        try { render(d, slot, this.conn); } catch (e) { console.error(e); }
      }
    }
    // A letter avatar: no emoji font is needed, and its colour tells devices apart.
    let hue = 0;
    for (const c of d.id) hue = (hue * 31 + c.charCodeAt(0)) % 360;
    return el('li', { class: 'device', 'data-id': d.id },
      el('span', { class: 'avatar', 'aria-hidden': 'true', style: `--hue: ${hue}` },
        (d.name.trim()[0] || '?').toUpperCase()),
      el('div', { class: 'info' },
        el('span', { class: 'name' }, d.name, isMe ? el('span', { class: 'badge' }, 'this device') : null),
        el('span', { class: 'meta' }, `${d.kind === 'unknown' ? 'device' : d.kind} · joined ${formatAge(d.connected_at, Date.now())}`)),
      slot);
  }
}
