// The client matrix: several releases of the OFFICIAL phoenix npm client, side by side in one
// Node process, each through the same scenario against one trio-channels server.
//
//     node tests/js/matrix.mjs '<config json>'
//
// config: {"socket": "ws://127.0.0.1:4000/socket",        (tests/matrix/matrix_app.py)
//          "presence": "ws://127.0.0.1:4000/presence",
//          "clients": [{"id": "1.3-websocket", "pkg": "phoenix13", "transport": "websocket"}, ...]}
//
// "pkg" is an npm alias from package.json (phoenix13 = phoenix@1.3.x, ...). Releases up to 1.5
// ship only the CommonJS/UMD bundle priv/static/phoenix.js (loaded with require); 1.6 and later
// also ship an ES module (priv/static/phoenix.mjs, loaded with import()). 1.3's Presence has
// only the static syncState/syncDiff/list API; 1.4 and later have `new Presence(channel)`.
// "transport" picks the phoenix transport from TRANSPORTS below: "websocket" (the `ws`
// package) or "longpoll" (the release's own LongPoll, 1.7 and later: on Node's fetch for 1.8,
// whose Ajax falls back to it; through a small XMLHttpRequest shim over fetch for 1.7, whose
// Ajax knows only XMLHttpRequest). LongPoll clients send no heartbeats (skipHeartbeat), so
// their "heartbeat" result is {skipped: true}.
//
// Every client runs the scenario below concurrently; at one point they all wait for the server
// to restart. Output (stdout, one item per line):
//   READY:restart   every client waits; restart the server, then write one line on stdin
//   RESULT:<json>   {"<id>": {"ok": bool, "error": str|null, "module": {...}, "result": {...},
//                    "events": [...] (only when not ok)}}
// "result" is filled step by step, so a failing client still reports what it got to.
// Each wait is bounded (WAIT_MS); a watchdog (MATRIX_WATCHDOG_MS, default 60 s) ends it all.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import readline from "node:readline";
import WebSocket from "ws";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(import.meta.url);
const WATCHDOG_MS = Number(process.env.MATRIX_WATCHDOG_MS || 60000);
const WAIT_MS = 10000;
const HEARTBEAT_MS = 200;
const config = JSON.parse(process.argv[2] || "{}");
// phoenix.js bundles take their global object from `self` or `window`, which Node lacks; 1.7's
// ES module then has none at all (its Ajax reads global.XMLHttpRequest from undefined). Give
// Node's global object the name browsers and workers have for it.
globalThis.self ??= globalThis;

// ---------------------------------------------------------------------------------------
// Loading one release of the client

async function loadPhoenix(pkg) {
  const meta = JSON.parse(readFileSync(join(ROOT, "node_modules", pkg, "package.json"), "utf8"));
  const exp = meta.exports && (meta.exports["."] || meta.exports);
  let mod, kind, file;
  if (exp && exp.import) {
    file = fileURLToPath(import.meta.resolve(pkg));
    mod = await import(pkg);
    kind = "esm";
  } else {
    file = require.resolve(pkg);
    mod = require(pkg);
    kind = "cjs";
  }
  const { Socket, Presence, LongPoll } = mod;
  if (typeof Socket !== "function" || !Presence) throw new Error(`${pkg}: no Socket/Presence in ${file}`);
  return { Socket, Presence, LongPoll, info: { pkg, name: meta.name, version: meta.version, kind,
                                               file: file.slice(file.lastIndexOf(`node_modules/${pkg}/`)) } };
}

// ---------------------------------------------------------------------------------------
// Wire frames as [join_ref, ref, topic, event, payload] whatever the serializer

function hex(buf) {
  return Buffer.from(buf).toString("hex");
}

function frameOf(data, isBinary) {
  if (isBinary) return { $bin: hex(Array.isArray(data) ? Buffer.concat(data) : data) };
  const text = typeof data === "string" ? data : Buffer.from(data).toString("utf8");
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return { $text: text };
  }
  if (Array.isArray(msg)) return msg;
  if (msg && typeof msg === "object" && "topic" in msg) {  // V1 object frames
    return [msg.join_ref ?? null, msg.ref ?? null, msg.topic, msg.event, msg.payload];
  }
  return { $json: msg };
}

const isFrame = (f) => Array.isArray(f) && f.length === 5;

