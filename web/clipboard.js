// The shared clipboard (docs/protocol.md, "The shared clipboard"): the highest `seq` wins,
// each welcome resets it (the box may have restarted), and every item has a Copy button
// that works on plain HTTP too.

import { el, formatAge, copyText, toast } from './ui.js';

const HISTORY = 20;

export class Clipboard {
  constructor(conn, nodes) {
    this.conn = conn;
    this.n = nodes; // {form, text, send, current, historyBox, history, historyCount}
    this.items = []; // oldest first
    this.seq = 0;
    this.sending = null; // text sent and not yet acknowledged
    nodes.text.addEventListener('input', () => this.updateButton());
    nodes.text.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.share(); }
    });
    nodes.form.addEventListener('submit', (e) => { e.preventDefault(); this.share(); });
    conn.on('welcome', (m) => {
      this.seq = 0;
      this.items = [];
      for (const it of m.clipboard_history || []) this.adopt(it, false);
      if (m.clipboard) this.adopt(m.clipboard, false);
      this.render();
    });
    conn.on('clipboard_update', (m) => { if (this.adopt(m, true)) this.render(); });
    conn.on('clipboard_ack', (m) => {
      if (this.sending === null) return;
      const item = { seq: m.seq, text: this.sending, from: conn.me.id, from_name: conn.me.name, at: Date.now() };
      this.sending = null;
      this.adopt(item, false);
      this.render();
    });
    conn.on('state', () => this.updateButton());
    setInterval(() => this.render(), 30000);
  }

  updateButton() {
    this.n.send.disabled = !this.n.text.value.trim() || this.conn.state !== 'open';
  }

  share() {
    const text = this.n.text.value;
    if (!text.trim()) return;
    if (!this.conn.send({ type: 'clipboard_update', text })) {
      toast('Not connected to the box; try again in a moment.');
      return;
    }
    this.sending = text;
    this.n.text.value = '';
    this.updateButton();
  }

  /** Takes an item if it is newer than anything seen. Returns whether it did. */
  adopt(item, fresh) {
    if (item.seq <= this.seq) return false;
    this.seq = item.seq;
    this.items.push({ ...item, fresh });
    if (this.items.length > HISTORY) this.items.shift();
    return true;
  }

  render() {
    const [current, ...older] = [...this.items].reverse();
    const { current: box, historyBox, history, historyCount } = this.n;
    box.hidden = !current;
    if (current) box.replaceChildren(...this.item(current, true));
    historyBox.hidden = older.length === 0;
    historyCount.textContent = `(${older.length})`;
    history.replaceChildren(...older.map((it) => el('li', { class: 'clip-item' }, ...this.item(it, false))));
  }

  item(it, isCurrent) {
    const who = it.from === this.conn.me.id ? 'you' : it.from_name;
    const text = el('p', { class: 'clip-text' }, it.text);
    return [
      text,
      el('div', { class: 'line' },
        el('span', { class: 'meta' }, `${isCurrent ? 'Latest · ' : ''}from ${who} · ${formatAge(it.at, Date.now())}`),
        el('button', {
          class: `btn small${isCurrent ? ' primary' : ''}`, type: 'button',
          'aria-label': isCurrent ? 'Copy the latest shared text' : `Copy “${it.text.slice(0, 40)}”`,
          onclick: async (e) => {
            const ok = await copyText(it.text);
            if (ok) {
              e.target.textContent = 'Copied';
              setTimeout(() => { e.target.textContent = 'Copy'; }, 1500);
            } else {
              // Nothing could copy: select the text so a long-press or Ctrl+C does it.
              const r = document.createRange();
              r.selectNodeContents(text);
              getSelection().removeAllRanges();
              getSelection().addRange(r);
              toast('Copying is blocked here; the text is selected, copy it by hand.', 'info');
            }
          },
        }, 'Copy')),
    ];
  }
}
