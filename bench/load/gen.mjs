// Load generator for the trio-channels benchmark suite (run by `bench/run`, pinned to core 1).
//
//   node bench/load/gen.mjs '<json config>'
//
// It connects and joins `conns` WebSocket clients with the `ws` package, then takes each raw
// TCP socket over: requests are pre-encoded, pre-masked client frames written straight to the
// socket, and received server frames are counted by a minimal frame scanner instead of
// `ws`'s parser and UTF-8 checks, so that the generator stays off the bottleneck.
//
// It talks to the orchestrator over stdio: one JSON line per phase on stdout; after a phase
// line marked `wait: true` it waits for a line on stdin before going on (the orchestrator reads
// the server's CPU time and RSS from /proc in between). EOF on stdin ends it. Everything is
// bounded: connection count, run time (`duration`), drain time, and a global deadline.
//
// Config: url, proto ("phoenix" | "socketio"), mode ("fanout" | "echo" | "idle"), conns,
// duration, warmup (s), concurrency (connects in flight), window (broadcasts in flight, fanout),
// payload (JSON text), localAddrs + perAddr (source addresses, for more than ~28k connections),
// connectTimeout (ms), drainTimeout (s), maxSeconds (global deadline).

import readline from 'node:readline';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2]);
const TOPIC = 'room:bench';
const PAYLOAD = JSON.parse(cfg.payload);

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => Number(process.hrtime.bigint()) / 1e9;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

setTimeout(() => {
  out({ phase: 'error', error: `global deadline of ${cfg.maxSeconds}s reached` });
  process.exit(3);
}, (cfg.maxSeconds ?? 300) * 1000).unref();

const rl = readline.createInterface({ input: process.stdin });
const stdinLines = rl[Symbol.asyncIterator]();
async function phase(obj) {
  out({ ...obj, wait: true });
  const { done } = await stdinLines.next();
  if (done) {
    destroyAll();
    process.exit(0);
  }
}

// -- wire formats ---------------------------------------------------------------------------

