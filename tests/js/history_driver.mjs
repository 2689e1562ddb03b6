// A scriptable phoenix.js client process for the history tests: clients join through the
// history helper served at /trio-channels/history.js (imported here from the repo path:
// channels/static/history.js, an ES module with no imports).
//
//     node tests/js/history_driver.mjs
//
// One JSON command per line on stdin, one JSON event per line on stdout. Commands ("id" is
// the client's name; a client has one Socket and one recoverable channel at a time):
//   {"op":"connect","id":"a","url":"ws://127.0.0.1:4000/socket","params":{...}}
//   {"op":"rjoin","id":"a","topic":"feed:x","params":{...},"options":{"initial":N,"position":{...}}}
//   {"op":"push","id":"a","event":"e","payload":{...},"tag":"t1"}
//   {"op":"publish","id":"p","first":1,"count":300,"interval_ms":10}
//        // pushes "publish" {n} for n = first.., each after the previous reply (or timeout)
//   {"op":"blip","id":"a"}            // the connection dies abruptly (phoenix.js reconnects)
//   {"op":"move","id":"a","url":"ws://.../socket","delay_ms":0}
//        // the app gives up this socket (its channel stops counting), and (delay_ms later)
//        // opens a new Socket to url, joining the same topic from the old channel's position()
//   {"op":"position","id":"a","tag":"t"}   // -> {"ev":"position","position":...}
//   {"op":"disconnect","id":"a"}
//   {"op":"exit"}
// Events (with "id" and "gen", the client's Socket generation): open, close(code),
// join_ok(resp) / join_error(resp) / join_timeout, recovery(info) (every onRecovery call),
// msg(n, pos) (every "msg" broadcast the app saw), reply(tag, status, resp),
// published(n, status), publish_done, left_socket(position), moved(position), position,
// blipped, chan_error.
// A watchdog (DRIVER_WATCHDOG_MS, default 120 s) ends the process on its own.

import { Socket } from "phoenix";
import WebSocket from "ws";
import readline from "node:readline";
import { recoverable } from "../../channels/static/history.js";

const WATCHDOG_MS = Number(process.env.DRIVER_WATCHDOG_MS || 120000);
setTimeout(() => {
  emit({ ev: "watchdog" });
  process.exit(3);
}, WATCHDOG_MS).unref();

const clients = new Map();

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function openSocket(id, url, params, opts) {
  const prev = clients.get(id);
  const gen = prev ? prev.gen + 1 : 1;
  const socket = new Socket(url, {
    transport: WebSocket,
    params: params || {},
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
    heartbeatIntervalMs: 1000,
    ...(opts || {}),
  });
  const client = { id, gen, url, params, opts, socket, channel: null, topic: null,
                   joinParams: {}, options: {}, dead: false };
  clients.set(id, client);
  socket.onOpen(() => emit({ id, gen, ev: "open" }));
  socket.onClose((e) => emit({ id, gen, ev: "close", code: e && e.code }));
  socket.connect();
  return client;
}

function joinRecoverable(client, topic, params, options) {
  const { id, gen } = client;
  client.topic = topic;
  client.joinParams = params || {};
  client.options = options || {};
  const channel = recoverable(client.socket, topic, client.joinParams, {
    ...client.options,
    onRecovery(info) {
      if (!client.dead) emit({ id, gen, ev: "recovery", info });
    },
  });
  client.channel = channel;
  channel.on("msg", (payload) => {
    if (!client.dead) emit({ id, gen, ev: "msg", n: payload.n, pos: payload.phx_pos || null });
  });
  channel.onError((reason) => {
    if (!client.dead) emit({ id, gen, ev: "chan_error", reason: String(reason) });
  });
  channel
    .join()
    .receive("ok", (resp) => emit({ id, gen, ev: "join_ok", resp }))
    .receive("error", (resp) => emit({ id, gen, ev: "join_error", resp }))
    .receive("timeout", () => emit({ id, gen, ev: "join_timeout" }));
}

function client(id) {
  const c = clients.get(id);
  if (!c) throw new Error(`no client ${id}`);
  return c;
}

const handlers = {
  connect({ id, url, params, opts }) {
    openSocket(id, url, params, opts);
  },

  rjoin({ id, topic, params, options }) {
    joinRecoverable(client(id), topic, params, options);
  },

  push({ id, event, payload, tag }) {
    const { channel, gen } = client(id);
    channel
      .push(event, payload || {})
      .receive("ok", (resp) => emit({ id, gen, ev: "reply", tag, status: "ok", resp }))
      .receive("error", (resp) => emit({ id, gen, ev: "reply", tag, status: "error", resp }))
      .receive("timeout", () => emit({ id, gen, ev: "reply", tag, status: "timeout" }));
  },

  publish({ id, first, count, interval_ms }) {
    const c = client(id);
    let n = first;
    const last = first + count - 1;
    const next = () => {
      if (n > last) {
        emit({ id, ev: "publish_done" });
        return;
      }
      const current = n++;
      c.channel
        .push("publish", { n: current }, 10000)
        .receive("ok", () => { emit({ id, ev: "published", n: current, status: "ok" });
                               setTimeout(next, interval_ms); })
        .receive("error", (resp) => { emit({ id, ev: "published", n: current, status: "error", resp });
                                      setTimeout(next, interval_ms); })
        .receive("timeout", () => { emit({ id, ev: "published", n: current, status: "timeout" });
                                    setTimeout(next, interval_ms); });
    };
    next();
  },

  blip({ id }) {
    const c = client(id);
    const conn = c.socket.conn;
    if (conn && typeof conn.terminate === "function") conn.terminate();
    emit({ id, gen: c.gen, ev: "blipped", had_conn: !!conn });
  },

  move({ id, url, delay_ms }) {
    const old = client(id);
    let position;
    if (old.pending) {
      // Still away (a delayed move): come back now, from where it left.
      clearTimeout(old.pending.timer);
      position = old.pending.position;
    } else {
      // The app stops listening to the old channel first, then reads its position: every
      // message it counted is before that position, none after.
      old.dead = true;
      position = old.channel ? old.channel.position() : null;
      old.socket.disconnect(() => {}, 1000, "moving");
      emit({ id, gen: old.gen, ev: "left_socket", position });
    }
    old.pending = { position };
    old.pending.timer = setTimeout(() => {
      old.pending = null;
      const c = openSocket(id, url, old.params, old.opts);
      emit({ id, gen: c.gen, ev: "moved", url, position });
      joinRecoverable(c, old.topic, old.joinParams,
                      { ...old.options, ...(position ? { position } : {}) });
    }, delay_ms || 0);
  },

  position({ id, tag }) {
    const c = client(id);
    emit({ id, gen: c.gen, ev: "position", tag, position: c.channel ? c.channel.position() : null });
  },

  disconnect({ id }) {
    const c = client(id);
    c.dead = true;
    c.socket.disconnect(() => emit({ id, gen: c.gen, ev: "disconnected" }), 1000, "bye");
  },

  exit() {
    for (const { socket } of clients.values()) socket.disconnect();
    setTimeout(() => process.exit(0), 50);
  },
};

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
    handlers[cmd.op](cmd);
  } catch (err) {
    emit({ ev: "driver_error", error: String((err && err.stack) || err), line });
  }
});
rl.on("close", () => process.exit(0));
emit({ ev: "driver_ready" });