// ---------------------------------------------------------------------------------------
// A minimal XMLHttpRequest over fetch, for phoenix.js releases whose Ajax has no fetch path
// (1.7): what its LongPoll uses of it. abort() fires no events (the request is dropped).

class FetchXMLHttpRequest {
  constructor() {
    this.readyState = 0;
    this.status = 0;
    this.responseText = "";
    this.timeout = 0;
    this.headers = {};
    this.controller = new AbortController();
    this.aborted = false;
  }

  open(method, url) {
    this.method = method;
    this.url = url;
    this.readyState = 1;
  }

  setRequestHeader(name, value) {
    this.headers[name] = value;
  }

  send(body) {
    let timedOut = false;
    const timer = this.timeout ? setTimeout(() => { timedOut = true; this.controller.abort(); }, this.timeout) : null;
    const done = () => {
      clearTimeout(timer);
      this.readyState = 4;
    };
    fetch(this.url, { method: this.method, headers: this.headers, body: body ?? undefined,
                      signal: this.controller.signal })
      .then(async (resp) => {
        const text = await resp.text();
        if (this.aborted) return;
        done();
        this.status = resp.status;
        this.responseText = text;
        if (this.onreadystatechange) this.onreadystatechange();
      })
      .catch(() => {
        if (this.aborted) return;
        done();
        if (timedOut) {
          if (this.ontimeout) this.ontimeout();
          return;
        }
        // a network error: as in browsers, readystatechange (DONE, status 0), then error
        if (this.onreadystatechange) this.onreadystatechange();
        if (this.onerror) this.onerror();
      });
  }

  abort() {
    this.aborted = true;
    this.controller.abort();
  }
}

// ---------------------------------------------------------------------------------------
// Transports: name -> (run, socket name) -> the `transport` option of phoenix's Socket. Each
// notes {k: "connect_attempt", url}, and every frame as {k: "sent"|"recv", frame} (see frameOf).

const TRANSPORTS = {
  // `ws` recording every frame on the wire (phoenix's own handlers are untouched)
  websocket: (run, name) => class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      run.note({ k: "connect_attempt", sock: name, url });
      this.on("message", (data, isBinary) => run.note({ k: "recv", sock: name, frame: frameOf(data, isBinary) }));
    }

    send(data, ...rest) {
      run.note({ k: "sent", sock: name, frame: frameOf(data, typeof data !== "string") });
      return super.send(data, ...rest);
    }
  },
  // the release's own LongPoll, recording what it posts and what its polls deliver
  longpoll: (run, name) => {
    const { LongPoll } = run;
    if (!LongPoll) throw new Error(`${run.spec.pkg} has no LongPoll`);
    const needsShim = run.shimXHR;
    return class RecordingLongPoll extends LongPoll {
      constructor(url, protocols) {
        super(url, protocols);
        run.note({ k: "connect_attempt", sock: name, url, poll_url: this.pollEndpoint });
      }

      // LongPoll delivers each message with this.onmessage({data}): record it on the way
      get onmessage() {
        return this.recordingOnMessage;
      }

      set onmessage(fn) {
        this.recordingOnMessage = (event) => {
          run.note({ k: "recv", sock: name, frame: frameOf(event.data, typeof event.data !== "string") });
          return fn(event);
        };
      }

      send(body) {
        run.note({ k: "sent", sock: name, frame: frameOf(body, typeof body !== "string") });
        return super.send(body);
      }

      ajax(...args) {
        if (!needsShim) return super.ajax(...args);
        const saved = globalThis.XMLHttpRequest;
        globalThis.XMLHttpRequest = FetchXMLHttpRequest;
        try {
          return super.ajax(...args);
        } finally {
          if (saved === undefined) delete globalThis.XMLHttpRequest;
          else globalThis.XMLHttpRequest = saved;
        }
      }
    };
  },
};

// ---------------------------------------------------------------------------------------
// One client of the matrix: its own event log, sockets and waits

function deferred() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

const restartGo = deferred();

class Run {
  constructor(spec) {
    this.spec = spec;
    this.id = spec.id;
    this.events = [];
    this.waiters = new Set();
    this.sockets = [];
    this.result = {};
    this.atRestart = deferred();
  }

  note(ev) {
    this.events.push({ t: Date.now(), ...ev });
    for (const w of [...this.waiters]) w.check();
  }

