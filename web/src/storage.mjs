// The world of the component in JavaScript (the browser preview, and the
// Node conformance test in tests/node): an in-memory storage, a settable
// clock and scripted externals, and the import objects that hand them to a
// jco-transpiled component. No Node or browser API: it runs in both.
//
// They are line-by-line ports of the Rust reference implementations, and
// must behave exactly like them:
//
//   MemoryStorage      core/src/ports/memory.rs   (`MemoryStorage`)
//   ScriptedExternal   core/src/ports/script.rs   (`ScriptedExternal`)
//   FixedClock         core/src/ports/memory.rs   (`FixedClock`)
//   storageImport…     host/src/runtime/storage.rs, clock.rs, external.rs
//                      (how wasmtime's host implements the WIT imports)
//
// Read memory.rs's module documentation for the semantics (multi-version
// rows, isolation levels, locks, savepoints, unique fields, first committer
// wins, idempotency keys, rate windows, the audit chain). Every place
// where Rust iterates an ordered map (`BTreeMap`, `BTreeSet`) iterates in
// the same order here (keys sorted by UTF-8 bytes or numerically), so that
// the first error found, and every list returned, are the same.
//
// JSON values use the lossless representation of json.mjs (numbers as
// `JsonNumber`, objects as `Map`), so rows, bodies and audit entries
// round-trip byte for byte as they do through serde_json.
//
// Deterministic: no `Date.now`, no `Math.random`, no I/O.

import { sha256Hex } from './sha256.mjs';
import {
  JsonNumber,
  parse,
  parseOr,
  stringify,
  canonical,
  compareStrings,
  equal,
  typeName,
} from './json.mjs';

/** How long an idempotency key is remembered after it was claimed. */
export const IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000;

/** The `prev` of the first audit entry. */
export const GENESIS_HASH = '0'.repeat(64);

export { sha256Hex };

// ---------------------------------------------------------------------------
// Errors

/**
 * A storage error, thrown. `payload` is the WIT `storage-error` variant as
 * jco lowers it (`{tag, val}`): jco's import wrappers turn a thrown value
 * with a `payload` property into the `err` case of the function's `result`
 * (a thrown `Error` without `payload` would trap the guest instead).
 */
export class StorageFailure extends Error {
  constructor(tag, val) {
    super(typeof val === 'string' ? `${tag}: ${val}` : `${tag}: ${JSON.stringify(val)}`);
    this.payload = { tag, val };
  }
}

const invalid = (message) => new StorageFailure('invalid', message);
const conflict = (message) => new StorageFailure('conflict', message);
const notFound = (entity, id) => new StorageFailure('not-found', { entity, id });
const uniqueViolation = (entity, field) => new StorageFailure('unique', { entity, field });

// ---------------------------------------------------------------------------
// Small helpers

/** Map entries sorted by key, UTF-8 byte order (a `BTreeMap<String, _>`). */
function sortedEntries(map) {
  return [...map.entries()].sort((a, b) => compareStrings(a[0], b[0]));
}

/** The key of a row: `(entity, id)`. */
function rowKey(entity, id) {
  return JSON.stringify([entity, id]);
}

/** The value of a column (`null` when missing). */
function column(row, name) {
  return row.has(name) ? row.get(name) : null;
}

/** Not soft-deleted? */
function isLive(row) {
  return !row.has('deleted_at') || row.get('deleted_at') === null;
}

/** The committed version visible at commit sequence `seq`. */
function versionAt(versions, seq) {
  for (let i = versions.length - 1; i >= 0; i--) {
    if (versions[i].seq <= seq) return versions[i];
  }
  return undefined;
}

/** Drops the versions no snapshot can see any more. */
function prune(versions, minSnapshot) {
  let keepFrom;
  if (minSnapshot === undefined) {
    keepFrom = Math.max(versions.length - 1, 0);
  } else {
    keepFrom = 0;
    for (let i = versions.length - 1; i >= 0; i--) {
      if (versions[i].seq <= minSnapshot) {
        keepFrom = i;
        break;
      }
    }
  }
  versions.splice(0, keepFrom);
}

function isRepeatable(tx) {
  return tx.isolation !== 'read-committed';
}

/** An open transaction or savepoint (`Tx` in memory.rs). */
function newTx(parent, root, isolation) {
  return {
    parent, // id of the enclosing level, or undefined for a root
    root, // id of the root transaction
    child: undefined, // the open savepoint inside this one
    isolation, // the isolation of the root
    snapshot: undefined, // commit sequence of a repeatable root, at its first operation
    writes: new Map(), // entity → Map(id → row), rows written at this level
    bases: new Map(), // rowKey → commit seq the first write was based on (null: none)
    audit: [], // audit entries made durable by the commit
    keys: [], // idempotency responses stored by the commit
    reads: [], // [entity, filters] read by a serializable root
  };
}

// ---------------------------------------------------------------------------
// Queries (the free functions at the end of memory.rs)

function checkQuery(query) {
  for (const c of query.filters) {
    if (c.op === 'in' && !Array.isArray(c.value)) {
      throw invalid(`\`in\` on \`${c.field}\` needs an array, not ${typeName(c.value)}`);
    }
  }
  if (query.after !== undefined && query.after.length !== query.order.length) {
    throw invalid(
      `the cursor has ${query.after.length} values for ${query.order.length} sort keys`,
    );
  }
}

