// Load for the presence crowd benchmark (bench/presence_bench.py --crowd), pinned to the load
// core:
//
//   node bench/load/presence_crowd.mjs '<json config>'
//
// N clients speaking the Phoenix V2 JSON protocol over plain TCP sockets (the WebSocket
// handshake and frames done here: client frames masked with a zero key, server frames cut out
// by a scanner). They connect (`concurrency` handshakes in flight); on "go" all N send
// phx_join for one topic at once (join_ref "1" like a phoenix.js socket's first channel,
// params {"user": "u<i>"}); the server tracks each one's presence. A client has converged when
// its presence, applied as phoenix.js's Presence does it (diffs before the first
// presence_state wait for it; presence_state replaces, presence_diff joins then leaves),
// holds all N users.
//
// Cheap enough to take the n² bytes of a crowd on one core: sockets read into one reused
// buffer (`onread`), and `presence_state` / `presence_diff` payloads are parsed once per
// distinct content: a broadcast diff reaches every client byte for byte, and so does a shared
// state. While a payload arrives it is compared with the cached payloads of its event and
// length (Buffer.compare on ranges, no copy); only an unknown payload is copied and parsed.
// A client holds the users of its presence_state (shared) and what the diffs since changed.
// `verify` clients (spread over the join order) also keep a full state with phoenix.js's own
// Presence.syncState/syncDiff, checked at the end (N keys, one meta each, the same refs).
//
// Stdio as gen.mjs: one JSON line per phase; after a line with `wait: true` it waits for a
// line on stdin (the orchestrator reads /proc). Bounded: N (the orchestrator checks it against
// the fd limit), a global deadline (maxSeconds), a convergence deadline (convergeSeconds: the
// result then says how many converged).
//
// Config: url (ws://host:port), n, topic, concurrency, verify, maxSeconds, convergeSeconds.

import net from 'node:net';
import readline from 'node:readline';
import { Presence } from 'phoenix';

const cfg = JSON.parse(process.argv[2]);
const N = cfg.n;
const TOPIC = cfg.topic ?? 'crowd:one';
const URL_ = new URL(cfg.url);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => Number(process.hrtime.bigint()) / 1e9;

setTimeout(() => {
  out({ phase: 'error', error: `global deadline of ${cfg.maxSeconds}s reached` });
  process.exit(3);
}, (cfg.maxSeconds ?? 600) * 1000).unref();

const rl = readline.createInterface({ input: process.stdin });
const stdinLines = rl[Symbol.asyncIterator]();
async function phase(obj) {
  out({ ...obj, wait: true });
  const { done } = await stdinLines.next();
  if (done) process.exit(0);
}

/** A client text frame with the mask bit set and a zero masking key (payload unchanged). */
function clientFrame(text) {
  const payload = Buffer.from(text, 'utf8');
  const n = payload.length;
  let hdr;
  if (n < 126) hdr = Buffer.from([0x81, 0x80 | n, 0, 0, 0, 0]);
  else if (n < 65536) {
    hdr = Buffer.alloc(8);
    hdr[0] = 0x81;
    hdr[1] = 0x80 | 126;
    hdr.writeUInt16BE(n, 2);
  } else throw new Error('frame too long');
  return Buffer.concat([hdr, payload]);
}

// -- payloads, parsed once per distinct content ----------------------------------------------

