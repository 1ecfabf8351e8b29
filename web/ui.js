// Small DOM and wording helpers shared by the app's modules: building elements, sizes,
// times, the box's error codes in plain words, toasts, and copying text without
// navigator.clipboard (which plain-HTTP origins do not get).

/** Creates an element: `el('button', {class: 'btn', onclick}, 'Text', child)`. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

export function formatBytes(n) {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let i = -1;
  do { n /= 1000; i++; } while (n >= 1000 && i < units.length - 1);
  return `${n < 100 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

export function formatDuration(secs) {
  if (!isFinite(secs)) return '';
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return `${secs} s`;
  const m = Math.floor(secs / 60);
  if (m < 60) return `${m} min ${String(secs % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

/** "just now", "5 min ago", "yesterday"... for a time in ms, both on the same clock. */
export function formatAge(thenMs, nowMs) {
  const s = Math.max(0, (nowMs - thenMs) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  const d = Math.round(s / 86400);
  return d === 1 ? 'yesterday' : `${d} days ago`;
}

/** What the box's error codes (docs/api.md, docs/protocol.md) mean to a person. */
const WORDS = {
  no_space: 'The box is out of space. Delete some files on the box, then send this again.',
  quota_exceeded: 'The box has reached its storage limit. Delete some files, then send this again.',
  too_many_files: 'The box holds as many files as it allows. Delete some files first.',
  disk_full: 'The box’s disk filled up. Free some space on the box; sending goes on by itself.',
  too_large: 'This file is too large for the box.',
  bad_name: 'The box cannot use this file name. Rename the file and try again.',
  file_hash_mismatch: 'The file changed while it was being sent. Choose it again to send the new version.',
  chunk_hash_mismatch: 'Part of the file arrived damaged.',
  io_error: 'The box could not write to its disk. Try again later.',
  too_many_uploads: 'The box is receiving too many files right now.',
  too_many_connections: 'The box is busy right now.',
  file_not_found: 'That file is no longer on the box.',
  upload_not_found: 'The box no longer has this unfinished file.',
  clipboard_too_large: 'That text is too long to share.',
  rate_limited: 'Too many messages at once; slow down a little.',
  refused: 'The box did not let this device in.',
};

export function describeError(code, message) {
  return WORDS[code] || message || 'Something went wrong on the box.';
}

/** Shows a short message at the bottom of the page for a few seconds. */
export function toast(text, kind = 'error') {
  const box = document.getElementById('toasts');
  const t = el('p', { class: `toast ${kind}` }, text);
  box.append(t);
  while (box.children.length > 3) box.firstChild.remove();
  setTimeout(() => t.remove(), 6000);
}

/**
 * Copies text. navigator.clipboard exists only on secure origins (HTTPS, localhost); on a
 * plain-HTTP LAN address the hidden-textarea `execCommand('copy')` still works.
 */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* fall back */ }
  }
  const ta = el('textarea', { readonly: true, 'aria-hidden': 'true', class: 'offscreen' });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  ta.setSelectionRange(0, text.length);
  let ok = false;
  try { ok = document.execCommand('copy'); } catch { ok = false; }
  ta.remove();
  return ok;
}