/**
 * The only ids a query can match, when it filters `id` with `eq` or `in`:
 * sorted and without duplicates (a `BTreeSet`), or undefined.
 */
function idCandidates(filters) {
  for (const c of filters) {
    if (c.field !== 'id') continue;
    if (c.op === 'eq' && typeof c.value === 'string') return [c.value];
    if (c.op === 'in' && Array.isArray(c.value)) {
      const ids = [...new Set(c.value.filter((x) => typeof x === 'string'))];
      return ids.sort(compareStrings);
    }
  }
  return undefined;
}

function cmp(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** `num_cmp`: integers exactly, otherwise as f64. */
function numCmp(a, b) {
  if (a.isInteger() && b.isInteger()) return cmp(a.value, b.value);
  const x = a.asF64();
  const y = b.asF64();
  // partial_cmp(...).unwrap_or(Equal): NaN cannot occur in JSON.
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * The SQL-like comparison: undefined when either is null or their types
 * differ (or are not ordered: arrays, objects).
 */
function sqlCmp(a, b) {
  if (a instanceof JsonNumber && b instanceof JsonNumber) return numCmp(a, b);
  if (typeof a === 'string' && typeof b === 'string') return compareStrings(a, b);
  if (typeof a === 'boolean' && typeof b === 'boolean') return cmp(Number(a), Number(b));
  return undefined;
}

/** Equality of filters and unique fields: `null` equals only `null`. */
function valuesEqual(a, b) {
  if (a === null && b === null) return true;
  if (a === null || b === null) return false;
  if (Array.isArray(a) || a instanceof Map) return equal(a, b);
  return sqlCmp(a, b) === 0;
}

function matches(row, c) {
  const v = column(row, c.field);
  switch (c.op) {
    case 'eq':
      return valuesEqual(v, c.value);
    case 'ne':
      return !valuesEqual(v, c.value);
    case 'lt':
      return sqlCmp(v, c.value) === -1;
    case 'lte': {
      const o = sqlCmp(v, c.value);
      return o === -1 || o === 0;
    }
    case 'gt':
      return sqlCmp(v, c.value) === 1;
    case 'gte': {
      const o = sqlCmp(v, c.value);
      return o === 1 || o === 0;
    }
    case 'in':
      return (
        v !== null &&
        Array.isArray(c.value) &&
        c.value.some((x) => x !== null && valuesEqual(v, x))
      );
    default:
      throw new TypeError(`unknown filter op ${c.op}`);
  }
}

function matchesAll(row, filters) {
  return filters.every((c) => matches(row, c));
}

function typeRank(v) {
  if (typeof v === 'boolean') return 0;
  if (v instanceof JsonNumber) return 1;
  if (typeof v === 'string') return 2;
  if (Array.isArray(v)) return 3;
  if (v instanceof Map) return 4;
  return 5; // null
}

/** The total ascending order of sort keys: nulls last. */
function sortCmp(a, b) {
  const o = sqlCmp(a, b);
  if (o !== undefined) return o;
  const r = cmp(typeRank(a), typeRank(b));
  if (r !== 0) return r;
  if ((Array.isArray(a) && Array.isArray(b)) || (a instanceof Map && b instanceof Map)) {
    return compareStrings(canonical(a), canonical(b));
  }
  return 0;
}

function keyCmp(a, b, key) {
  const o = sortCmp(a, b);
  return key.desc ? -o : o;
}

function compareRows(a, b, order) {
  for (const k of order) {
    const o = keyCmp(column(a, k.field), column(b, k.field), k);
    if (o !== 0) return o;
  }
  return 0;
}

function compareToCursor(row, after, order) {
  for (let i = 0; i < order.length && i < after.length; i++) {
    const o = keyCmp(column(row, order[i].field), after[i], order[i]);
    if (o !== 0) return o;
  }
  return 0;
}

// ---------------------------------------------------------------------------
// The audit chain

/**
 * A durable audit entry, stored compactly: the canonical JSON of the entry
 * with `seq` and `prev` (without `hash`), and its SHA-256.
 */
class AuditRecord {
  constructor(text, hash) {
    this.text = text;
    this.hash = hash;
  }

  /** The entry as JSON, `hash` included (last). */
  entry() {
    const m = parseOr(this.text, null);
    if (!(m instanceof Map)) return null;
    m.set('hash', this.hash);
    return m;
  }
}

// ---------------------------------------------------------------------------
// The clock

/** A clock that only moves when told to (`FixedClock`). */
export class FixedClock {
  constructor(ms = 0) {
    this.ms = ms;
  }

  /** Sets the time (milliseconds since the Unix epoch). */
  set(ms) {
    this.ms = ms;
  }

  nowMs() {
    return this.ms;
  }
}

// ---------------------------------------------------------------------------
// The storage

/** An in-memory storage with Postgres-like transactions (`MemoryStorage`). */
export class MemoryStorage {
  constructor() {
    /** entity → Map(id → committed versions `{seq, row}`, oldest first). */
    this.tables = new Map();
    /** entity → Set of unique fields. */
    this.unique = new Map();
    /** The durable audit chain. */
    this.audit = [];
    /** rowKey(scope, key) → `{scope, key, fingerprint, claimedMs, response}`. */
    this.keys = new Map();
    /** JSON.stringify([scope, window]) → hits. */
    this.rate = new Map();
    /** The last commit sequence number. */
    this.seq = 0;
    /** Open transactions and savepoints: id → tx. */
    this.txs = new Map();
    /** The last transaction id handed out. */
    this.nextTx = 0;
    /** Row locks: rowKey → the transaction or savepoint holding it. */
    this.locks = new Map();
    /** Store time of the last sweep of expired keys. */
    this.sweptMs = 0;
    /** The newest rate window seen. */
    this.rateWindow = 0;
  }

  // -- setup and inspection ---------------------------------------------------

  /** Declares `entity.field` unique among live rows (non-null values). */
  setUnique(entity, field) {
    if (!this.unique.has(entity)) this.unique.set(entity, new Set());
    this.unique.get(entity).add(field);
  }

  /** The unique fields of `entity`, sorted (a `BTreeSet`). */
  uniqueFields(entity) {
    return [...(this.unique.get(entity) ?? [])].sort(compareStrings);
  }

  /**
   * Inserts a committed row directly (test seeds), with the checks of
   * `MemoryStorage::seed`. `row` is a Map.
   */
  seed(entity, row) {
    const id = row.get('id');
    if (typeof id !== 'string') {
      throw invalid(`a seeded \`${entity}\` row needs a string \`id\``);
    }
    if (this.latest(entity, id) !== undefined) {
      throw conflict(`\`${entity}\` row \`${id}\` already exists`);
    }
    const fields = this.uniqueFields(entity);
    if (isLive(row) && fields.length > 0) {
      const committed = this.merged([], entity, this.seq);
      for (const field of fields) {
        const value = column(row, field);
        if (
          value !== null &&
          committed.some(([, other]) => isLive(other) && valuesEqual(column(other, field), value))
        ) {
          throw uniqueViolation(entity, field);
        }
      }
    }
    this.seq += 1;
    const seq = this.seq;
    const minSnapshot = this.minSnapshot();
    const versions = this.versionsOf(entity, id, true);
    versions.push({ seq, row });
    prune(versions, minSnapshot);
  }

  /** The committed rows of `entity` (soft-deleted included), in id order. */
  rows(entity) {
    const table = this.tables.get(entity);
    if (!table) return [];
    return sortedEntries(table).map(([, versions]) => versions[versions.length - 1].row);
  }

  /** The entities that have a table, in name order. */
  entities() {
    return [...this.tables.keys()].sort(compareStrings);
  }

  /** The durable audit chain, each entry with `seq`, `prev` and `hash`. */
  auditEntries() {
    return this.audit.map((r) => r.entry());
  }

  /** How many transactions and savepoints are open. */
  openTransactions() {
    return this.txs.size;
  }

  // -- transactions (private helpers of memory.rs) ------------------------------

  versionsOf(entity, id, create) {
    let table = this.tables.get(entity);
    if (!table) {
      if (!create) return undefined;
      table = new Map();
      this.tables.set(entity, table);
    }
    let versions = table.get(id);
    if (!versions && create) {
      versions = [];
      table.set(id, versions);
    }
    return versions;
  }

  getTx(id) {
    const t = this.txs.get(id);
    if (!t) throw invalid(`transaction ${id} is unknown or finished`);
    return t;
  }

  /** `[id, parent, …, root]`. */
  chain(id) {
    const out = [];
    let current = id;
    while (current !== undefined) {
      if (out.length > this.txs.size) throw invalid('transaction chain is cyclic');
      const t = this.getTx(current);
      out.push(current);
      current = t.parent;
    }
    return out;
  }

  /** The chain of a transaction about to write (it has no open savepoint). */
  writable(tx) {
    const t = this.getTx(tx);
    if (t.child !== undefined) {
      throw invalid(`transaction ${tx} has an open savepoint ${t.child}`);
    }
    return this.chain(tx);
  }

  /** The commit sequence `root` reads at (taking its snapshot if due). */
  readSeq(root) {
    const current = this.seq;
    const t = this.getTx(root);
    if (isRepeatable(t)) {
      if (t.snapshot === undefined) t.snapshot = current;
      return t.snapshot;
    }
    return current;
  }

  minSnapshot() {
    let min;
    for (const t of this.txs.values()) {
      if (t.snapshot !== undefined && (min === undefined || t.snapshot < min)) min = t.snapshot;
    }
    return min;
  }

  /** The latest committed version of a row. */
  latest(entity, id) {
    const versions = this.tables.get(entity)?.get(id);
    return versions ? versions[versions.length - 1] : undefined;
  }

  /** The row as written by a level of `chain` (innermost first). */
  overlayRow(chain, entity, id) {
    for (const level of chain) {
      const row = this.txs.get(level)?.writes.get(entity)?.get(id);
      if (row !== undefined) return row;
    }
    return undefined;
  }

  /** The row as `chain` sees it at commit sequence `seq`. */
  visible(chain, entity, id, seq) {
    const own = this.overlayRow(chain, entity, id);
    if (own !== undefined) return own;
    const versions = this.tables.get(entity)?.get(id);
    return versions ? versionAt(versions, seq)?.row : undefined;
  }

  /**
   * Every row of `entity` (soft-deleted included) as `chain` sees it at
   * `seq`: `[id, row]` pairs in id order.
   */
  merged(chain, entity, seq) {
    const out = new Map();
    const table = this.tables.get(entity);
    if (table) {
      for (const [id, versions] of table) {
        const v = versionAt(versions, seq);
        if (v) out.set(id, v.row);
      }
    }
    for (let i = chain.length - 1; i >= 0; i--) {
      const writes = this.txs.get(chain[i])?.writes.get(entity);
      if (writes) for (const [id, row] of writes) out.set(id, row);
    }
    return sortedEntries(out);
  }

  /** Fails if the row is locked by a transaction other than `root`'s. */
  checkLock(root, entity, id) {
    const owner = this.locks.get(rowKey(entity, id));
    if (owner !== undefined) {
      const t = this.txs.get(owner);
      if (t && t.root !== root) {
        throw conflict(`\`${entity}\` row \`${id}\` is locked by another transaction`);
      }
    }
  }

  takeLock(chain, entity, id) {
    if (chain.length === 0) return;
    const level = chain[0];
    const key = rowKey(entity, id);
    const owner = this.locks.get(key);
    if (owner !== undefined && chain.includes(owner)) return;
    this.locks.set(key, level);
  }

  /**
   * Checks the unique `fields` of `row` (about to be written by `chain`)
   * against the latest committed rows and the chain's writes (`unique`) and
   * against rows other open transactions are writing (`conflict`).
   */
  checkUnique(chain, root, entity, id, row, fields) {
    if (!isLive(row) || fields.length === 0) return;
    const merged = this.merged(chain, entity, this.seq);
    for (const field of fields) {
      const value = column(row, field);
      if (value === null) continue;
      const taken = (other, r) =>
        other !== id && isLive(r) && valuesEqual(column(r, field), value);
      if (merged.some(([other, r]) => taken(other, r))) {
        throw uniqueViolation(entity, field);
      }
      let pending = false;
      for (const t of this.txs.values()) {
        if (t.root === root) continue;
        const w = t.writes.get(entity);
        if (w && [...w].some(([other, r]) => taken(other, r))) pending = true;
      }
      if (pending) {
        throw conflict(
          `another transaction is writing a \`${entity}\` row with the same \`${field}\``,
        );
      }
    }
  }

  /** Records a write at the innermost level of `chain` and locks the row. */
  write(chain, entity, id, row, base) {
    const key = rowKey(entity, id);
    const hasBase = chain.some((level) => this.txs.get(level)?.bases.has(key));
    if (chain.length === 0) throw invalid('no transaction');
    const t = this.getTx(chain[0]);
    if (!hasBase) t.bases.set(key, base);
    if (!t.writes.has(entity)) t.writes.set(entity, new Map());
    t.writes.get(entity).set(id, row);
    this.takeLock(chain, entity, id);
  }

  /** `update` and `softDelete`. `changes` is a Map. */
  modify(tx, entity, id, expectedVersion, changes) {
    const chain = this.writable(tx);
    const root = this.getTx(tx).root;
    const seq = this.readSeq(root);
    const repeatable = isRepeatable(this.getTx(root));
    const inOverlay = this.overlayRow(chain, entity, id) !== undefined;
    const current = this.visible(chain, entity, id, seq);
    if (current === undefined) throw notFound(entity, id);
    if (!isLive(current)) throw notFound(entity, id);
    this.checkLock(root, entity, id);
    const latestSeq = this.latest(entity, id)?.seq ?? null;
    if (repeatable && !inOverlay && latestSeq !== null && latestSeq > seq) {
      throw conflict(
        `could not serialize access: \`${entity}\` row \`${id}\` was changed by a concurrent transaction`,
      );
    }
    const v = current.get('version');
    const version = v instanceof JsonNumber ? v.asI64() : undefined;
    if (version === undefined) {
      throw invalid(`\`${entity}\` row \`${id}\` has no integer \`version\``);
    }
    if (version !== BigInt(expectedVersion)) {
      throw conflict(`\`${entity}\` row \`${id}\` is at version ${version}, not ${expectedVersion}`);
    }
    if (version === 9223372036854775807n) {
      throw invalid(`\`${entity}\` row \`${id}\`: version overflow`);
    }
    const next = version + 1n;
    const row = new Map(current); // a copy: stored rows are never mutated
    const changed = [];
    for (const [k, value] of changes) {
      if (k === 'id') {
        if (value !== id) {
          throw invalid(`the \`id\` of \`${entity}\` row \`${id}\` cannot change`);
        }
      } else if (k !== 'version') {
        if (!row.has(k) || !equal(row.get(k), value)) changed.push(k);
        row.set(k, value);
      }
    }
    row.set('version', JsonNumber.int(next));
    const fields = this.uniqueFields(entity).filter((f) => changed.includes(f));
    this.checkUnique(chain, root, entity, id, row, fields);
    this.write(chain, entity, id, row, latestSeq);
    return row;
  }

  /** Ends `id` and its open savepoints, releasing their locks. */
  discard(id) {
    const ended = [];
    let current = id;
    while (current !== undefined) {
      if (ended.includes(current)) break;
      const t = this.txs.get(current);
      this.txs.delete(current);
      ended.push(current);
      current = t?.child;
    }
    for (const [key, owner] of [...this.locks]) {
      if (ended.includes(owner)) this.locks.delete(key);
    }
  }

  /** Releases savepoint `id` into `parent`. */
  release(id, parent) {
    this.getTx(parent);
    const child = this.txs.get(id);
    if (!child) throw invalid(`transaction ${id} is unknown or finished`);
    this.txs.delete(id);
    const p = this.getTx(parent);
    p.child = undefined;
    for (const [entity, rows] of child.writes) {
      if (!p.writes.has(entity)) p.writes.set(entity, new Map());
      const target = p.writes.get(entity);
      for (const [rid, row] of rows) target.set(rid, row);
    }
    for (const [key, base] of child.bases) {
      if (!p.bases.has(key)) p.bases.set(key, base);
    }
    p.audit.push(...child.audit);
    p.keys.push(...child.keys);
    for (const [key, owner] of this.locks) {
      if (owner === id) this.locks.set(key, parent);
    }
  }

  /** The checks of a root commit: first committer wins, serializable reads, unique fields. */
  validate(t) {
    for (const [entity, rows] of sortedEntries(t.writes)) {
      for (const [id] of sortedEntries(rows)) {
        const base = t.bases.get(rowKey(entity, id)) ?? null;
        const now = this.latest(entity, id)?.seq ?? null;
        if (now !== base) {
          throw conflict(`\`${entity}\` row \`${id}\` was changed by a concurrent transaction`);
        }
      }
    }
    if (t.isolation === 'serializable' && t.writes.size > 0 && t.snapshot !== undefined) {
      this.validateReads(t, t.snapshot);
    }
    for (const [entity, rows] of sortedEntries(t.writes)) {
      if (!this.unique.has(entity)) continue;
      const fields = this.uniqueFields(entity);
      const merged = new Map(this.merged([], entity, this.seq));
      for (const [id, row] of rows) merged.set(id, row);
      for (const [id, row] of sortedEntries(rows)) {
        if (!isLive(row)) continue;
        // A value the row already had when committed was checked then.
        const latest = this.latest(entity, id);
        const before = latest && isLive(latest.row) ? latest.row : undefined;
        for (const field of fields) {
          const value = column(row, field);
          if (value === null || (before && valuesEqual(column(before, field), value))) continue;
          for (const [other, r] of merged) {
            if (other !== id && isLive(r) && valuesEqual(column(r, field), value)) {
              throw uniqueViolation(entity, field);
            }
          }
        }
      }
    }
  }

  validateReads(t, snapshot) {
    if (this.seq === snapshot) return;
    for (const [entity, filters] of t.reads) {
      const table = this.tables.get(entity);
      if (!table) continue;
      const own = t.writes.get(entity);
      for (const [id, versions] of sortedEntries(table)) {
        const latest = versions[versions.length - 1];
        if (!latest) continue;
        if (latest.seq <= snapshot || (own && own.has(id))) continue;
        const old = versionAt(versions, snapshot);
        const before = old !== undefined && isLive(old.row) && matchesAll(old.row, filters);
        const after = isLive(latest.row) && matchesAll(latest.row, filters);
        if (before || after) {
          throw conflict(
            `could not serialize access: \`${entity}\` rows read by this transaction ` +
              'were changed by a concurrent transaction',
          );
        }
      }
    }
  }

  /** Chains `entries` (Maps) after the durable audit. */
  chained(entries) {
    let prev = this.audit.length > 0 ? this.audit[this.audit.length - 1].hash : GENESIS_HASH;
    let seq = this.audit.length;
    const out = [];
    for (const entry of entries) {
      seq += 1;
      if (!(entry instanceof Map)) throw invalid('an audit entry must be a JSON object');
      const map = new Map(entry);
      map.delete('hash');
      map.set('seq', JsonNumber.int(seq));
      map.set('prev', prev);
      const text = canonical(map);
      const hash = sha256Hex(text);
      prev = hash;
      out.push(new AuditRecord(text, hash));
    }
    return out;
  }

  commitRoot(id) {
    const t = this.txs.get(id);
    if (!t) throw invalid(`transaction ${id} is unknown or finished`);
    this.txs.delete(id);
    const entries = t.audit;
    t.audit = [];
    let audit;
    try {
      this.validate(t);
      audit = this.chained(entries);
    } catch (e) {
      this.discard(id);
      throw e;
    }
    if (t.writes.size > 0) {
      this.seq += 1;
      const seq = this.seq;
      const minSnapshot = this.minSnapshot();
      for (const [entity, rows] of sortedEntries(t.writes)) {
        for (const [rid, row] of sortedEntries(rows)) {
          const versions = this.versionsOf(entity, rid, true);
          versions.push({ seq, row });
          prune(versions, minSnapshot);
        }
      }
    }
    this.audit.push(...audit);
    for (const k of t.keys) {
      const record = this.keys.get(rowKey(k.scope, k.key));
      if (record && record.response === null) {
        record.response = { status: k.status, body: k.body };
      }
    }
    this.discard(id);
  }

  // -- the `Storage` trait ------------------------------------------------------

  /** Starts a transaction, or a savepoint of `parent`. Returns its id. */
  begin(isolation, parent) {
    let link;
    if (parent !== undefined) {
      const t = this.getTx(parent);
      if (t.child !== undefined) {
        throw invalid(`transaction ${parent} already has an open savepoint ${t.child}`);
      }
      link = { parent, root: t.root };
    }
    this.nextTx += 1;
    const id = this.nextTx;
    if (link === undefined) {
      this.txs.set(id, newTx(undefined, id, isolation));
    } else {
      const rootIsolation = this.getTx(link.root).isolation;
      this.getTx(link.parent).child = id;
      this.txs.set(id, newTx(link.parent, link.root, rootIsolation));
    }
    return id;
  }

  /**
   * Rows of `entity` matching `query` (`{filters: [{field, op, value}],
   * order: [{field, desc}], limit?: number, after?: [value], lock: bool}`,
   * values as JSON values), outside (`tx` undefined) or inside a transaction.
   */
  read(tx, entity, query) {
    checkQuery(query);
    let chain = [];
    let root;
    let seq = this.seq;
    if (tx !== undefined) {
      chain = this.chain(tx);
      root = this.getTx(tx).root;
      seq = this.readSeq(root);
    }
    let candidates;
    const ids = idCandidates(query.filters);
    if (ids !== undefined) {
      // A lookup by id: no scan.
      candidates = [];
      for (const id of ids) {
        const row = this.visible(chain, entity, id, seq);
        if (row !== undefined) candidates.push([id, row]);
      }
    } else {
      candidates = this.merged(chain, entity, seq);
    }
    let rows = candidates.filter(([, row]) => isLive(row) && matchesAll(row, query.filters));
    rows.sort((a, b) => compareRows(a[1], b[1], query.order)); // stable, like sort_by
    if (query.after !== undefined) {
      rows = rows.filter(([, row]) => compareToCursor(row, query.after, query.order) === 1);
    }
    if (query.limit !== undefined) rows = rows.slice(0, query.limit);
    if (query.lock) {
      const repeatable = root !== undefined ? isRepeatable(this.getTx(root)) : false;
      for (const [id] of rows) {
        this.checkLock(root, entity, id);
        if (
          repeatable &&
          this.overlayRow(chain, entity, id) === undefined &&
          (this.latest(entity, id)?.seq ?? -1) > seq
        ) {
          throw conflict(
            `could not serialize access: \`${entity}\` row \`${id}\` was changed by a concurrent transaction`,
          );
        }
      }
      for (const [id] of rows) this.takeLock(chain, entity, id);
    }
    if (root !== undefined) {
      const t = this.getTx(root);
      if (t.isolation === 'serializable') t.reads.push([entity, query.filters]);
    }
    return rows.map(([, row]) => row);
  }

  /** Inserts a complete row (a Map) in `tx`. */
  insert(tx, entity, row) {
    const chain = this.writable(tx);
    const root = this.getTx(tx).root;
    this.readSeq(root);
    const id = row.get('id');
    if (typeof id !== 'string') throw invalid(`a \`${entity}\` row needs a string \`id\``);
    this.checkLock(root, entity, id);
    if (this.latest(entity, id) !== undefined || this.overlayRow(chain, entity, id) !== undefined) {
      throw conflict(`\`${entity}\` row \`${id}\` already exists`);
    }
    this.checkUnique(chain, root, entity, id, row, this.uniqueFields(entity));
    this.write(chain, entity, id, row, null);
    return row;
  }

  update(tx, entity, id, expectedVersion, changes) {
    return this.modify(tx, entity, id, expectedVersion, changes);
  }

  softDelete(tx, entity, id, expectedVersion, deletedAt) {
    return this.modify(tx, entity, id, expectedVersion, new Map([['deleted_at', deletedAt]]));
  }

  commit(tx) {
    const t = this.getTx(tx);
    if (t.child !== undefined) {
      throw invalid(`transaction ${tx} has an open savepoint ${t.child}`);
    }
    if (t.parent !== undefined) this.release(tx, t.parent);
    else this.commitRoot(tx);
  }

  rollback(tx) {
    const parent = this.getTx(tx).parent;
    this.discard(tx);
    if (parent !== undefined) {
      const p = this.txs.get(parent);
      if (p) p.child = undefined;
    }
  }

  /** Appends an audit entry, in `tx` (durable at commit) or on its own. */
  appendAudit(tx, entry) {
    if (!(entry instanceof Map)) throw invalid('an audit entry must be a JSON object');
    if (tx === undefined) {
      this.audit.push(...this.chained([entry]));
    } else {
      this.writable(tx);
      this.getTx(tx).audit.push(entry);
    }
  }

  /** Returns `{kind: 'new'|'replay'|'mismatch'|'in-flight', status?, body?}`. */
  claimKey(scope, key, fingerprint, nowMs) {
    if (nowMs - this.sweptMs >= 60_000 || nowMs < this.sweptMs) {
      for (const [k, r] of [...this.keys]) {
        if (!(nowMs - r.claimedMs < IDEMPOTENCY_TTL_MS)) this.keys.delete(k);
      }
      this.sweptMs = nowMs;
    }
    const k = rowKey(scope, key);
    const record = this.keys.get(k);
    if (!record || !(nowMs - record.claimedMs < IDEMPOTENCY_TTL_MS)) {
      this.keys.set(k, { scope, key, fingerprint, claimedMs: nowMs, response: null });
      return { kind: 'new' };
    }
    if (record.fingerprint !== fingerprint) return { kind: 'mismatch' };
    if (record.response === null) return { kind: 'in-flight' };
    return { kind: 'replay', status: record.response.status, body: record.response.body };
  }

  completeKey(tx, scope, key, status, body) {
    const k = rowKey(scope, key);
    const record = this.keys.get(k);
    if (!record) throw invalid(`idempotency key \`${key}\` of \`${scope}\` was not claimed`);
    if (record.response !== null) {
      throw invalid(`idempotency key \`${key}\` of \`${scope}\` is already completed`);
    }
    if (tx === undefined) {
      record.response = { status, body };
    } else {
      this.writable(tx);
      this.getTx(tx).keys.push({ scope, key, status, body });
    }
  }

  releaseKey(scope, key) {
    const k = rowKey(scope, key);
    const record = this.keys.get(k);
    if (record && record.response === null) this.keys.delete(k);
  }

  rateHit(scope, windowMs) {
    if (windowMs > this.rateWindow) {
      for (const k of [...this.rate.keys()]) {
        if (JSON.parse(k)[1] < windowMs) this.rate.delete(k);
      }
      this.rateWindow = windowMs;
    }
    const k = JSON.stringify([scope, windowMs]);
    const count = (this.rate.get(k) ?? 0) + 1;
    this.rate.set(k, count);
    return count;
  }
}

// ---------------------------------------------------------------------------
// Scripted externals

/**
 * An external that plays a script (`ScriptedExternal`): answers per
 * `"service.operation"` consumed in order; when exhausted or absent, success
 * with `{"id": "<service>_<operation>_<n>", "status": "succeeded"}`, `n`
 * counting every call of the operation from 1.
 */
export class ScriptedExternal {
  /**
   * @param {Map} script  scenario form (`{"service.operation": [{"ok": v} |
   *   {"declined": v} | {"failed": "msg"}]}`) or state form (`{"script": …,
   *   "counters": {…}}`), as a JSON value of json.mjs.
   */
  constructor(script = new Map()) {
    /** "service.operation" → answers still to give. */
    this.script = new Map();
    /** "service.operation" → calls so far. */
    this.counters = new Map();
    /** Every request, in order. */
    this.calls = [];
    if (!(script instanceof Map)) {
      throw new Error('externals must be an object of "service.operation" → array of answers');
    }
    if (script.has('script') || script.has('counters')) {
      for (const [key, v] of script) {
        if (key === 'script') this.load(v, 'script.');
        else if (key === 'counters') {
          for (const [op, n] of v) {
            checkOperation(op, 'counters.');
            const count = n instanceof JsonNumber ? n.asU64() : undefined;
            if (count === undefined) throw new Error(`\`counters.${op}\` must be a non-negative integer`);
            this.counters.set(op, count);
          }
        } else {
          throw new Error(`unknown key \`${key}\` in the externals state (expected \`script\`, \`counters\`)`);
        }
      }
    } else {
      this.load(script, '');
    }
  }

  load(script, prefix) {
    if (!(script instanceof Map)) throw new Error(`\`${prefix}\` must be an object`);
    for (const [op, answers] of script) {
      checkOperation(op, prefix);
      if (!Array.isArray(answers)) throw new Error(`\`${prefix}${op}\` must be an array of answers`);
      const queue = answers.map((a, i) => {
        const at = `${prefix}${op}[${i}]`;
        if (!(a instanceof Map) || a.size !== 1) {
          throw new Error(`\`${at}\` must be an object with exactly one key: \`ok\`, \`declined\` or \`failed\``);
        }
        const [[kind, value]] = a;
        if (kind === 'failed' && typeof value !== 'string') {
          throw new Error(`\`${at}.failed\` must be a message (a string)`);
        }
        if (!['ok', 'declined', 'failed'].includes(kind)) {
          throw new Error(`\`${at}\`: unknown answer \`${kind}\``);
        }
        return { kind, value };
      });
      if (queue.length > 0) this.script.set(op, queue);
    }
  }

  /**
   * Makes a call. `request` is `{service, operation, args (JSON value),
   * maxAttempts, …}`. Returns `{outcome: {kind, value}, attempts: [{status,
   * error, durationMs}]}` with `status`/`error` null when absent.
   */
  call(request) {
    this.calls.push(request);
    const key = `${request.service}.${request.operation}`;
    const n = (this.counters.get(key) ?? 0n) + 1n;
    this.counters.set(key, n);
    let answer;
    const queue = this.script.get(key);
    if (queue) {
      answer = queue.shift();
      if (queue.length === 0) this.script.delete(key);
    }
    const answered = (status) => ({ status, error: null, durationMs: 0 });
    if (answer?.kind === 'ok') {
      return { outcome: { kind: 'ok', value: answer.value }, attempts: [answered(200)] };
    }
    if (answer?.kind === 'declined') {
      return { outcome: { kind: 'declined', value: answer.value }, attempts: [answered(402)] };
    }
    if (answer?.kind === 'failed') {
      const count = Math.max(request.maxAttempts, 1);
      const attempts = Array.from({ length: count }, () => ({
        status: null,
        error: answer.value,
        durationMs: 0,
      }));
      return { outcome: { kind: 'failed', value: answer.value }, attempts };
    }
    const value = new Map([
      ['id', `${request.service}_${request.operation}_${n}`],
      ['status', 'succeeded'],
    ]);
    return { outcome: { kind: 'ok', value }, attempts: [answered(200)] };
  }
}

function checkOperation(op, prefix) {
  const dot = op.indexOf('.');
  if (dot <= 0 || dot === op.length - 1) {
    throw new Error(`\`${prefix}${op}\`: expected a "service.operation" key`);
  }
}

// ---------------------------------------------------------------------------
// The WIT imports, as jco's `instantiate()` wants them

/** Parses JSON text from the guest (`json()` in host/src/runtime/storage.rs). */
function guestJson(text) {
  try {
    return parse(text);
  } catch (e) {
    throw invalid(`the guest sent invalid JSON: ${e.message}`);
  }
}

/** Parses a row or changes from the guest: a JSON object. */
function guestObject(text) {
  const v = guestJson(text);
  if (!(v instanceof Map)) throw invalid('the guest sent a row that is not a JSON object');
  return v;
}

/** A WIT `query` (JSON values as text, `limit` a bigint) as a storage query. */
function guestQuery(q) {
  return {
    filters: q.filters.map((c) => ({ field: c.field, op: c.op, value: guestJson(c.value) })),
    order: q.order.map((k) => ({ field: k.field, desc: k.desc })),
    // usize::try_from(limit).unwrap_or(MAX): slice() saturates the same way.
    limit: q.limit === undefined || q.limit === null ? undefined : Number(q.limit),
    after: q.after === undefined || q.after === null ? undefined : q.after.map(guestJson),
    lock: q.lock,
  };
}

// jco calls this method on a host resource when the guest drops its handle.
const symbolDispose = Symbol.dispose || Symbol.for('dispose');

/**
 * The import object for a jco-transpiled `core` world, over a storage, a
 * clock and an external. Like wasmtime's host (host/src/runtime/*.rs):
 * rows cross as JSON text, a `transaction` dropped without `commit` or
 * `rollback` is rolled back, storage errors are the `err` case of each
 * function's `result`.
 *
 * jco's `instantiate()` looks imports up by their versionless names
 * (`sinew:executor/storage`), although its `.d.ts` lists them with the
 * version (`sinew:executor/storage@0.1.0`); both keys are provided.
 */
export function makeImports({ storage, clock, external }) {
  /** Ids of transactions the guest holds and has not finished (`HostState::open`). */
  let open = [];
  const forget = (id) => {
    open = open.filter((x) => x !== id);
  };

  /** The `transaction` resource: a handle on a storage transaction id. */
  class Transaction {
    #id;

    constructor(id) {
      this.#id = id;
    }

    read(entity, q) {
      return storage.read(this.#id, entity, guestQuery(q)).map(stringify);
    }

    insert(entity, row) {
      return stringify(storage.insert(this.#id, entity, guestObject(row)));
    }

    update(entity, id, expectedVersion, changes) {
      return stringify(storage.update(this.#id, entity, id, expectedVersion, guestObject(changes)));
    }

    softDelete(entity, id, expectedVersion, deletedAt) {
      return stringify(storage.softDelete(this.#id, entity, id, expectedVersion, deletedAt));
    }

    appendAudit(entry) {
      storage.appendAudit(this.#id, guestJson(entry));
    }

    completeKey(scope, key, status, body) {
      storage.completeKey(this.#id, scope, key, status, guestJson(body));
    }

    savepoint(level) {
      return opened(storage.begin(level, this.#id));
    }

    commit() {
      forget(this.#id);
      storage.commit(this.#id);
    }

    rollback() {
      forget(this.#id);
      storage.rollback(this.#id);
    }

    /** Dropped by the guest: roll back if it is still open. */
    [symbolDispose]() {
      if (open.includes(this.#id)) {
        forget(this.#id);
        try {
          storage.rollback(this.#id);
        } catch {
          // Ignored, as in wasmtime's host (a savepoint whose transaction ended).
        }
      }
    }
  }

  const opened = (id) => {
    open.push(id);
    return new Transaction(id);
  };

  const storageImport = {
    Transaction,
    begin(level) {
      return opened(storage.begin(level, undefined));
    },
    read(entity, q) {
      return storage.read(undefined, entity, guestQuery(q)).map(stringify);
    },
    appendAudit(entry) {
      storage.appendAudit(undefined, guestJson(entry));
    },
    claimKey(scope, key, fingerprint, nowMs) {
      const c = storage.claimKey(scope, key, fingerprint, Number(nowMs));
      if (c.kind === 'replay') {
        return { tag: 'replay', val: { status: c.status, body: stringify(c.body) } };
      }
      return { tag: c.kind };
    },
    completeKey(scope, key, status, body) {
      storage.completeKey(undefined, scope, key, status, guestJson(body));
    },
    releaseKey(scope, key) {
      storage.releaseKey(scope, key);
    },
    rateHit(scope, windowMs) {
      return BigInt(storage.rateHit(scope, Number(windowMs)));
    },
  };

  const clockImport = {
    nowMs() {
      return BigInt(clock.nowMs());
    },
  };

  const externalImport = {
    call(r) {
      const result = external.call({
        service: r.service,
        operation: r.operation,
        args: parseOr(r.args, null),
        timeoutMs: r.timeoutMs,
        maxAttempts: r.maxAttempts,
        backoff: r.backoff,
        initialBackoffMs: r.initialBackoffMs,
        idempotencyKey: r.idempotencyKey,
      });
      const { kind, value } = result.outcome;
      return {
        outcome: { tag: kind, val: kind === 'failed' ? value : stringify(value) },
        attempts: result.attempts.map((a) => ({
          status: a.status ?? undefined,
          error: a.error ?? undefined,
          durationMs: BigInt(a.durationMs),
        })),
      };
    },
  };

  const imports = {
    'sinew:executor/storage': storageImport,
    'sinew:executor/clock': clockImport,
    'sinew:executor/external': externalImport,
    'sinew:executor/types': {},
  };
  for (const name of Object.keys(imports)) imports[`${name}@0.1.0`] = imports[name];
  return imports;
}