  waitFor(label, pred, { count = 1, ms = WAIT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const hits = this.events.filter(pred);
          if (hits.length >= count) {
            this.waiters.delete(w);
            clearTimeout(w.timer);
            resolve(hits[count - 1]);
          }
        },
      };
      w.timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`timed out after ${ms} ms waiting for ${label} (x${count})`));
      }, ms);
      this.waiters.add(w);
      w.check();
    });
  }

  until(label, cond, ms = WAIT_MS) {
    // for conditions on state rather than on events: re-checked on every event
    return this.waitFor(label, () => cond(), { ms });
  }

  transport(name) {
    const make = TRANSPORTS[this.spec.transport];
    if (!make) throw new Error(`transport ${this.spec.transport} is not supported by matrix.mjs`);
    return make(this, name);
  }

  socket(name, url, params, opts = {}) {
    const socket = new this.Socket(url, {
      transport: this.transport(name),
      params,
      reconnectAfterMs: () => 50,
      rejoinAfterMs: () => 50,
      ...opts,
    });
    socket.onOpen(() => this.note({ k: "open", sock: name }));
    socket.onClose((e) => this.note({ k: "close", sock: name, code: e && e.code,
                                      reason: e && e.reason ? String(e.reason) : "" }));
    socket.onError(() => this.note({ k: "sock_error", sock: name }));
    this.sockets.push(socket);
    return socket;
  }

  channel(socket, name, topic, params) {
    const ch = socket.channel(topic, params);
    ch.onError((reason) => this.note({ k: "chan_error", chan: name, reason: reason ?? null }));
    ch.onClose(() => this.note({ k: "chan_close", chan: name }));
    return ch;
  }

  join(ch, name) {
    const joinRef = () => (typeof ch.joinRef === "function" ? ch.joinRef() : ch.joinPush.ref);
    ch.join()
      .receive("ok", (resp) => this.note({ k: "join", chan: name, status: "ok", response: resp ?? null, join_ref: joinRef() }))
      .receive("error", (resp) => this.note({ k: "join", chan: name, status: "error", response: resp ?? null, join_ref: joinRef() }))
      .receive("timeout", () => this.note({ k: "join", chan: name, status: "timeout", join_ref: joinRef() }));
    return this.waitFor(`${name} join ok`, (e) => e.k === "join" && e.chan === name && e.status === "ok");
  }

  listen(ch, name, event) {
    ch.on(event, (payload) => this.note({ k: "on", chan: name, event, payload: payload ?? null }));
  }

  push(ch, name, event, payload) {
    return new Promise((resolve) => {
      const p = ch.push(event, payload, WAIT_MS);
      const done = (status) => (resp) => {
        const ev = { k: "reply", chan: name, event, status, response: resp ?? null, ref: p.ref,
                     join_ref: typeof ch.joinRef === "function" ? ch.joinRef() : ch.joinPush.ref };
        this.note(ev);
        resolve(ev);
      };
      p.receive("ok", done("ok")).receive("error", done("error")).receive("timeout", done("timeout"));
    });
  }

  // Presence through the client's own API: an instance (1.4+) or the static functions (1.3).
  presence(ch, name) {
    const { Presence } = this;
    const onJoin = (key, current, newPres) =>
      this.note({ k: "presence_join", chan: name, key, refs: newPres.metas.map((m) => m.phx_ref) });
    const onLeave = (key, current, leftPres) =>
      this.note({ k: "presence_leave", chan: name, key, refs: leftPres.metas.map((m) => m.phx_ref) });
    const listOf = (list) => {
      const out = {};
      list((key, { metas }) => { out[key] = metas.map(({ phx_ref, ...rest }) => ({ phx_ref, ...rest })); });
      return out;
    };
    const sync = (list) => this.note({ k: "presence_sync", chan: name, list: listOf(list) });
    if (!legacyPresence(Presence)) {
      const p = new Presence(ch);
      p.onJoin(onJoin);
      p.onLeave(onLeave);
      p.onSync(() => sync((chooser) => p.list(chooser)));
      return { api: "instance", list: () => listOf((chooser) => p.list(chooser)) };
    }
    let state = {};
    ch.on("presence_state", (s) => {
      state = Presence.syncState(state, s, onJoin, onLeave);
      sync((chooser) => Presence.list(state, chooser));
    });
    ch.on("presence_diff", (d) => {
      state = Presence.syncDiff(state, d, onJoin, onLeave);
      sync((chooser) => Presence.list(state, chooser));
    });
    return { api: "static", list: () => listOf((chooser) => Presence.list(state, chooser)) };
  }

  frames(kind, sock, pred = () => true) {
    return this.events.filter((e) => e.k === kind && e.sock === sock && isFrame(e.frame) && pred(e.frame))
      .map((e) => e.frame);
  }

  count(pred) {
    return this.events.filter(pred).length;
  }
}

