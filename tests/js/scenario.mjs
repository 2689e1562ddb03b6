// Drives the OFFICIAL phoenix npm client (with `ws` as the Node WebSocket) against a
// trio-channels server, one scenario per run:
//
//     node tests/js/scenario.mjs <scenario> <ws-url-of-the-socket-mount>
//     e.g. node tests/js/scenario.mjs join_push_reply ws://127.0.0.1:4000/socket
//
// Output protocol (stdout, one item per line):
//   READY:<step>      the scenario waits for one line on stdin before it goes on
//   RESULT:<json>     {"ok": true, "result": {...}} or {"ok": false, "error": ..., "events": [...]}
// Every wait is bounded; an overall watchdog (JS_WATCHDOG_MS, default 20 s) makes the
// script exit non-zero on its own.

import { Socket } from "phoenix";
import WebSocket from "ws";
import readline from "node:readline";

const [, , scenarioName, baseUrl] = process.argv;
const WATCHDOG_MS = Number(process.env.JS_WATCHDOG_MS || 20000);
const WAIT_MS = 8000;

// ---------------------------------------------------------------------------------------
// Event log and waiting

const events = [];
const waiters = new Set();

function note(ev) {
  events.push(ev);
  for (const w of [...waiters]) w.check();
}

function waitFor(label, pred, { count = 1, ms = WAIT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const w = {
      check() {
        const hits = events.filter(pred);
        if (hits.length >= count) {
          waiters.delete(w);
          clearTimeout(w.timer);
          resolve(hits[count - 1]);
        }
      },
    };
    w.timer = setTimeout(() => {
      waiters.delete(w);
      reject(new Error(`timed out after ${ms} ms waiting for ${label} (x${count})`));
    }, ms);
    waiters.add(w);
    w.check();
  });
}

const count = (pred) => events.filter(pred).length;
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

// JSON-safe copies: binary becomes {"$bin": "<hex>"}.
function hex(buf) {
  return Buffer.from(buf).toString("hex");
}

function enc(v) {
  if (v instanceof ArrayBuffer) return { $bin: hex(v) };
  if (ArrayBuffer.isView(v)) return { $bin: hex(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength)) };
  if (Array.isArray(v)) return v.map(enc);
  if (v && typeof v === "object") {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = enc(x);
    return out;
  }
  return v === undefined ? null : v;
}

function frameOf(data, isBinary) {
  if (isBinary) {
    return { $bin: Array.isArray(data) ? hex(Buffer.concat(data)) : enc(data).$bin };
  }
  const text = typeof data === "string" ? data : Buffer.from(data).toString("utf8");
  try {
    return JSON.parse(text);
  } catch {
    return { $text: text };
  }
}

// ---------------------------------------------------------------------------------------
// Instrumented sockets and channels

const sockets = [];

// A `ws` WebSocket that records the URL, the offered subprotocols and every frame sent and
// received on the wire (the phoenix client's own handlers are untouched).
function recordingTransport(name) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      note({ k: "connect_attempt", sock: name, url, protocols: protocols ?? null });
      this.on("message", (data, isBinary) => {
        note({ k: "recv", sock: name, frame: frameOf(data, isBinary), binary: isBinary });
      });
    }

    send(data, ...rest) {
      note({ k: "sent", sock: name, frame: frameOf(data, typeof data !== "string"),
             binary: typeof data !== "string" });
      return super.send(data, ...rest);
    }
  };
}

function makeSocket(name, opts = {}) {
  const socket = new Socket(baseUrl, {
    transport: recordingTransport(name),
    rejoinAfterMs: () => 50,
    reconnectAfterMs: () => 50,
    ...opts,
  });
  socket.onOpen(() => note({ k: "open", sock: name, protocol: socket.conn && socket.conn.protocol }));
  socket.onClose((e) => note({ k: "close", sock: name, code: e && e.code,
                               reason: e && e.reason ? String(e.reason) : "" }));
  socket.onError(() => note({ k: "sock_error", sock: name }));
  sockets.push(socket);
  return socket;
}

