// Lossless JSON with the semantics of Rust's `serde_json` (as the Rust side
// builds it: `preserve_order`, no `arbitrary_precision`), so JSON that
// crosses between the component and this host reads and writes exactly as
// it does in the native engine and in wasmtime.
//
// Why not `JSON.parse` / `JSON.stringify`:
//
// - Numbers. serde_json keeps three kinds of numbers: unsigned integers
//   (u64), negative integers (i64) and floats (f64). `10` and `10.0` are
//   different values (they compare unequal and print differently), integers
//   above 2^53 are exact, and floats print in serde_json's format (`1.0`,
//   `1e+21`).
//   JavaScript numbers lose all of that, and the audit hashes (SHA-256 of
//   the canonical text) would change.
// - Object keys. serde_json (with `preserve_order`) keeps insertion order;
//   a JavaScript object moves integer-like keys (`"1"`) to the front.
//
// Representation used here (and in storage.mjs):
//
//   null, true/false, string          as themselves
//   number                            a `JsonNumber`
//   array                             an Array
//   object                            a Map (string → value), insertion order
//
// Deterministic: no clock, no randomness.

/** A JSON number as serde_json holds it. */
export class JsonNumber {
  /**
   * @param {'pos'|'neg'|'float'} kind  u64, negative i64, or f64
   * @param {bigint|number} value        a bigint for `pos`/`neg`, a number for `float`
   */
  constructor(kind, value) {
    this.kind = kind;
    this.value = value;
  }

  /** An integer (a bigint or a safe number), as `Number::from(i64/u64)`. */
  static int(n) {
    const b = BigInt(n);
    return new JsonNumber(b < 0n ? 'neg' : 'pos', b);
  }

  /** A float, as `Number::from_f64` (only finite values are representable). */
  static float(f) {
    return new JsonNumber('float', f);
  }

  isInteger() {
    return this.kind !== 'float';
  }

  /** `as_i64`: the value if it is an integer within i64, else undefined. */
  asI64() {
    if (this.kind === 'float') return undefined;
    return this.value <= 9223372036854775807n ? this.value : undefined;
  }

  /** `as_u64`: the value if it is a non-negative integer, else undefined. */
  asU64() {
    return this.kind === 'pos' ? this.value : undefined;
  }

  /** `as_f64`: always a number (integers are converted, maybe rounded). */
  asF64() {
    return this.kind === 'float' ? this.value : Number(this.value);
  }

  /** serde_json's text of the number. */
  toString() {
    return this.kind === 'float' ? formatF64(this.value) : this.value.toString();
  }
}

// ---------------------------------------------------------------------------
// Parsing

class JsonSyntaxError extends Error {}

/**
 * Parses JSON text into the representation above. Throws on invalid JSON
 * (like `serde_json::from_str`; the messages differ from serde's).
 */
export function parse(text) {
  const p = new Parser(text);
  p.ws();
  const v = p.value(0);
  p.ws();
  if (p.i !== text.length) p.fail('trailing characters');
  return v;
}