// ---------------------------------------------------------------------------------------
// The scenario

const legacyPresence = (Presence) => !(typeof Presence === "function" && typeof Presence.prototype.onSync === "function");
const sameKeys = (list, keys) => JSON.stringify(Object.keys(list).sort()) === JSON.stringify([...keys].sort());
const onlyOneMetaEach = (list) => Object.values(list).every((metas) => metas.length === 1);

async function scenario(run) {
  const R = run.result;
  const tag = run.id.replace(/[^a-z0-9]+/gi, "_");
  const topic = `room:matrix_${tag}`;
  // 1.3's Presence (static functions) needs presence_state before the tracking of its own
  // join (tests/matrix/matrix_app.py, StateFirstPresenceChannel)
  const ptopic = `${legacyPresence(run.Presence) ? "state_first" : "room"}:matrix_presence_${tag}`;
  const isOpen = (sock) => (e) => e.k === "open" && e.sock === sock;
  const isJoinOk = (chan) => (e) => e.k === "join" && e.chan === chan && e.status === "ok";
  const isHb = (f) => f[2] === "phoenix" && f[3] === "heartbeat";
  const isHbReply = (f) => f[2] === "phoenix" && f[3] === "phx_reply";

  // connect: two app sockets (a with short heartbeats), two presence sockets
  const a = run.socket("a", config.socket, { user_id: `a_${tag}` }, { heartbeatIntervalMs: HEARTBEAT_MS });
  const b = run.socket("b", config.socket, { user_id: `b_${tag}` });
  const pa = run.socket("pa", config.presence, {});
  const pb = run.socket("pb", config.presence, {});
  for (const s of [a, b, pa, pb]) s.connect();
  await Promise.all(["a", "b", "pa", "pb"].map((s) => run.waitFor(`${s} open`, isOpen(s))));
  R.connect = {
    urls: Object.fromEntries(["a", "b", "pa", "pb"].map((s) => [s, run.events.find((e) => e.k === "connect_attempt" && e.sock === s).url])),
    poll_urls: Object.fromEntries(["a", "b", "pa", "pb"].map((s) => [s, run.events.find((e) => e.k === "connect_attempt" && e.sock === s).poll_url ?? null])),
  };

  // join, push/reply
  const chA = run.channel(a, "chA", topic, { reply: true });
  const chB = run.channel(b, "chB", topic, { reply: true });
  for (const [ch, name] of [[chA, "chA"], [chB, "chB"]]) {
    run.listen(ch, name, "shout");
    run.listen(ch, name, "joined");
  }
  const [joinA, joinB] = await Promise.all([run.join(chA, "chA"), run.join(chB, "chB")]);
  R.join = { a: joinA, b: joinB, sent_a: run.frames("sent", "a", (f) => f[3] === "phx_join")[0] ?? null,
             reply_a: run.frames("recv", "a", (f) => f[3] === "phx_reply" && f[1] === joinA.join_ref)[0] ?? null };
  const payload = { n: 1, s: "héllo", list: [1, "two", null, true], nested: { x: 1.5 } };
  const echo = await run.push(chA, "chA", "echo", payload);
  const error = await run.push(chA, "chA", "error_reply", {});
  R.push = { payload, echo, error,
             echo_sent: run.frames("sent", "a", (f) => f[3] === "echo")[0] ?? null,
             echo_reply: run.frames("recv", "a", (f) => f[3] === "phx_reply" && f[1] === echo.ref)[0] ?? null };

  // broadcast to the second client (and the sender)
  const shout = await run.push(chA, "chA", "shout", { from: "a", n: 1 });
  const isShout = (chan, n) => (e) => e.k === "on" && e.chan === chan && e.event === "shout" && e.payload && e.payload.n === n;
  const [gotB, gotA] = await Promise.all([run.waitFor("b gets shout 1", isShout("chB", 1)),
                                          run.waitFor("a gets shout 1", isShout("chA", 1))]);
  R.broadcast = { reply: shout, b: gotB.payload, a: gotA.payload,
                  frame_b: run.frames("recv", "b", (f) => f[3] === "shout")[0] ?? null };

  // Presence: alice and bob on their own topic, a meta update, bob leaves
  const chPA = run.channel(pa, "chPA", ptopic, { user: "alice" });
  const chPB = run.channel(pb, "chPB", ptopic, { user: "bob" });
  const presA = run.presence(chPA, "chPA");
  const presB = run.presence(chPB, "chPB");
  await run.join(chPA, "chPA");
  await run.until("alice sees herself", () => sameKeys(presA.list(), ["alice"]));
  await run.join(chPB, "chPB");
  const both = (l) => sameKeys(l, ["alice", "bob"]) && onlyOneMetaEach(l);
  await run.until("both see alice and bob", () => both(presA.list()) && both(presB.list()));
  const listA = presA.list(), listB = presB.list();
  const status = await run.push(chPA, "chPA", "status", { status: "away" });
  await run.until("bob sees alice away", () => {
    const l = presB.list();
    return l.alice && l.alice.length === 1 && l.alice[0].status === "away";
  });
  const afterUpdate = presB.list();
  const leaveB = await new Promise((resolve) => {
    chPB.leave().receive("ok", () => resolve("ok")).receive("timeout", () => resolve("timeout"));
  });
  await run.until("alice sees bob leave", () => sameKeys(presA.list(), ["alice"]));
  R.presence = {
    api: presA.api, list_a: listA, list_b: listB, status, after_update: afterUpdate, leave_b: leaveB,
    after_leave: presA.list(),
    leaves_seen_by_a: run.events.filter((e) => e.k === "presence_leave" && e.chan === "chPA").map((e) => e.key),
    frames_b: run.frames("recv", "pb", (f) => f[3] === "presence_state" || f[3] === "presence_diff").map((f) => f[3]),
  };

  // heartbeats on a (every HEARTBEAT_MS), each answered; a LongPoll connection sends none
  // (its transport's skipHeartbeat): its polls keep the session alive
  const skipsHeartbeats = Boolean(a.conn && a.conn.skipHeartbeat);
  if (skipsHeartbeats) {
    await new Promise((r) => setTimeout(r, 5 * HEARTBEAT_MS));
  } else {
    await run.waitFor("5 heartbeat replies on a", (e) => e.k === "recv" && e.sock === "a" && isFrame(e.frame) && isHbReply(e.frame), { count: 5 });
  }
  R.heartbeat = {
    interval_ms: HEARTBEAT_MS,
    skipped: skipsHeartbeats,
    sent: run.frames("sent", "a", isHb),
    replies: run.frames("recv", "a", isHbReply),
    closes_a: run.count((e) => e.k === "close" && e.sock === "a"),
    opens_a: run.count(isOpen("a")),
  };

  // the server restarts (SIGTERM: drain with close 1012): reconnect and rejoin
  run.atRestart.resolve(true);
  await restartGo.promise;
  await Promise.all(["a", "b", "pa"].map((s) => run.waitFor(`${s} reopens`, isOpen(s), { count: 2, ms: 20000 })));
  const [rejoinA, rejoinB, rejoinPA] = await Promise.all([
    run.waitFor("chA rejoins", isJoinOk("chA"), { count: 2, ms: 20000 }),
    run.waitFor("chB rejoins", isJoinOk("chB"), { count: 2, ms: 20000 }),
    run.waitFor("chPA rejoins", isJoinOk("chPA"), { count: 2, ms: 20000 }),
  ]);
  const echo2 = await run.push(chA, "chA", "echo", { after: "restart" });
  await run.push(chA, "chA", "shout", { from: "a", n: 2 });
  const gotB2 = await run.waitFor("b gets shout 2", isShout("chB", 2));
  await run.until("alice is back alone", () => {
    const l = presA.list();
    return sameKeys(l, ["alice"]) && l.alice.length === 1 && l.alice[0].phx_ref !== listA.alice[0].phx_ref;
  });
  if (!skipsHeartbeats) {
    const hbBefore = run.count((e) => e.k === "recv" && e.sock === "a" && isFrame(e.frame) && isHbReply(e.frame));
    await run.waitFor("heartbeats go on after the restart",
                      (e) => e.k === "recv" && e.sock === "a" && isFrame(e.frame) && isHbReply(e.frame), { count: hbBefore + 2 });
  }
  R.restart = {
    closes: Object.fromEntries(["a", "b", "pa", "pb"].map((s) => [s, run.events.filter((e) => e.k === "close" && e.sock === s).map((e) => e.code)])),
    opens: Object.fromEntries(["a", "b", "pa", "pb"].map((s) => [s, run.count(isOpen(s))])),
    join_refs: { a: [joinA.join_ref, rejoinA.join_ref], b: [joinB.join_ref, rejoinB.join_ref] },
    rejoin_a: rejoinA, rejoin_b: rejoinB, rejoin_pa: rejoinPA,
    echo: echo2,
    b: gotB2.payload,
    presence: presA.list(),
    chan_errors: run.events.filter((e) => e.k === "chan_error").map((e) => e.chan),
  };

  // leave
  const leave = await new Promise((resolve) => {
    const p = chA.leave();
    p.receive("ok", (resp) => resolve({ status: "ok", response: resp ?? null, ref: p.ref }))
      .receive("timeout", () => resolve({ status: "timeout", ref: p.ref }));
  });
  await run.waitFor("chA closes", (e) => e.k === "chan_close" && e.chan === "chA");
  const jr = rejoinA.join_ref;
  await run.waitFor("phx_close after the leave", (e) => e.k === "recv" && e.sock === "a" && isFrame(e.frame)
    && e.frame[2] === topic && e.frame[3] === "phx_close");
  // a shout from b after the leave reaches b, but no longer a
  await run.push(chB, "chB", "shout", { from: "b", n: 3 });
  await run.waitFor("b gets shout 3", isShout("chB", 3));
  await new Promise((r) => setTimeout(r, 100));
  R.leave = {
    reply: leave,
    sent: run.frames("sent", "a", (f) => f[3] === "phx_leave"),
    received: run.frames("recv", "a", (f) => f[2] === topic && f[0] === jr && (f[3] === "phx_close" || (f[3] === "phx_reply" && f[1] === leave.ref))),
    state: chA.state,
    a_after_leave: run.count(isShout("chA", 3)),
  };
}

