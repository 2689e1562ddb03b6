// Load for the history benchmark (bench/history_bench.py), pinned to the load core.
//
//   node bench/load/history.mjs '<json config>'
//
// Speaks the Phoenix V2 JSON protocol over `ws`. Same stdio protocol as gen.mjs: one JSON line
// per phase on stdout; after a line with `wait: true` it waits for a line on stdin (the
// orchestrator reads /proc and Redis in between); EOF on stdin ends it. Everything is bounded
// (connection counts, phase timeouts, a global deadline).
//
// mode "fanout": `subs` subscribers on subUrl and `pubs` publishers on pubUrl join `topic`;
//   publishers push `bcast` (no reply) round-robin, keeping at most `window` broadcasts in
//   flight (counted on the subscribers, or on everyone when countPubs). After the joins every
//   socket is taken over from `ws` and received frames are counted by a frame scanner
//   (gen.mjs's method); one "checker" connection keeps whole frames and checks every delivery:
//   the payload, and with history its `phx_pos` offset (exactly +1 each time: in order, no
//   duplicate, no gap).
// mode "recover": `conns` clients on url join `topics` topics (room:r0 … room:r<T-1>) and
//   track the newest `phx_pos` they saw; a publisher on pubUrl sends `warm` messages per topic;
//   then the clients go away (drop "client": the generator closes them; drop "server": the
//   orchestrator kills the node), the publisher sends `missed` messages per topic, and on
//   "go" every client reconnects (`reconnectConcurrency` handshakes in flight) and rejoins
//   with its position (or without one: positions false). Reported: when each client was
//   connected, joined and caught up (its last offset = the topic's top), recovered/replayed
//   per the join replies, duplicates, gaps and order violations.

import readline from 'node:readline';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2]);
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
  if (done) process.exit(0);
}

/** A client text frame, masked with a zero key (gen.mjs). */
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

/** Server frames across TCP chunks: onFrame(opcode, len, text or null). `keep`: whole
 * payloads are handed over (reassembled when split), else only lengths. */
class Scanner {
  constructor(onFrame, keep) {
    this.onFrame = onFrame;
    this.keep = keep;
    this.need = 0;
    this.op = 0;
    this.len = 0;
    this.parts = null;
    this.partial = null;
  }

  feed(b) {
    let i = 0;
    let n = b.length;
    if (this.need > 0) {
      const take = Math.min(this.need, n);
      if (this.keep) this.parts.push(b.subarray(0, take));
      this.need -= take;
      i = take;
      if (this.need === 0) {
        const text = this.keep ? Buffer.concat(this.parts).toString('utf8') : null;
        this.parts = null;
        this.onFrame(this.op, this.len, text);
      }
    }
    if (this.partial !== null && i < n) {
      b = Buffer.concat([this.partial, b.subarray(i)]);
      this.partial = null;
      i = 0;
      n = b.length;
    }
    while (i < n) {
      if (n - i < 2) { this.partial = Buffer.from(b.subarray(i)); return; }
      const b0 = b[i];
      const b1 = b[i + 1];
      let len = b1 & 0x7f;
      let h = 2;
      if (len === 126) {
        if (n - i < 4) { this.partial = Buffer.from(b.subarray(i)); return; }
        len = b.readUInt16BE(i + 2);
        h = 4;
      } else if (len === 127) {
        if (n - i < 10) { this.partial = Buffer.from(b.subarray(i)); return; }
        len = Number(b.readBigUInt64BE(i + 2));
        h = 10;
      }
      if (b1 & 0x80) h += 4;
      if (n - i < h) { this.partial = Buffer.from(b.subarray(i)); return; }
      i += h;
      const op = b0 & 0x0f;
      if (n - i >= len) {
        this.onFrame(op, len, this.keep ? b.toString('utf8', i, i + len) : null);
        i += len;
      } else {
        this.op = op;
        this.len = len;
        this.need = len - (n - i);
        if (this.keep) this.parts = [Buffer.from(b.subarray(i))];
        i = n;
      }
    }
  }
}

/** One WebSocket client (`ws` parsing). Replies to joins are matched by topic and ref and
 * handled synchronously (`onReply`, before any later frame); other frames go to `onOther`. */
class Client {
  constructor(url, topic) {
    this.url = url;
    this.topic = topic;
    this.ws = null;
    this.closed = false;
    this.waiters = new Map();
    this.onOther = null;
  }