const HEAD = 160; // bytes of a frame kept to read its envelope
const PREFIX = 64; // payload bytes in a cache key (besides the event and the length)
const ENVELOPE = /^\[(null|"[^"]*"),(null|"[^"]*"),"([^"]*)","([^"]*)",/;
// `${event} ${payload length} ${first PREFIX payload bytes}` -> [{event, buf, joins, leaves,
// bits, count, value}]; the oldest evicted beyond CACHE_BYTES (e.g. states that will not come
// again: without batching there is one per joiner).
const cache = new Map();
const CACHE_BYTES = 256 * 1024 * 1024;
let cacheBytes = 0;
let parsed = 0;
let parsedBytes = 0;

function userIndex(key) {
  return key.charCodeAt(0) === 117 /* u */ ? Number(key.slice(1)) : -1;
}

function cacheKey(event, buf, start, length) {
  return `${event} ${length} ${buf.toString('latin1', start, start + Math.min(length, PREFIX))}`;
}

function learn(event, buf) {
  const value = JSON.parse(buf.toString('utf8'));
  parsed++;
  parsedBytes += buf.length;
  const pick = (obj) => Int32Array.from(Object.keys(obj), userIndex);
  const entry = event === 'presence_state'
    ? { event, buf, joins: pick(value), leaves: new Int32Array(0), value }
    : { event, buf, joins: pick(value.joins), leaves: pick(value.leaves), value };
  if (event === 'presence_state') {
    entry.bits = new Uint8Array(N);
    entry.count = 0;
    for (const u of entry.joins) {
      if (u >= 0 && u < N && !entry.bits[u]) { entry.bits[u] = 1; entry.count++; }
    }
  }
  const key = cacheKey(event, buf, 0, buf.length);
  const bucket = cache.get(key);
  if (bucket) bucket.push(entry); else cache.set(key, [entry]);
  cacheBytes += buf.length;
  for (const [k, entries] of cache) {
    if (cacheBytes <= CACHE_BYTES || k === key) break;
    for (const e of entries) cacheBytes -= e.buf.length;
    cache.delete(k);
  }
  return entry;
}

// -- clients ------------------------------------------------------------------------------

const stats = {
  frames: 0, bytes: 0, byEvent: {}, joinOk: 0, joinError: 0, badFrames: 0, closed: 0,
};
let t0 = 0;
let converged = 0;
let onConverged = null;
const READ_BUFFER = Buffer.allocUnsafe(1 << 18); // shared: every read is handled at once
const HANDSHAKE = (host) => Buffer.from(
  `GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\n` +
  'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
  'Sec-WebSocket-Version: 13\r\n\r\n');

/** One frame being received: its header fields, its first HEAD bytes, then either the cached
 * payloads it still equals (`cands`, compared as bytes arrive) or a copy being filled. */
class Incoming {
  constructor(op, len) {
    this.op = op;
    this.len = len;
    this.got = 0;
    this.head = Buffer.allocUnsafe(Math.min(len, HEAD));
    this.event = null;   // set once the head is complete
    this.skip = 0;       // envelope bytes before the payload
    this.plen = 0;       // payload bytes (the closing ']' excluded)
    this.key = '';
    this.cands = null;
    this.copy = null;
  }
}

class Client {
  constructor(i) {
    this.i = i;
    this.sock = null;
    this.open = false;
    this.hs = Buffer.alloc(0);
    // frame header bytes split across reads
    this.hdr = Buffer.allocUnsafe(14);
    this.hdrLen = 0;
    this.frame = null;
    // The users this client's Presence holds: those of its presence_state (`base`, shared by
    // every client that got the same one), changed by the diffs since (`over`: user -> 0|1).
    this.base = null;
    this.over = new Map();
    this.count = 0;
    this.synced = false;   // got its presence_state
    this.pending = [];     // diffs before it (phoenix.js: pendingDiffs)
    this.joinedAt = 0;
    this.convergedAt = 0;
    this.full = null;      // verify clients: phoenix.js's Presence state
  }

  connect(timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('handshake timeout')), timeoutMs);
      this.ready = () => { clearTimeout(timer); resolve(); };
      this.fail = (err) => { clearTimeout(timer); reject(err); };
      const sock = net.connect({
        host: URL_.hostname, port: Number(URL_.port),
        onread: { buffer: READ_BUFFER, callback: (n, buf) => { this.bytes(buf, n); } },
      });
      this.sock = sock;
      sock.setNoDelay(true);
      sock.once('connect', () => sock.write(HANDSHAKE(URL_.host)));
      sock.on('error', (err) => { if (!this.open) this.fail(err); });
      sock.on('close', () => { stats.closed++; });
    });
  }

  bytes(b, n) {
    let i = 0;
    if (!this.open) {
      this.hs = Buffer.concat([this.hs, b.subarray(0, n)]);
      const end = this.hs.indexOf('\r\n\r\n');
      if (end < 0) return;
      if (!this.hs.subarray(0, 12).toString('latin1').startsWith('HTTP/1.1 101')) {
        this.fail(new Error(`handshake refused: ${this.hs.subarray(0, 40).toString('latin1')}`));
        return;
      }
      const rest = this.hs.subarray(end + 4);
      this.hs = null;
      this.open = true;
      this.ready();
      if (rest.length) this.scan(rest, 0, rest.length);
      return;
    }
    this.scan(b, i, n);
  }

  /** Frames in b[i, n), which is only valid during this call. */
  scan(b, i, n) {
    while (i < n) {
      let f = this.frame;
      if (f === null) {
        // A frame header: 2 bytes, then the extended length (and a mask, never from servers).
        const hdr = this.hdr;
        while (this.hdrLen < 2 && i < n) hdr[this.hdrLen++] = b[i++];
        if (this.hdrLen < 2) return;
        const l7 = hdr[1] & 0x7f;
        const need = 2 + (l7 === 126 ? 2 : l7 === 127 ? 8 : 0) + (hdr[1] & 0x80 ? 4 : 0);
        while (this.hdrLen < need && i < n) hdr[this.hdrLen++] = b[i++];
        if (this.hdrLen < need) return;
        const len = l7 === 126 ? hdr.readUInt16BE(2)
          : l7 === 127 ? Number(hdr.readBigUInt64BE(2)) : l7;
        this.hdrLen = 0;
        f = this.frame = new Incoming(hdr[0] & 0x0f, len);
      }
      const take = Math.min(f.len - f.got, n - i);
      this.piece(f, b, i, take);
      i += take;
      if (f.got === f.len) {
        this.frame = null;
        this.end(f);
      }
    }
  }

  /** b[i, i + k) are the frame's bytes from f.got on. */
  piece(f, b, i, k) {
    let o = f.got;
    const stop = i + k;
    if (o < f.head.length) {
      const h = Math.min(f.head.length - o, k);
      b.copy(f.head, o, i, i + h);
      o += h;
      i += h;
      if (o === f.head.length) this.envelope(f);
    }
    if (i < stop && f.event !== null) {
      // payload bytes from (o - f.skip), the closing ']' left out
      const p = o - f.skip;
      const end = Math.min(stop, i + Math.max(0, f.plen - p));
      if (end > i) {
        if (f.copy !== null) b.copy(f.copy, p, i, end);
        else this.compare(f, b, i, end, p);
      }
    }
    f.got += k;
  }

  envelope(f) {
    const head = f.head.toString('latin1');
    const m = ENVELOPE.exec(head);
    if (m === null || f.op !== 1) { f.event = 'bad'; return; }
    f.event = m[4];
    if (f.event !== 'presence_state' && f.event !== 'presence_diff') return;
    f.skip = m[0].length;
    f.plen = f.len - f.skip - 1;
    const inHead = Math.min(f.head.length, f.skip + f.plen) - f.skip;
    if (inHead < Math.min(f.plen, PREFIX)) { f.event = 'bad'; return; } // a very long topic
    f.key = cacheKey(f.event, f.head, f.skip, f.plen);
    f.cands = cache.get(f.key) ?? [];
    if (f.cands.length === 0) {
      f.copy = Buffer.allocUnsafe(f.plen);
      f.head.copy(f.copy, 0, f.skip, f.skip + inHead);
    } else {
      this.compare(f, f.head, f.skip, f.skip + inHead, 0);
    }
  }

  /** Keep the candidates equal to b[i, end) at payload offset p; if none is left, copy. */
  compare(f, b, i, end, p) {
    const kept = f.cands.filter((c) => b.compare(c.buf, p, p + end - i, i, end) === 0);
    if (kept.length === 0) {
      // The payload so far equals every candidate up to p: take that prefix from one.
      f.copy = Buffer.allocUnsafe(f.plen);
      f.cands[0].buf.copy(f.copy, 0, 0, p);
      b.copy(f.copy, p, i, end);
      f.cands = null;
    } else {
      f.cands = kept;
    }
  }

  end(f) {
    stats.frames++;
    stats.bytes += f.len;
    if (f.event === 'bad' || f.event === null) { stats.badFrames++; return; }
    const e = stats.byEvent[f.event] ?? (stats.byEvent[f.event] = { frames: 0, bytes: 0 });
    e.frames++;
    e.bytes += f.len;
    if (f.event === 'phx_reply') {
      if (f.head.toString('latin1').includes('"status":"ok"')) stats.joinOk++;
      else stats.joinError++;
      this.joinedAt = now() - t0;
      return;
    }
    if (f.event !== 'presence_state' && f.event !== 'presence_diff') return;
    let s = f.copy === null ? f.cands[0] : null;
    if (s === null) {
      // Clients receive the same payload at the same time: another may have learnt it since.
      s = (cache.get(f.key) ?? []).find((c) => c.buf.equals(f.copy)) ?? learn(f.event, f.copy);
    }
    if (f.event === 'presence_state') this.state(s);
    else if (!this.synced) this.pending.push(s);
    else this.diff(s);
  }

  has(u) {
    const o = this.over.get(u);
    return o === undefined ? this.base !== null && this.base.bits[u] === 1 : o === 1;
  }

  state(s) {
    this.base = s;
    this.over = new Map();
    this.count = s.count;
    if (this.full !== null) this.full = Presence.syncState(this.full, s.value);
    this.synced = true;
    for (const d of this.pending) this.diff(d);
    this.pending = [];
    this.check();
  }

  diff(s) {
    for (const u of s.joins) {
      if (u >= 0 && u < N && !this.has(u)) { this.over.set(u, 1); this.count++; }
    }
    for (const u of s.leaves) {
      if (u >= 0 && u < N && this.has(u)) { this.over.set(u, 0); this.count--; }
    }
    if (this.full !== null) this.full = Presence.syncDiff(this.full, s.value);
    this.check();
  }

  check() {
    if (this.convergedAt === 0 && this.count === N) {
      this.convergedAt = now() - t0;
      converged++;
      if (converged === N && onConverged) onConverged();
    }
  }
}

