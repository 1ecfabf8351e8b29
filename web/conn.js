// The one WebSocket to the box (docs/protocol.md) and this browser's identity. Reconnects
// by itself with backoff and notices a dead socket with app-level pings. Other modules
// (the app, relay.js) listen with `conn.on(type, fn)` and send with `conn.send(msg)`;
// `socket` is emitted with each new WebSocket before it opens.

const STORE_KEY = 'lanvan.device';

/** A random device id from crypto.getRandomValues, which plain-HTTP origins keep. */
function newId() {
  const b = new Uint8Array(9);
  crypto.getRandomValues(b);
  return 'b-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** A first name for this device, from what the browser says it is. */
function guessDevice() {
  const ua = navigator.userAgent;
  const kind = /iPad|Tablet/i.test(ua) ? 'tablet'
    : /Mobi|Android|iPhone/i.test(ua) ? 'phone' : 'laptop';
  const os = /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS'
    : /Windows/.test(ua) ? 'Windows' : /Mac OS/.test(ua) ? 'Mac' : /CrOS/.test(ua) ? 'Chromebook'
    : /Linux/.test(ua) ? 'Linux' : '';
  const label = { phone: 'phone', tablet: 'tablet', laptop: 'computer' }[kind];
  return { kind, name: os ? `${os} ${label}` : `My ${label}` };
}

/** The stable id, name and kind of this browser, kept in localStorage. */
export function identity() {
  let me = null;
  try { me = JSON.parse(localStorage.getItem(STORE_KEY)); } catch { /* fresh below */ }
  if (!me || typeof me.id !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(me.id)) {
    me = { id: newId(), ...guessDevice() };
    saveIdentity(me);
  }
  return me;
}

export function saveIdentity(me) {
  try { localStorage.setItem(STORE_KEY, JSON.stringify(me)); } catch { /* private mode */ }
}

export class Connection {
  constructor(me) {
    this.me = me;
    this.ws = null;
    this.state = 'connecting'; // connecting | open | waiting
    this.handlers = new Map();
    this.backoff = 500;
    this.retryAt = 0;
    this.lastHeard = 0;
    this.timer = null;
    setInterval(() => this.watch(), 5000);
    // A phone that wakes up or gets its network back should not wait for the backoff.
    addEventListener('online', () => this.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.reconnectNow();
    });
  }

  /** Calls `fn(msg)` for every message of `type`; `*` gets all, `state` gets state changes. */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
  }

  emit(type, value) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(value); } catch (e) { console.error(e); }
    }
  }

  /** Sends a message if the socket is open. Returns whether it was sent. */
  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  setState(state) {
    this.state = state;
    this.emit('state', state);
  }

  connect() {
    clearTimeout(this.timer);
    this.setState('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ name: this.me.name, kind: this.me.kind });
    const ws = new WebSocket(`${proto}//${location.host}/ws/${encodeURIComponent(this.me.id)}?${q}`);
    this.ws = ws;
    // relay.js listens on the socket itself, from before it opens (docs/protocol.md).
    this.emit('socket', ws);
    ws.onopen = () => {
      this.lastHeard = Date.now();
      this.backoff = 500;
    };
    ws.onmessage = (ev) => {
      this.lastHeard = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === 'welcome') this.setState('open');
      this.emit(msg.type, msg);
      this.emit('*', msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.emit('closed', ev);
      this.scheduleRetry();
    };
  }

  scheduleRetry() {
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 8000);
    this.retryAt = Date.now() + wait;
    this.setState('waiting');
    this.timer = setTimeout(() => this.connect(), wait);
  }

  reconnectNow() {
    if (this.state === 'waiting') {
      this.backoff = 500;
      this.connect();
    }
  }

  /** Pings when quiet; closes a socket that stays silent, so a dead LAN link is noticed. */
  watch() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - this.lastHeard;
    if (quiet > 20000) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
      this.emit('closed', null);
      this.scheduleRetry();
    } else if (quiet > 8000) {
      this.send({ type: 'ping' });
    }
  }
}