/** Like `parse`, but returns `fallback` on invalid JSON (`unwrap_or`). */
export function parseOr(text, fallback) {
  try {
    return parse(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return fallback;
    throw e;
  }
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const U64_MAX = 18446744073709551615n;
const I64_MIN = -9223372036854775808n;

class Parser {
  constructor(text) {
    this.s = text;
    this.i = 0;
  }

  fail(what) {
    throw new JsonSyntaxError(`${what} at offset ${this.i}`);
  }

  ws() {
    const s = this.s;
    for (;;) {
      const c = s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else return;
    }
  }

  value(depth) {
    // serde_json refuses nesting deeper than 128.
    if (depth > 128) this.fail('recursion limit exceeded');
    const s = this.s;
    const c = s[this.i];
    switch (c) {
      case '{': {
        this.i++;
        const m = new Map();
        this.ws();
        if (s[this.i] === '}') {
          this.i++;
          return m;
        }
        for (;;) {
          this.ws();
          if (s[this.i] !== '"') this.fail('expected a key');
          const k = this.string();
          this.ws();
          if (s[this.i] !== ':') this.fail("expected ':'");
          this.i++;
          this.ws();
          // A duplicate key keeps its first position and takes the last value
          // (IndexMap::insert), as Map#set does.
          m.set(k, this.value(depth + 1));
          this.ws();
          if (s[this.i] === ',') {
            this.i++;
            continue;
          }
          if (s[this.i] === '}') {
            this.i++;
            return m;
          }
          this.fail("expected ',' or '}'");
        }
      }
      case '[': {
        this.i++;
        const a = [];
        this.ws();
        if (s[this.i] === ']') {
          this.i++;
          return a;
        }
        for (;;) {
          this.ws();
          a.push(this.value(depth + 1));
          this.ws();
          if (s[this.i] === ',') {
            this.i++;
            continue;
          }
          if (s[this.i] === ']') {
            this.i++;
            return a;
          }
          this.fail("expected ',' or ']'");
        }
      }
      case '"':
        return this.string();
      case 't':
        return this.literal('true', true);
      case 'f':
        return this.literal('false', false);
      case 'n':
        return this.literal('null', null);
      default:
        return this.number();
    }
  }

  literal(word, v) {
    if (!this.s.startsWith(word, this.i)) this.fail('expected a value');
    this.i += word.length;
    return v;
  }

  string() {
    // Find the closing quote, then let JSON.parse decode the escapes (its
    // string grammar is the same as serde_json's).
    const s = this.s;
    const start = this.i;
    let j = start + 1;
    let escaped = false;
    for (;;) {
      if (j >= s.length) this.fail('unterminated string');
      const c = s.charCodeAt(j);
      if (c === 0x22) break;
      if (c === 0x5c) {
        escaped = true;
        j += 2;
        continue;
      }
      if (c < 0x20) this.fail('control character in a string');
      j++;
    }
    this.i = j + 1;
    if (!escaped) return s.slice(start + 1, j);
    try {
      return JSON.parse(s.slice(start, j + 1));
    } catch (e) {
      this.fail(`invalid string (${e.message})`);
    }
  }

  number() {
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (!m) this.fail('expected a value');
    this.i += m[0].length;
    const text = m[0];
    if (m[1] === undefined && m[2] === undefined) {
      // An integer: u64 or i64 if it fits (serde_json turns `-0` and
      // integers out of range into floats).
      const b = BigInt(text);
      if (text[0] !== '-') {
        if (b <= U64_MAX) return new JsonNumber('pos', b);
      } else if (b !== 0n && b >= I64_MIN) {
        return new JsonNumber('neg', b);
      }
    }
    const f = Number(text);
    if (!Number.isFinite(f)) this.fail('number out of range');
    return new JsonNumber('float', f);
  }
}

// ---------------------------------------------------------------------------
// Writing

/**
 * The text serde_json writes for a finite f64. serde_json 1.0.154 (the
 * version in Cargo.lock) formats floats with the `zmij` crate (older
 * versions used `ryu`, which differs in the exponent sign): the shortest
 * digits that round-trip; fixed notation when the decimal exponent is in
 * -5..=15 (`1.0`, `0.00001`, `1000000000000000.0`), otherwise scientific
 * with a signed exponent and no `.0` on a single digit (`1e+16`, `1.5e-7`).
 */
export function formatF64(f) {
  if (!Number.isFinite(f)) return 'null';
  if (f === 0) return Object.is(f, -0) ? '-0.0' : '0.0';
  const sign = f < 0 ? '-' : '';
  // toExponential() without a digit count gives the shortest round-trip
  // digits (the same digits as zmij: both are shortest, correctly rounded).
  const [mant, e] = Math.abs(f).toExponential().split('e');
  const digits = mant.replace('.', '');
  const length = digits.length;
  const exp = Number(e); // f = d.ddd × 10^exp
  let out;
  if (exp >= -5 && exp <= 15) {
    if (length - 1 <= exp) {
      out = digits + '0'.repeat(exp - (length - 1)) + '.0'; // 1234e7 -> 12340000000.0
    } else if (exp >= 0) {
      out = digits.slice(0, exp + 1) + '.' + digits.slice(exp + 1); // 12.34
    } else {
      out = '0.' + '0'.repeat(-exp - 1) + digits; // 0.001234
    }
  } else {
    const m = length === 1 ? digits : digits[0] + '.' + digits.slice(1);
    out = m + 'e' + (exp >= 0 ? '+' : '-') + Math.abs(exp);
  }
  return sign + out;
}

/** `serde_json::to_string`: compact, keys in insertion order. */
export function stringify(v) {
  const out = [];
  write(v, out, false);
  return out.join('');
}

/**
 * The canonical text (`sinew_core::bundle::canonical`): compact, object
 * keys sorted by their UTF-8 bytes at every level. Audit hashes are
 * computed over it.
 */
export function canonical(v) {
  const out = [];
  write(v, out, true);
  return out.join('');
}

function write(v, out, sorted) {
  if (v === null) out.push('null');
  else if (v === true) out.push('true');
  else if (v === false) out.push('false');
  else if (typeof v === 'string') out.push(JSON.stringify(v)); // same escapes as serde_json
  else if (v instanceof JsonNumber) out.push(v.toString());
  else if (Array.isArray(v)) {
    out.push('[');
    v.forEach((x, i) => {
      if (i > 0) out.push(',');
      write(x, out, sorted);
    });
    out.push(']');
  } else if (v instanceof Map) {
    out.push('{');
    const keys = [...v.keys()];
    if (sorted) keys.sort(compareStrings);
    keys.forEach((k, i) => {
      if (i > 0) out.push(',');
      out.push(JSON.stringify(k), ':');
      write(v.get(k), out, sorted);
    });
    out.push('}');
  } else {
    throw new TypeError(`not a JSON value: ${String(v)}`);
  }
}

/**
 * Compares strings by their UTF-8 bytes (Rust's `str` order), which is code
 * point order. JavaScript's `<` compares UTF-16 code units, which differs
 * for characters above U+FFFF against U+E000–U+FFFF.
 */
export function compareStrings(a, b) {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (0xD800–0xDFFF) stand for code points above 0xFFFF: move
    // them above 0xE000–0xFFFF.
    if (x >= 0xd800) x += x >= 0xe000 ? -0x800 : 0x2000;
    if (y >= 0xd800) y += y >= 0xe000 ? -0x800 : 0x2000;
    return x < y ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

// ---------------------------------------------------------------------------
// Equality and conversion

/**
 * `serde_json::Value`'s `==`: numbers of different kinds are unequal (`1`
 * ≠ `1.0`), objects compare regardless of key order.
 */
export function equal(a, b) {
  if (a === b) return true;
  if (a instanceof JsonNumber) {
    return b instanceof JsonNumber && a.kind === b.kind && a.value === b.value;
  }
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => equal(x, b[i]));
  }
  if (a instanceof Map) {
    if (!(b instanceof Map) || a.size !== b.size) return false;
    for (const [k, x] of a) {
      if (!b.has(k) || !equal(x, b.get(k))) return false;
    }
    return true;
  }
  return false;
}

/** A short description of a value's type, for messages (`type_name`). */
export function typeName(v) {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return 'a boolean';
  if (typeof v === 'string') return 'a string';
  if (v instanceof JsonNumber) return 'a number';
  if (Array.isArray(v)) return 'an array';
  return 'an object';
}