async function pool(count, concurrency, fn) {
  let next = 0;
  const workers = [];
  for (let k = 0; k < Math.min(concurrency, count); k++) {
    workers.push((async () => {
      while (next < count) await fn(next++);
    })());
  }
  await Promise.all(workers);
}

function pct(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function main() {
  const clients = Array.from({ length: N }, (_, i) => new Client(i));
  const verify = Math.min(cfg.verify ?? 3, N);
  for (let k = 0; k < verify; k++) {
    clients[Math.floor((k * (N - 1)) / Math.max(1, verify - 1))].full = {};
  }
  const tc = now();
  let errors = 0;
  let firstError = null;
  await pool(N, cfg.concurrency ?? 200, async (i) => {
    try {
      await clients[i].connect(20000);
    } catch (err) {
      errors++;
      firstError ??= String(err);
    }
  });
  if (errors) {
    out({ phase: 'error', error: `${errors} connections failed: ${firstError}` });
    process.exit(2);
  }
  await phase({ phase: 'connected', n: N, seconds: now() - tc });

  const joins = clients.map((c) => clientFrame(JSON.stringify(
    ['1', '1', TOPIC, 'phx_join', { user: `u${c.i}` }])));
  const done = new Promise((resolve) => { onConverged = resolve; });
  const cpu0 = process.cpuUsage();
  t0 = now();
  for (const c of clients) c.sock.write(joins[c.i]);
  const sentIn = now() - t0;
  const limit = new Promise((resolve) => setTimeout(resolve, (cfg.convergeSeconds ?? 60) * 1000));
  await Promise.race([done, limit]);
  const wall = now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await phase({ phase: 'converged', converged, n: N, wall });

  const times = clients.filter((c) => c.convergedAt).map((c) => c.convergedAt)
    .sort((a, b) => a - b);
  const joined = clients.filter((c) => c.joinedAt).map((c) => c.joinedAt)
    .sort((a, b) => a - b);
  const checks = clients.filter((c) => c.full !== null).map((c) => {
    const list = Presence.list(c.full, (key, { metas }) => [key, metas.map((x) => x.phx_ref)]);
    return { client: c.i, keys: list.length, oneMetaEach: list.every(([, refs]) => refs.length === 1),
             refs: Object.fromEntries(list) };
  });
  const sameRefs = checks.every((c) => JSON.stringify(Object.entries(c.refs).sort())
    === JSON.stringify(Object.entries(checks[0].refs).sort()));
  out({
    phase: 'result',
    n: N,
    converged,
    wall,
    joinsSentIn: sentIn,
    convergedP50: pct(times, 0.5),
    convergedP99: pct(times, 0.99),
    convergedMax: times.length ? times[times.length - 1] : null,
    joinReplyP50: pct(joined, 0.5),
    joinReplyMax: joined.length ? joined[joined.length - 1] : null,
    frames: stats.frames,
    bytes: stats.bytes,
    byEvent: stats.byEvent,
    joinOk: stats.joinOk,
    joinError: stats.joinError,
    badFrames: stats.badFrames,
    closed: stats.closed,
    distinctPayloads: parsed,
    distinctPayloadBytes: parsedBytes,
    loadCpuSeconds: (cpu.user + cpu.system) / 1e6,
    loadUserSeconds: cpu.user / 1e6,
    loadSystemSeconds: cpu.system / 1e6,
    verified: checks.map(({ refs, ...rest }) => rest),
    verifiedSame: sameRefs,
  });
  for (const c of clients) c.sock.destroy();
  process.exit(0);
}

main().catch((err) => {
  out({ phase: 'error', error: String(err && err.stack || err) });
  process.exit(1);
});