function track(channel, name) {
  channel.joinPush
    .receive("ok", (resp) => note({ k: "join", chan: name, status: "ok", response: enc(resp),
                                    join_ref: channel.joinRef() }))
    .receive("error", (resp) => note({ k: "join", chan: name, status: "error",
                                       response: enc(resp), join_ref: channel.joinRef() }))
    .receive("timeout", () => note({ k: "join", chan: name, status: "timeout",
                                     join_ref: channel.joinRef() }));
  channel.onError((reason) => note({ k: "chan_error", chan: name, reason: enc(reason) }));
  channel.onClose((reason) => note({ k: "chan_close", chan: name, reason: enc(reason) }));
  return channel;
}

function listen(channel, name, event) {
  channel.on(event, (payload, ref, joinRef) => {
    note({ k: "on", chan: name, event, payload: enc(payload),
           is_array_buffer: payload instanceof ArrayBuffer, ref: ref ?? null,
           join_ref: joinRef ?? null });
  });
}

// Push and wait for its reply (ok / error / timeout), recording it.
function push(channel, name, event, payload, timeout = 5000) {
  return new Promise((resolve) => {
    const p = channel.push(event, payload, timeout);
    const done = (status) => (resp) => {
      const ev = { k: "reply", chan: name, event, status, response: enc(resp),
                   is_array_buffer: resp instanceof ArrayBuffer, ref: p.ref,
                   join_ref: channel.joinRef() };
      note(ev);
      resolve(ev);
    };
    p.receive("ok", done("ok")).receive("error", done("error")).receive("timeout", done("timeout"));
  });
}

function ping(socket) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("ping timed out")), WAIT_MS);
    const sent = socket.ping((rtt) => { clearTimeout(t); resolve(rtt); });
    if (!sent) { clearTimeout(t); reject(new Error("ping not sent: socket not connected")); }
  });
}

const isJoin = (chan, status) => (e) => e.k === "join" && e.chan === chan && (!status || e.status === status);
const sentOn = (sock, topic) => events.filter((e) => e.k === "sent" && e.sock === sock
  && Array.isArray(e.frame) && e.frame[2] === topic).map((e) => e.frame);
const recvOn = (sock, topic) => events.filter((e) => e.k === "recv" && e.sock === sock
  && Array.isArray(e.frame) && e.frame[2] === topic).map((e) => e.frame);
const of = (kind, field, value) => events.filter((e) => e.k === kind && e[field] === value);

// Wait-for-one-line-on-stdin coordination with the Python side.
let stdinLines = null;
const stdinWaiters = [];
function step(name, ms = 30000) {
  if (!stdinLines) {
    stdinLines = [];
    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      const w = stdinWaiters.shift();
      if (w) w(line); else stdinLines.push(line);
    });
  }
  process.stdout.write(`READY:${name}\n`);
  return new Promise((resolve, reject) => {
    if (stdinLines.length) return resolve(stdinLines.shift());
    const t = setTimeout(() => reject(new Error(`no go for step ${name}`)), ms);
    stdinWaiters.push((line) => { clearTimeout(t); resolve(line); });
  });
}

// ---------------------------------------------------------------------------------------
// Scenarios: each returns a JSON-able result for the Python side to assert on.