/** A client text frame with the mask bit set and a zero masking key (payload unchanged). */
function clientFrame(text) {
  const payload = Buffer.from(text, 'utf8');
  const n = payload.length;
  let hdr;
  if (n < 126) {
    hdr = Buffer.from([0x81, 0x80 | n, 0, 0, 0, 0]);
  } else if (n < 65536) {
    hdr = Buffer.alloc(8);
    hdr[0] = 0x81;
    hdr[1] = 0x80 | 126;
    hdr.writeUInt16BE(n, 2);
  } else {
    hdr = Buffer.alloc(14);
    hdr[0] = 0x81;
    hdr[1] = 0x80 | 127;
    hdr.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([hdr, payload]);
}

const PROTOCOLS = {
  phoenix: {
    path: '/socket/websocket?vsn=2.0.0',
    async join(c) {
      c.ws.send(JSON.stringify(['1', '1', TOPIC, 'phx_join', {}]));
      const reply = JSON.parse(await c.next());
      if (reply[3] !== 'phx_reply' || !reply[4] || reply[4].status !== 'ok') {
        throw new Error(`join refused: ${JSON.stringify(reply)}`);
      }
    },
    echo: JSON.stringify(['1', '2', TOPIC, 'echo', PAYLOAD]),
    echoReply: JSON.stringify(['1', '2', TOPIC, 'phx_reply', { status: 'ok', response: PAYLOAD }]),
    bcast: JSON.stringify(['1', '3', TOPIC, 'bcast', PAYLOAD]),
    delivery: JSON.stringify([null, null, TOPIC, 'msg', PAYLOAD]),
  },
  // Engine.IO 4 / Socket.IO 5 over the WebSocket transport, spoken directly.
  socketio: {
    path: '/socket.io/?EIO=4&transport=websocket',
    async join(c) {
      const open = await c.next();
      if (!open.startsWith('0{')) throw new Error(`no Engine.IO open packet: ${open}`);
      c.ws.send('40');
      const connected = await c.next();
      if (!connected.startsWith('40')) throw new Error(`namespace connect refused: ${connected}`);
      c.ws.send(`421${JSON.stringify(['join', TOPIC])}`);
      const ack = await c.next();
      if (ack !== '431["ok"]') throw new Error(`join not acked: ${ack}`);
    },
    echo: `422${JSON.stringify(['echo', PAYLOAD])}`,
    echoReply: `432${JSON.stringify([PAYLOAD])}`,
    bcast: `42${JSON.stringify(['bcast', PAYLOAD])}`,
    delivery: `42${JSON.stringify(['msg', PAYLOAD])}`,
  },
};
const proto = PROTOCOLS[cfg.proto];
if (!proto) throw new Error(`unknown proto ${cfg.proto}`);

// -- frame scanner --------------------------------------------------------------------------

/** Counts server frames (unmasked) across TCP chunks; calls onFrame(opcode, len, buf, start)
 * with buf = null when the payload was split across chunks. */
class Scanner {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.need = 0; // payload bytes of the current frame still to skip
    this.op = 0;
    this.len = 0;
    this.partial = null; // an incomplete header
  }

  feed(b) {
    let i = 0;
    let n = b.length;
    if (this.need > 0) {
      const take = Math.min(this.need, n);
      this.need -= take;
      i = take;
      if (this.need === 0) this.onFrame(this.op, this.len, null, 0);
    }
    if (this.partial !== null && i < n) {
      b = Buffer.concat([this.partial, b.subarray(i)]);
      this.partial = null;
      i = 0;
      n = b.length;
    }
    while (i < n) {
      if (n - i < 2) {
        this.partial = Buffer.from(b.subarray(i));
        return;
      }
      const b0 = b[i];
      const b1 = b[i + 1];
      let len = b1 & 0x7f;
      let h = 2;
      if (len === 126) {
        if (n - i < 4) {
          this.partial = Buffer.from(b.subarray(i));
          return;
        }
        len = b.readUInt16BE(i + 2);
        h = 4;
      } else if (len === 127) {
        if (n - i < 10) {
          this.partial = Buffer.from(b.subarray(i));
          return;
        }
        len = Number(b.readBigUInt64BE(i + 2));
        h = 10;
      }
      if (b1 & 0x80) h += 4;
      if (n - i < h) {
        this.partial = Buffer.from(b.subarray(i));
        return;
      }
      i += h;
      const op = b0 & 0x0f;
      if (n - i >= len) {
        i += len;
        this.onFrame(op, len, b, i - len);
      } else {
        this.op = op;
        this.len = len;
        this.need = len - (n - i);
        i = n;
      }
    }
  }
}

// -- connections ----------------------------------------------------------------------------

const clients = [];
let closing = false;
let unexpectedCloses = 0;

function destroyAll() {
  closing = true;
  for (const c of clients) c.sock?.destroy();
}

class Client {
  constructor(index) {
    this.index = index;
    this.queue = [];
    this.waiter = null;
    this.sock = null;
    this.t0 = 0;
  }

  open(url, localAddress) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, {
        perMessageDeflate: false,
        handshakeTimeout: cfg.connectTimeout ?? 10000,
        skipUTF8Validation: true,
        localAddress,
      });
      this.ws = ws;
      ws.on('message', (data) => {
        const text = data.toString();
        if (this.waiter) {
          const w = this.waiter;
          this.waiter = null;
          w.resolve(text);
        } else {
          this.queue.push(text);
        }
      });
      ws.once('open', resolve);
      ws.on('error', (err) => {
        if (this.waiter) this.waiter.reject(err);
        reject(err);
      });
      ws.on('close', () => {
        if (this.waiter) this.waiter.reject(new Error('closed'));
      });
    });
  }

  next() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('reply timeout')), cfg.connectTimeout ?? 10000);
      this.waiter = {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  /** Take the TCP socket over from `ws`: from now on frames are counted, not parsed. */
  detach(onFrame) {
    const ws = this.ws;
    if (this.queue.length || ws._receiver._bufferedBytes) {
      throw new Error('unexpected data before detaching from ws');
    }
    const sock = ws._socket;
    sock.removeAllListeners('data');
    const scanner = new Scanner(onFrame);
    sock.on('data', (chunk) => scanner.feed(chunk));
    sock.on('close', () => {
      if (!closing) unexpectedCloses++;
    });
    this.sock = sock;
  }
}