  open(timeoutMs) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${this.url}/socket/websocket?vsn=2.0.0`, {
        perMessageDeflate: false, handshakeTimeout: timeoutMs, skipUTF8Validation: true,
      });
      this.ws = ws;
      this.closed = false;
      ws.on('message', (data) => this.dispatch(data.toString()));
      ws.once('open', resolve);
      ws.on('error', reject);
      ws.on('close', () => {
        this.closed = true;
        for (const w of this.waiters.values()) w.reject(new Error('closed'));
        this.waiters.clear();
      });
    });
  }

  dispatch(text) {
    if (this.waiters.size && text.includes('"phx_reply"')) {
      const m = JSON.parse(text);
      const key = `${m[2]} ${m[1]}`;
      const w = this.waiters.get(key);
      if (w) {
        this.waiters.delete(key);
        w.resolve(m[4]);
        return;
      }
    }
    if (this.onOther) this.onOther(text);
  }

  /** Join `topic` (ref and join_ref `ref`); `onReply(payload)` runs synchronously when the
   * reply arrives; resolves with the reply's payload. */
  join(topic, params, timeoutMs, ref = '1', onReply = null) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(`${topic} ${ref}`);
        reject(new Error('join timeout'));
      }, timeoutMs);
      this.waiters.set(`${topic} ${ref}`, {
        resolve: (payload) => {
          clearTimeout(timer);
          if (onReply) onReply(payload);
          resolve(payload);
        },
        reject: (err) => { clearTimeout(timer); reject(err); },
      });
      this.ws.send(JSON.stringify([ref, ref, topic, 'phx_join', params]));
    });
  }
}

async function pool(count, concurrency, fn) {
  let next = 0;
  const workers = [];
  for (let k = 0; k < Math.min(concurrency, count); k++) {
    workers.push((async () => {
      while (next < count) {
        const i = next++;
        await fn(i);
      }
    })());
  }
  await Promise.all(workers);
}

// -- fanout ---------------------------------------------------------------------------------

async function fanout() {
  const topic = cfg.topic;
  const timeout = cfg.connectTimeout ?? 15000;
  const subs = [];
  const pubs = [];
  let errors = 0;
  let firstError = null;
  await phase({ phase: 'start' });
  const t0 = now();
  const connect = async (url, list) => {
    const c = new Client(url, topic);
    try {
      await c.open(timeout);
      const reply = await c.join(topic, {}, timeout);
      if (reply.status !== 'ok') throw new Error(`join refused: ${JSON.stringify(reply)}`);
      list.push(c);
    } catch (err) {
      errors++;
      firstError ??= String(err?.message ?? err);
      try { c.ws?.terminate(); } catch { /* ignore */ }
    }
  };
  await pool(cfg.subs, cfg.concurrency ?? 100, () => connect(cfg.subUrl, subs));
  await pool(cfg.pubs, 10, () => connect(cfg.pubUrl, pubs));
  await phase({ phase: 'connected', connected: subs.length + pubs.length, subs: subs.length,
    pubs: pubs.length, errors, firstError, elapsed: now() - t0 });
  if (pubs.length !== cfg.pubs || subs.length !== cfg.subs) {
    out({ phase: 'error', error: `connected ${subs.length}/${cfg.subs} subscribers, ` +
      `${pubs.length}/${cfg.pubs} publishers: ${firstError}` });
    process.exit(2);
  }
  await sleep(cfg.settleMs ?? 500); // subscriptions settle across nodes

  const counted = cfg.countPubs ? [...subs, ...pubs] : subs;
  const D = counted.length; // deliveries counted per broadcast
  const W = cfg.window;
  const frames = pubs.map((_, k) => clientFrame(JSON.stringify([null, String(k + 2), topic, 'bcast', PAYLOAD])));
  let received = 0; // deliveries to the counted connections
  let pubReceived = 0; // deliveries to publishers that are not counted
  let control = 0;
  let sent = 0;
  let running = false;
  let drained = null;
  const check = { frames: 0, badPayload: 0, noPos: 0, dup: 0, gap: 0, last: null, epoch: null, sample: null };
  const pump = () => {
    while (running && sent * D - received < W * D) {
      pubs[sent % pubs.length].sock.write(frames[sent % pubs.length]);
      sent++;
    }
  };
  const onDelivery = () => {
    received++;
    if (running) pump();
    else if (drained !== null && received >= sent * D) drained();
  };
  const checker = counted[0];
  const checkFrame = (text) => {
    check.frames++;
    const m = JSON.parse(text);
    const p = m[4];
    if (check.sample === null) check.sample = text;
    if (m[3] !== 'msg' || p.body !== PAYLOAD.body || p.user !== PAYLOAD.user) check.badPayload++;
    const pos = p.phx_pos;
    if (!cfg.history) return;
    if (!pos) { check.noPos++; return; }
    if (check.last !== null && pos.epoch === check.epoch) {
      if (pos.offset <= check.last) check.dup++;
      else if (pos.offset !== check.last + 1) check.gap++;
    }
    check.last = pos.offset;
    check.epoch = pos.epoch;
  };
  for (const c of [...subs, ...pubs]) {
    const isCounted = counted.includes(c);
    const isChecker = c === checker;
    if (c.ws._receiver._bufferedBytes) throw new Error('unexpected data before detaching');
    const sock = c.ws._socket;
    sock.removeAllListeners('data');
    const scanner = new Scanner((op, len, text) => {
      if (op !== 1 && op !== 2 && op !== 0) { control++; return; }
      if (isChecker) checkFrame(text);
      if (isCounted) onDelivery(); else pubReceived++;
    }, isChecker);
    sock.on('data', (chunk) => scanner.feed(chunk));
    c.sock = sock;
  }
  await phase({ phase: 'ready', conns: subs.length + pubs.length, perBroadcast: D });
  running = true;
  const tStart = now();
  pump();
  await sleep((cfg.warmup ?? 1) * 1000);
  const m0 = { t: now(), received, sent, pubReceived };
  out({ phase: 'measure', ...m0 });
  await sleep(cfg.duration * 1000);
  running = false;
  const tStop = now();
  const mStop = { received, sent };
  await new Promise((resolve) => {
    if (received >= sent * D) return resolve();
    drained = resolve;
    setTimeout(resolve, (cfg.drainTimeout ?? 10) * 1000);
  });
  const t1 = now();
  const deliveries = received - m0.received;
  await phase({
    phase: 'loaded', t: t1, broadcasts: sent - m0.sent, deliveries, elapsed: t1 - m0.t,
    deliveriesPerSec: deliveries / (t1 - m0.t), publishSeconds: tStop - tStart,
    drainSeconds: t1 - tStop, backlogAtStop: mStop.sent * D - mStop.received,
    pubDeliveries: pubReceived - m0.pubReceived, perBroadcast: D,
    expected: sent * D, received, lost: sent * D - received, controlFrames: control,
    check: { ...check, sample: check.sample },
  });
  for (const c of [...subs, ...pubs]) c.sock.destroy();
}

// -- recover --------------------------------------------------------------------------------

async function recover() {
  const T = cfg.topics;
  const C = cfg.conns;
  const timeout = cfg.connectTimeout ?? 30000;
  const topics = Array.from({ length: T }, (_, k) => `room:r${k}`);
  const top = new Map(); // topic -> newest offset the publisher saw
  let epochSeen = null;
  const clients = [];
  const st = { dup: 0, gap: 0, badEpoch: 0, noPos: 0, msgs: 0 };
  let caught = 0;
  let onCaught = null;
  let target = null; // when set: a client is caught up once its offset reaches target(topic)

  const handle = (c, text) => {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (m[3] !== 'msg') return;
    st.msgs++;
    const pos = m[4] && m[4].phx_pos;
    if (!pos) {
      // History off: count messages instead.
      st.noPos++;
      c.offset = (c.offset ?? 0) + 1;
    } else if (c.epoch !== null && pos.epoch !== c.epoch) {
      st.badEpoch++;
      c.epoch = pos.epoch;
      c.offset = pos.offset;
    } else {
      if (c.offset !== null && pos.offset <= c.offset) { st.dup++; return; }
      if (c.offset !== null && pos.offset !== c.offset + 1) st.gap++;
      c.epoch = pos.epoch;
      c.offset = pos.offset;
    }
    if (target !== null && !c.caught && c.offset >= target.get(c.topic)) markCaught(c);
  };
  const markCaught = (c) => {
    c.caught = true;
    c.tCaught = now();
    caught++;
    if (onCaught !== null && caught >= clients.length) onCaught();
  };
  const joinParams = (c) => {
    if (!cfg.positions || c.epoch === null) return {};
    return { phx_pos: { epoch: c.epoch, offset: c.offset } };
  };
  const connectOne = async (c, params) => {
    c.tStart = now();
    await c.open(timeout);
    c.tOpen = now();
    c.onOther = (text) => handle(c, text);
    const reply = await c.join(c.topic, params, timeout, '1', (r) => {
      // Runs before any frame that follows the reply (the replay).
      c.tJoined = now();
      if (r.status !== 'ok') return;
      const rec = r.response && r.response.phx_recovery;
      c.recovery = rec ?? null;
      // A first join, or not recovered: go on from the stream's position (what the
      // client helper does); recovered: the replay follows.
      if (rec && !rec.recovered) { c.epoch = rec.epoch; c.offset = rec.offset; }
      if (target === null || c.caught) return;
      if (rec && !rec.recovered && rec.reason && cfg.positions) {
        // Refused (the app would reload its state): settled, not caught up.
        c.refused = true;
        markCaught(c);
      } else if (!cfg.history || (c.offset ?? -1) >= target.get(c.topic)) markCaught(c);
    });
    if (reply.status !== 'ok') throw new Error(`join refused: ${JSON.stringify(reply)}`);
  };

  await phase({ phase: 'start' });
  for (let i = 0; i < C; i++) {
    const c = new Client(cfg.url, topics[i % T]);
    c.index = i;
    c.epoch = null;
    c.offset = null;
    c.msgs = 0;
    clients.push(c);
  }
  let errors = 0;
  let firstError = null;
  const t0 = now();
  await pool(C, cfg.concurrency ?? 200, async (i) => {
    try { await connectOne(clients[i], {}); } catch (err) {
      errors++;
      firstError ??= String(err?.message ?? err);
    }
  });
  await phase({ phase: 'connected', connected: C - errors, errors, firstError, elapsed: now() - t0 });
  if (errors) { out({ phase: 'error', error: `${errors} connects failed: ${firstError}` }); process.exit(2); }

  // The publisher: one connection on pubUrl joined to every topic; `pub` is acked after the
  // broadcast; it sees its own broadcasts, hence each topic's top offset.
  const pub = new Client(cfg.pubUrl, null);
  await pub.open(timeout);
  let acked = 0;
  let pubErrors = 0;
  let ackWaiter = null;
  pub.onOther = (text) => {
    const m = JSON.parse(text);
    if (m[3] === 'phx_reply') {
      if (m[4].status === 'ok') acked++;
      else pubErrors++;
      if (ackWaiter && acked >= ackWaiter.n) { const w = ackWaiter; ackWaiter = null; w.resolve(); }
    } else if (m[3] === 'msg') {
      const pos = m[4].phx_pos;
      if (pos) {
        epochSeen = pos.epoch;
        if (!(top.get(m[2]) >= pos.offset)) top.set(m[2], pos.offset);
      } else top.set(m[2], (top.get(m[2]) ?? 0) + 1);
    }
  };
  for (let k = 0; k < T; k++) {
    const reply = await pub.join(topics[k], {}, timeout, String(k + 1));
    if (reply.status !== 'ok') throw new Error('publisher join refused');
    const rec = reply.response && reply.response.phx_recovery;
    top.set(topics[k], rec ? rec.offset : 0);
  }
  let pubRef = 1000;
  const publish = async (perTopic) => {
    const total = perTopic * T;
    const base = acked;
    let sentN = 0;
    const windowN = cfg.pubWindow ?? 200;
    const t = now();
    while (sentN < total) {
      while (sentN < total && sentN - (acked - base) < windowN) {
        const k = sentN % T;
        pubRef++;
        pub.ws.send(JSON.stringify([String(k + 1), String(pubRef), topics[k], 'pub', PAYLOAD]));
        sentN++;
      }
      await new Promise((resolve, reject) => {
        ackWaiter = { n: base + Math.min(total, sentN), resolve };
        if (acked >= ackWaiter.n) { ackWaiter = null; resolve(); }
        setTimeout(() => reject(new Error(`publish ack timeout (${pubErrors} errors)`)), 30000).unref();
      });
    }
    return now() - t;
  };
  // Every client must see its topic's top before it is dropped.
  const waitClients = async (limitS) => {
    const deadline = now() + limitS;
    while (now() < deadline) {
      // The publisher's own delivery of the last message may come after its ack.
      let pending = 0;
      for (const c of clients) if (c.offset === null || c.offset < top.get(c.topic)) pending++;
      if (pending === 0) return 0;
      await sleep(50);
    }
    let pending = 0;
    for (const c of clients) if (c.offset === null || c.offset < top.get(c.topic)) pending++;
    return pending;
  };
  const warmS = await publish(cfg.warm);
  await sleep(200);
  const behind = await waitClients(30);
  await phase({ phase: 'ready', warmSeconds: warmS, behind, epoch: epochSeen,
    tops: [...top.values()].slice(0, 3) });

  // Away: the generator closes the clients, or the orchestrator has killed their node.
  const tDrop = now();
  if (cfg.drop === 'client') for (const c of clients) c.ws.terminate();
  {
    const deadline = now() + 20;
    while (clients.some((c) => !c.closed) && now() < deadline) await sleep(20);
  }
  const stillOpen = clients.filter((c) => !c.closed).length;
  const dropSeconds = now() - tDrop;
  const missedS = await publish(cfg.missed);
  await sleep(300);
  const topsAfter = new Map(top);
  await phase({ phase: 'published', stillOpen, dropSeconds, missedSeconds: missedS,
    tops: [...topsAfter.values()].slice(0, 3), epoch: epochSeen });

  // Back: every client reconnects and rejoins with its position.
  target = topsAfter;
  caught = 0;
  const goT = now();
  let rerrors = 0;
  let rfirst = null;
  const allCaught = new Promise((resolve) => { onCaught = resolve; });
  await pool(C, cfg.reconnectConcurrency ?? 1000, async (i) => {
    const c = clients[i];
    c.caught = false;
    c.refused = false;
    try {
      await connectOne(c, joinParams(c));
    } catch (err) {
      rerrors++;
      rfirst ??= String(err?.message ?? err);
      c.failed = true;
      caught++; // counted so the wait ends; reported as an error
      if (caught >= clients.length && onCaught) onCaught();
    }
  });
  const tJoinedAll = now();
  await Promise.race([allCaught, sleep((cfg.catchUpTimeout ?? 120) * 1000)]);
  const tEnd = now();
  const ok = clients.filter((c) => !c.failed);
  const q = (arr, p) => {
    if (!arr.length) return null;
    const s = Float64Array.from(arr).sort();
    return s[Math.min(s.length - 1, Math.floor(p * s.length))];
  };
  const caughtTimes = ok.filter((c) => c.caught && !c.refused).map((c) => c.tCaught - goT);
  const joinTimes = ok.map((c) => c.tJoined - goT);
  const joinLat = ok.map((c) => c.tJoined - c.tOpen);
  let recovered = 0;
  let notRecovered = 0;
  let replayed = 0;
  const reasons = {};
  for (const c of ok) {
    if (!c.recovery) continue;
    if (c.recovery.recovered) recovered++;
    else {
      notRecovered++;
      const r = c.recovery.reason ?? 'none';
      reasons[r] = (reasons[r] ?? 0) + 1;
    }
    replayed += c.recovery.replayed ?? 0;
  }
  await phase({
    phase: 'recovered', conns: C, errors: rerrors, firstError: rfirst,
    caughtUp: caughtTimes.length, refused: ok.filter((c) => c.refused).length,
    notCaughtUp: ok.filter((c) => !c.caught).length,
    allJoinedS: tJoinedAll - goT, allSettledS: tEnd - goT,
    // Every client caught up (none refused, none stuck): when the last one did.
    allCaughtUpS: ok.length === C && caughtTimes.length === C ? tEnd - goT : null,
    joinedP50S: q(joinTimes, 0.5), joinedP99S: q(joinTimes, 0.99),
    caughtP50S: q(caughtTimes, 0.5), caughtP99S: q(caughtTimes, 0.99),
    caughtMaxS: caughtTimes.length ? Math.max(...caughtTimes) : null,
    joinReplyP50Ms: q(joinLat, 0.5) * 1000, joinReplyP99Ms: q(joinLat, 0.99) * 1000,
    recovered, notRecovered, reasons, replayed,
    messages: st.msgs, duplicates: st.dup, gaps: st.gap, badEpoch: st.badEpoch, noPosition: st.noPos,
  });
  for (const c of clients) c.ws.terminate();
  pub.ws.terminate();
}

async function main() {
  if (cfg.mode === 'fanout') await fanout();
  else if (cfg.mode === 'recover') await recover();
  else throw new Error(`unknown mode ${cfg.mode}`);
  out({ phase: 'done' });
  setTimeout(() => process.exit(0), 50);
}

main().catch((err) => {
  out({ phase: 'error', error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