async function runClient(run) {
  const { spec } = run;
  const out = { ok: false, error: null, module: null, result: run.result };
  try {
    const { Socket, Presence, LongPoll, info } = await loadPhoenix(spec.pkg);
    // 1.7's Ajax has only XMLHttpRequest (1.8 falls back to fetch, as Node has)
    Object.assign(run, { Socket, Presence, LongPoll, shimXHR: /^1\.[0-7]\./.test(info.version) });
    out.module = info;
    await scenario(run);
    out.ok = true;
  } catch (err) {
    out.error = String((err && err.stack) || err);
    // the tail of the log without the heartbeat chatter
    out.events = run.events.filter((e) => !(isFrame(e.frame) && e.frame[2] === "phoenix")).slice(-60);
  } finally {
    run.atRestart.resolve(false);
    for (const s of run.sockets) {
      try { s.disconnect(); } catch { /* ignore */ }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------

function finish(results, code) {
  process.stdout.write(`RESULT:${JSON.stringify(results)}\n`, () => process.exit(code));
}

async function main() {
  const runs = config.clients.map((spec) => new Run(spec));
  const results = {};
  const watchdog = setTimeout(() => {
    for (const run of runs) {
      results[run.id] ??= { ok: false, error: `watchdog: over ${WATCHDOG_MS} ms`, module: null,
                            result: run.result,
                            events: run.events.filter((e) => !(isFrame(e.frame) && e.frame[2] === "phoenix")).slice(-60) };
    }
    finish(results, 3);
  }, WATCHDOG_MS);
  const done = runs.map((run) => runClient(run).then((out) => { results[run.id] = out; }));
  // every client reaches the restart point (or has failed); then the server restarts once
  await Promise.all(runs.map((run) => run.atRestart.promise));
  const rl = readline.createInterface({ input: process.stdin });
  process.stdout.write("READY:restart\n");
  const go = await new Promise((resolve) => rl.once("line", resolve));
  rl.close();
  restartGo.resolve(go);
  await Promise.all(done);
  clearTimeout(watchdog);
  finish(results, 0);
}

main().catch((err) => finish({ $error: String((err && err.stack) || err) }, 1));
