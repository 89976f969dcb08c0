// Positions in a spec's text. The component counts UTF-8 bytes; the editor
// (and every JavaScript string) counts UTF-16 code units.

const ASCII = /^[\x00-\x7f]*$/;

/**
 * A function from UTF-8 byte offsets in `text` to UTF-16 offsets. Offsets
 * inside a character map to its start; past the end, to the end.
 */
export function byteOffsets(text) {
  if (ASCII.test(text)) return (b) => Math.min(b, text.length);
  // One entry per byte: the UTF-16 offset of the character it belongs to.
  const map = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.codePointAt(i);
    const bytes = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    for (let k = 0; k < bytes; k++) map.push(i);
    if (c >= 0x10000) i++;
  }
  map.push(text.length);
  return (b) => (b < map.length ? map[b] : text.length);
}

/** The UTF-16 offset of a 1-based line and column (columns count characters). */
export function lineColumnOffset(text, line, column) {
  let at = 0;
  for (let l = 1; l < line; l++) {
    const nl = text.indexOf('\n', at);
    if (nl < 0) return text.length;
    at = nl + 1;
  }
  // Columns count Unicode characters; step over surrogate pairs.
  for (let c = 1; c < column && at < text.length && text[at] !== '\n'; c++) {
    at += text.codePointAt(at) >= 0x10000 ? 2 : 1;
  }
  return at;
}

/** Escapes one JSON Pointer token. */
export function pointerToken(k) {
  return String(k).replaceAll('~', '~0').replaceAll('/', '~1');
}