async function connectAll() {
  const url0 = new URL(cfg.url);
  const url = `ws://${url0.host}${proto.path}`;
  const addrs = cfg.localAddrs ?? [undefined];
  const perAddr = cfg.perAddr ?? Infinity;
  let nextIndex = 0;
  let errors = 0;
  let firstError = null;
  const t0 = now();
  async function worker() {
    while (nextIndex < cfg.conns) {
      const i = nextIndex++;
      const c = new Client(i);
      const addr = addrs[Math.min(Math.floor(i / perAddr), addrs.length - 1)];
      try {
        await c.open(url, addr);
        await proto.join(c);
        clients.push(c);
      } catch (err) {
        errors++;
        firstError ??= String(err && err.message ? err.message : err);
        try { c.ws?.terminate(); } catch { /* ignore */ }
      }
    }
  }
  const workers = [];
  for (let k = 0; k < Math.min(cfg.concurrency ?? 100, cfg.conns); k++) workers.push(worker());
  await Promise.all(workers);
  const elapsed = now() - t0;
  return { connected: clients.length, errors, firstError, elapsed };
}

// -- scenarios ------------------------------------------------------------------------------

async function fanout() {
  const N = clients.length;
  const W = cfg.window;
  const expectLen = Buffer.byteLength(proto.delivery);
  const bcastFrame = clientFrame(proto.bcast);
  const pub = clients[0];
  let received = 0;
  let badLen = 0;
  let control = 0;
  let sent = 0;
  let running = false;
  let sample = null;
  let badSample = null;
  let drained = null;

  const pump = () => {
    while (running && sent * N - received < W * N) {
      pub.sock.write(bcastFrame);
      sent++;
    }
  };
  for (const c of clients) {
    const isPub = c === pub;
    c.detach((op, len, buf, start) => {
      if (op !== 1 && op !== 2 && op !== 0) {
        control++;
        return;
      }
      received++;
      if (len !== expectLen) {
        badLen++;
        if (badSample === null) badSample = buf === null ? `(split) len ${len}` : buf.toString('utf8', start, start + len);
      }
      if (isPub && sample === null && buf !== null) sample = buf.toString('utf8', start, start + len);
      if (running) pump();
      else if (drained !== null && received >= sent * N) drained();
    });
  }
  await phase({ phase: 'ready', conns: N });

  running = true;
  const tStart = now();
  pump();
  await sleep((cfg.warmup ?? 0) * 1000);
  const m0 = { t: now(), received, sent };
  out({ phase: 'measure', ...m0 });
  await sleep(cfg.duration * 1000);
  running = false;
  const tStop = now();
  await new Promise((resolve) => {
    if (received >= sent * N) return resolve();
    drained = resolve;
    setTimeout(resolve, (cfg.drainTimeout ?? 10) * 1000);
  });
  const t1 = now();
  const deliveries = received - m0.received;
  await phase({
    phase: 'loaded',
    t: t1,
    broadcasts: sent - m0.sent,
    deliveries,
    elapsed: t1 - m0.t,
    deliveriesPerSec: deliveries / (t1 - m0.t),
    publishSeconds: tStop - tStart,
    expected: sent * N,
    received,
    lost: sent * N - received,
    badLength: badLen,
    badSample,
    controlFrames: control,
    sampleOk: sample === proto.delivery,
    sample,
    unexpectedCloses,
  });
}