const scenarios = {
  async join_push_reply() {
    const socket = makeSocket("s", { params: { user_id: "u1" } });
    const ch = track(socket.channel("room:jpr", { reply: true }), "ch");
    listen(ch, "ch", "joined");
    socket.connect();
    ch.join();
    const join = await waitFor("join ok", isJoin("ch", "ok"));
    const joined = await waitFor("joined push", (e) => e.k === "on" && e.event === "joined");
    const echo = await push(ch, "ch", "echo", { a: 1, nested: { b: [1, "two", null] } });
    const error = await push(ch, "ch", "error_reply", {});
    const later = await push(ch, "ch", "later", {});
    const assigns = await push(ch, "ch", "assigns", {});
    const noreply = await push(ch, "ch", "noreply", {}, 300);
    return {
      url: of("connect_attempt", "sock", "s")[0].url,
      protocols: of("connect_attempt", "sock", "s")[0].protocols,
      join, joined, echo, error, later, assigns, noreply,
      sent: of("sent", "sock", "s").map((e) => e.frame),
      received: of("recv", "sock", "s").map((e) => e.frame),
      opens: count((e) => e.k === "open"),
      closes: of("close", "sock", "s"),
    };
  },

  async broadcast() {
    const a = makeSocket("a", { params: { user_id: "a" } });
    const b = makeSocket("b", { params: { user_id: "b" } });
    const ca = track(a.channel("room:bc"), "ca");
    const cb = track(b.channel("room:bc"), "cb");
    for (const [c, n] of [[ca, "ca"], [cb, "cb"]]) {
      for (const ev of ["shout", "new_msg", "user_entered"]) listen(c, n, ev);
    }
    a.connect();
    b.connect();
    ca.join();
    await waitFor("a joined", isJoin("ca", "ok"));
    cb.join();
    await waitFor("b joined", isJoin("cb", "ok"));
    await push(ca, "ca", "shout", { n: 1 });
    await push(ca, "ca", "shout_from", { n: 2 });
    await push(ca, "ca", "shout", { n: 3 });
    await push(ca, "ca", "new_msg", { body: "hi" });
    const heard = (chan, event, pred = () => true) => (e) => e.k === "on" && e.chan === chan
      && e.event === event && pred(e);
    for (const c of ["ca", "cb"]) {
      await waitFor(`${c} shout 3`, heard(c, "shout", (e) => e.payload.n === 3));
      await waitFor(`${c} new_msg`, heard(c, "new_msg"));
    }
    await waitFor("ca sees b enter", heard("ca", "user_entered", (e) => e.payload.user === "b"));
    const on = (chan, event) => events.filter(heard(chan, event));
    return {
      join_refs: { ca: ca.joinRef(), cb: cb.joinRef() },
      shouts: { ca: on("ca", "shout").map((e) => e.payload), cb: on("cb", "shout").map((e) => e.payload) },
      new_msg: { ca: on("ca", "new_msg"), cb: on("cb", "new_msg") },
      user_entered_a: on("ca", "user_entered").map((e) => e.payload),
      frames_b: recvOn("b", "room:bc"),
    };
  },

  async heartbeat() {
    const socket = makeSocket("s", { heartbeatIntervalMs: 100 });
    const ch = track(socket.channel("room:hb"), "ch");
    socket.connect();
    ch.join();
    await waitFor("join ok", isJoin("ch", "ok"));
    const isHbReply = (e) => e.k === "recv" && Array.isArray(e.frame) && e.frame[2] === "phoenix";
    await waitFor("15 heartbeat replies", isHbReply, { count: 15, ms: 10000 });
    const rtt = await ping(socket);
    const echo = await push(ch, "ch", "echo", { still: "here" });
    return {
      heartbeats: of("sent", "sock", "s").map((e) => e.frame).filter((f) => f[3] === "heartbeat"),
      replies: events.filter(isHbReply).map((e) => e.frame),
      rtt,
      echo,
      opens: count((e) => e.k === "open"),
      closes: count((e) => e.k === "close"),
      sock_errors: count((e) => e.k === "sock_error"),
      chan_errors: count((e) => e.k === "chan_error"),
      connect_attempts: count((e) => e.k === "connect_attempt"),
    };
  },

  async join_retry() {
    const socket = makeSocket("s", { rejoinAfterMs: () => 50 });
    const ch = track(socket.channel("room:retry", { refuse_until: 3 }), "ch");
    socket.connect();
    ch.join();
    await waitFor("join ok", isJoin("ch", "ok"));
    const echo = await push(ch, "ch", "echo", { after: "retry" });
    return {
      joins: events.filter(isJoin("ch")).map((e) => ({ status: e.status, response: e.response,
                                                      join_ref: e.join_ref })),
      sent: sentOn("s", "room:retry"),
      received: recvOn("s", "room:retry"),
      echo,
      state: ch.state,
    };
  },

  async crash_rejoin() {
    const socket = makeSocket("s", { rejoinAfterMs: () => 50 });
    const ch = track(socket.channel("room:crash"), "ch");
    listen(ch, "ch", "joined");
    socket.connect();
    ch.join();
    const first = await waitFor("first join", isJoin("ch", "ok"));
    // the after_join push comes from a timer, so it may trail a push sent right away: wait
    // for it, or "boom" can crash the channel before it pushes under load
    await waitFor("joined after first join", (e) => e.k === "on" && e.event === "joined"
      && e.join_ref === first.join_ref);
    push(ch, "ch", "boom", {}, 2000); // no reply: the channel crashes
    const error = await waitFor("phx_error", (e) => e.k === "chan_error");
    const second = await waitFor("rejoin", isJoin("ch", "ok"), { count: 2 });
    await waitFor("joined after rejoin", (e) => e.k === "on" && e.event === "joined"
      && e.join_ref === second.join_ref);
    const assigns = await push(ch, "ch", "assigns", {});
    const echo = await push(ch, "ch", "echo", { after: "crash" });
    return {
      first_join_ref: first.join_ref,
      second_join_ref: second.join_ref,
      error,
      chan_errors: count((e) => e.k === "chan_error"),
      chan_closes: count((e) => e.k === "chan_close"),
      assigns,
      echo,
      joined_pushes: events.filter((e) => e.k === "on" && e.event === "joined"),
      sent: sentOn("s", "room:crash"),
      received: recvOn("s", "room:crash"),
      state: ch.state,
    };
  },

  async server_close() {
    const socket = makeSocket("s", { rejoinAfterMs: () => 50 });
    const ch = track(socket.channel("room:stop"), "ch");
    listen(ch, "ch", "you_left");
    socket.connect();
    ch.join();
    const join = await waitFor("join ok", isJoin("ch", "ok"));
    const stop = await push(ch, "ch", "stop", {});
    const closed = await waitFor("chan close", (e) => e.k === "chan_close");
    // The push from terminate() comes after the phx_close; the client has dropped the channel.
    await waitFor("you_left frame", (e) => e.k === "recv" && Array.isArray(e.frame)
      && e.frame[3] === "you_left");
    // Give a rejoin (50 ms) several chances to (wrongly) happen, then prove the link is alive.
    await delay(400);
    await ping(socket);
    return {
      join_ref: join.join_ref,
      stop,
      closed,
      state: ch.state,
      channels_left: socket.channels.length,
      chan_errors: count((e) => e.k === "chan_error"),
      you_left_delivered: count((e) => e.k === "on" && e.event === "you_left"),
      sent: sentOn("s", "room:stop"),
      received: recvOn("s", "room:stop"),
    };
  },

  async duplicate_channel() {
    const socket = makeSocket("s");
    const c1 = track(socket.channel("room:dup", { which: 1 }), "c1");
    const c2 = track(socket.channel("room:dup", { which: 2 }), "c2");
    listen(c2, "c2", "joined");
    socket.connect();
    c1.join();
    const j1 = await waitFor("c1 join", isJoin("c1", "ok"));
    c2.join();
    const j2 = await waitFor("c2 join", isJoin("c2", "ok"));
    const c1closed = await waitFor("c1 closed", (e) => e.k === "chan_close" && e.chan === "c1");
    // Everything the server sends for the old join: its phx_close and terminate()'s push.
    await waitFor("old phx_close", (e) => e.k === "recv" && Array.isArray(e.frame)
      && e.frame[3] === "phx_close" && e.frame[0] === j1.join_ref);
    await waitFor("old you_left", (e) => e.k === "recv" && Array.isArray(e.frame)
      && e.frame[3] === "you_left" && e.frame[0] === j1.join_ref);
    await waitFor("c2 joined push", (e) => e.k === "on" && e.chan === "c2" && e.event === "joined");
    const echo = await push(c2, "c2", "echo", { from: "c2" });
    await ping(socket);
    return {
      j1: j1.join_ref,
      j2: j2.join_ref,
      c1closed,
      c1_state: c1.state,
      c2_state: c2.state,
      c2_closes: count((e) => e.k === "chan_close" && e.chan === "c2"),
      c2_errors: count((e) => e.k === "chan_error" && e.chan === "c2"),
      c2_joined: events.filter((e) => e.k === "on" && e.chan === "c2"),
      echo,
      channels: socket.channels.map((c) => c.joinRef()),
      sent: sentOn("s", "room:dup"),
      received: recvOn("s", "room:dup"),
    };
  },

  async buffered() {
    const socket = makeSocket("s");
    const ch = track(socket.channel("room:buf"), "ch");
    // join() and two pushes before the socket is even open: both go to the push buffer.
    ch.join();
    const pending = [push(ch, "ch", "echo", { n: 1 }), push(ch, "ch", "echo", { n: 2 })];
    socket.onOpen(() => {
      // The join frame has just been flushed; its reply cannot have arrived yet.
      note({ k: "pushing_n3", state: ch.state });
      pending.push(push(ch, "ch", "echo", { n: 3 }));
    });
    socket.connect();
    await waitFor("join ok", isJoin("ch", "ok"));
    const replies = await Promise.all(pending);
    const order = events.filter((e) => ["open", "join", "reply", "pushing_n3"].includes(e.k))
      .map((e) => (e.k === "reply" ? `reply:${e.status}:${e.response.n}`
        : e.k === "join" ? `join:${e.status}` : e.k === "pushing_n3" ? `push3:${e.state}` : e.k));
    return {
      order,
      replies,
      join_ref: ch.joinRef(),
      sent: sentOn("s", "room:buf"),
      received: recvOn("s", "room:buf"),
    };
  },

  async binary() {
    const socket = makeSocket("s");
    const ch = track(socket.channel("room:bin"), "ch");
    listen(ch, "ch", "binary_event");
    listen(ch, "ch", "bin");
    socket.connect();
    ch.join();
    const join = await waitFor("join ok", isJoin("ch", "ok"));
    const reply = await push(ch, "ch", "binary_event", new Uint8Array([1, 2]).buffer);
    const pushed = await waitFor("binary push", (e) => e.k === "on" && e.event === "binary_event");
    const bcastReply = await push(ch, "ch", "bin_broadcast", new Uint8Array([9, 8, 7]).buffer);
    const bcast = await waitFor("binary broadcast", (e) => e.k === "on" && e.event === "bin");
    return {
      join_ref: join.join_ref,
      reply,
      pushed,
      bcast_reply: bcastReply,
      bcast,
      binary_type: socket.conn.binaryType,
      sent: of("sent", "sock", "s").filter((e) => e.binary).map((e) => e.frame),
      received: of("recv", "sock", "s").filter((e) => e.binary).map((e) => e.frame),
    };
  },

  async auth_token() {
    const token = process.env.JS_AUTH_TOKEN || "tok=?";
    const socket = makeSocket("s", { authToken: token, params: { user_id: "t1" } });
    const info = track(socket.channel("info"), "info");
    socket.connect();
    info.join();
    const join = await waitFor("info join", isJoin("info", "ok"));
    const open = of("open", "sock", "s")[0];
    // A token the server's connect() refuses: the handshake fails, no open.
    const bad = makeSocket("bad", { authToken: "bad-token" });
    bad.connect();
    await waitFor("bad socket error", (e) => e.k === "sock_error" && e.sock === "bad");
    bad.disconnect();
    return {
      join,
      protocol: open.protocol,
      offered: of("connect_attempt", "sock", "s")[0].protocols,
      bad_opens: count((e) => e.k === "open" && e.sock === "bad"),
      bad_errors: count((e) => e.k === "sock_error" && e.sock === "bad"),
    };
  },

  async disconnect() {
    const socket = makeSocket("s", { params: { user_id: "dc1" } });
    const other = makeSocket("o", { params: { user_id: "dc2" } });
    const ch = track(socket.channel("room:dc"), "ch");
    const co = track(other.channel("room:dc"), "co");
    socket.connect();
    other.connect();
    ch.join();
    co.join();
    const first = await waitFor("join", isJoin("ch", "ok"));
    await waitFor("other join", isJoin("co", "ok"));
    push(ch, "ch", "disconnect_me", {}, 2000);
    const close = await waitFor("close", (e) => e.k === "close" && e.sock === "s");
    await waitFor("reopen", (e) => e.k === "open" && e.sock === "s", { count: 2 });
    const second = await waitFor("rejoin", isJoin("ch", "ok"), { count: 2 });
    const assigns = await push(ch, "ch", "assigns", {});
    const otherEcho = await push(co, "co", "echo", { still: "up" });
    return {
      first_join_ref: first.join_ref,
      second_join_ref: second.join_ref,
      close,
      closes: of("close", "sock", "s").map((e) => e.code),
      opens: of("open", "sock", "s").length,
      chan_errors: events.filter((e) => e.k === "chan_error" && e.chan === "ch"),
      assigns,
      other: { opens: of("open", "sock", "o").length, closes: of("close", "sock", "o").length,
               echo: otherEcho },
      joins_sent: sentOn("s", "room:dc").filter((f) => f[3] === "phx_join"),
    };
  },

  async restart() {
    const socket = makeSocket("s", { params: { user_id: "rs" } });
    const ch = track(socket.channel("room:rs"), "ch");
    socket.connect();
    ch.join();
    const first = await waitFor("join", isJoin("ch", "ok"));
    const before = await push(ch, "ch", "echo", { n: "before" });
    const go = await step("restart");
    const close = events.find((e) => e.k === "close" && e.sock === "s") || null;
    await waitFor("reopen", (e) => e.k === "open" && e.sock === "s", { count: 2 });
    const second = await waitFor("rejoin", isJoin("ch", "ok"), { count: 2, ms: 10000 });
    const after = await push(ch, "ch", "echo", { n: "after" });
    const assigns = await push(ch, "ch", "assigns", {});
    return {
      go,
      first_join_ref: first.join_ref,
      second_join_ref: second.join_ref,
      close_seen_before_go: close,
      closes: of("close", "sock", "s").map((e) => e.code),
      opens: of("open", "sock", "s").length,
      before,
      after,
      assigns,
    };
  },
};

// ---------------------------------------------------------------------------------------

function finish(payload, code) {
  for (const s of sockets) {
    try { s.disconnect(); } catch { /* ignore */ }
  }
  process.stdout.write(`RESULT:${JSON.stringify(payload)}\n`, () => process.exit(code));
}

const watchdog = setTimeout(() => {
  finish({ ok: false, error: `watchdog: scenario ${scenarioName} ran over ${WATCHDOG_MS} ms`,
           events }, 3);
}, WATCHDOG_MS);

const scenario = scenarios[scenarioName];
if (!scenario || !baseUrl) {
  finish({ ok: false, error: `usage: scenario.mjs <${Object.keys(scenarios).join("|")}> <ws-url>` }, 2);
} else {
  scenario().then(
    (result) => { clearTimeout(watchdog); finish({ ok: true, result }, 0); },
    (err) => { clearTimeout(watchdog); finish({ ok: false, error: String(err && err.stack || err), events }, 1); },
  );
}