async function echo() {
  const frame = clientFrame(proto.echo);
  const expectLen = Buffer.byteLength(proto.echoReply);
  const cap = 5_000_000;
  const lat = new Float64Array(cap);
  let nlat = 0;
  let done = 0;
  let badLen = 0;
  let control = 0;
  let inflight = 0;
  let running = false;
  let measuring = false;
  let drained = null;
  let sampleOk = null;
  let badSample = null;

  // One validated round trip per client through `ws` before taking the socket over.
  for (const c of clients) {
    c.ws.send(proto.echo);
    const reply = await c.next();
    if (sampleOk === null || sampleOk) sampleOk = reply === proto.echoReply;
    if (!sampleOk && !cfg.quietValidation) out({ phase: 'warn', echoReply: reply, expected: proto.echoReply });
  }
  for (const c of clients) {
    c.detach((op, len, buf, start) => {
      if (op !== 1 && op !== 2 && op !== 0) {
        control++;
        return;
      }
      const t = now();
      if (len !== expectLen) {
        badLen++;
        if (badSample === null) {
          badSample = buf === null ? `(split) len ${len}` : buf.toString('utf8', start, start + len);
        }
      }
      if (measuring && nlat < cap) lat[nlat++] = t - c.t0;
      done++;
      if (running) {
        c.t0 = t;
        c.sock.write(frame);
      } else {
        inflight--;
        if (inflight === 0 && drained !== null) drained();
      }
    });
  }
  await phase({ phase: 'ready', conns: clients.length });

  running = true;
  const t = now();
  for (const c of clients) {
    c.t0 = t;
    c.sock.write(frame);
  }
  inflight = clients.length;
  await sleep((cfg.warmup ?? 0) * 1000);
  measuring = true;
  const m0 = { t: now(), done };
  out({ phase: 'measure', ...m0 });
  await sleep(cfg.duration * 1000);
  running = false;
  await new Promise((resolve) => {
    if (inflight === 0) return resolve();
    drained = resolve;
    setTimeout(resolve, (cfg.drainTimeout ?? 10) * 1000);
  });
  measuring = false;
  const t1 = now();
  const sorted = lat.subarray(0, nlat).sort();
  const pct = (p) => (nlat ? sorted[Math.min(nlat - 1, Math.floor(p * nlat))] * 1000 : null);
  const roundTrips = done - m0.done;
  await phase({
    phase: 'loaded',
    t: t1,
    roundTrips,
    elapsed: t1 - m0.t,
    roundTripsPerSec: roundTrips / (t1 - m0.t),
    p50ms: pct(0.5),
    p90ms: pct(0.9),
    p99ms: pct(0.99),
    maxms: nlat ? sorted[nlat - 1] * 1000 : null,
    samples: nlat,
    lost: inflight,
    badLength: badLen,
    badSample,
    controlFrames: control,
    sampleOk,
    unexpectedCloses,
  });
}

// -- main -----------------------------------------------------------------------------------

async function main() {
  await phase({ phase: 'start' });
  const conn = await connectAll();
  await phase({ phase: 'connected', ...conn });
  if (clients.length === 0) {
    out({ phase: 'error', error: `no connection succeeded: ${conn.firstError}` });
    process.exit(2);
  }
  if (cfg.mode === 'fanout') await fanout();
  else if (cfg.mode === 'echo') await echo();
  else if (cfg.mode !== 'idle') throw new Error(`unknown mode ${cfg.mode}`);
  destroyAll();
  out({ phase: 'done', unexpectedCloses });
  // Give the kernel the FINs, then leave.
  setTimeout(() => process.exit(0), 50);
}

main().catch((err) => {
  out({ phase: 'error', error: String(err && err.stack ? err.stack : err) });
  destroyAll();
  process.exit(1);
});
