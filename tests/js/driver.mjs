// A scriptable phoenix.js client process for multi-client and multi-node tests.
//
//     node tests/js/driver.mjs
//
// Reads one JSON command per line on stdin and writes one JSON event per line on stdout.
// Commands (all carry "id", the client's name):
//   {"op":"connect","id":"a","url":"ws://127.0.0.1:4000/socket","params":{...}}
//       (+ "transport":"longpoll" for phoenix.js's LongPoll instead of the `ws` WebSocket)
//   {"op":"join","id":"a","topic":"room:x","params":{...}}   // also tracks phoenix.js Presence
//   {"op":"push","id":"a","topic":"room:x","event":"e","payload":{...},"tag":"t1"}
//   {"op":"list","id":"a","topic":"room:x","tag":"t2"}       // -> {"ev":"list","list":{key:[refs]}}
//   {"op":"leave","id":"a","topic":"room:x"}
//   {"op":"disconnect","id":"a"}                              // a clean close (a closed tab)
//   {"op":"exit"}
// Events: open, close(code), join_ok/join_error/join_timeout, reply, message(event,payload),
// chan_error, chan_close, presence_sync(list), presence_join/leave(key, refs), list.
// Presence lists are reported as {key: [phx_ref, ...]} sorted, so tests can compare exactly.
// A watchdog (DRIVER_WATCHDOG_MS, default 60 s) ends the process on its own.

import { LongPoll, Presence, Socket } from "phoenix";
import WebSocket from "ws";
import readline from "node:readline";

const WATCHDOG_MS = Number(process.env.DRIVER_WATCHDOG_MS || 60000);
setTimeout(() => {
  emit({ ev: "watchdog" });
  process.exit(3);
}, WATCHDOG_MS).unref();

const clients = new Map();

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function presenceList(presence) {
  const out = {};
  presence.list((key, { metas }) => {
    out[key] = metas.map((m) => m.phx_ref).sort();
  });
  return out;
}

function metasList(presence) {
  const out = {};
  presence.list((key, { metas }) => {
    out[key] = metas.map((m) => ({ ...m }));
  });
  return out;
}

const handlers = {
  connect({ id, url, params, opts, transport }) {
    const socket = new Socket(url, {
      transport: transport === "longpoll" ? LongPoll : WebSocket,
      params: params || {},
      reconnectAfterMs: () => 50,
      rejoinAfterMs: () => 50,
      heartbeatIntervalMs: 1000,
      ...(opts || {}),
    });
    const client = { socket, channels: new Map() };
    clients.set(id, client);
    socket.onOpen(() => emit({ id, ev: "open" }));
    socket.onClose((e) => emit({ id, ev: "close", code: e && e.code }));
    socket.connect();
  },

  join({ id, topic, params }) {
    const client = clients.get(id);
    const channel = client.socket.channel(topic, params || {});
    const presence = new Presence(channel);
    client.channels.set(topic, { channel, presence });
    presence.onJoin((key, current, newPres) =>
      emit({ id, topic, ev: "presence_join", key, refs: newPres.metas.map((m) => m.phx_ref) }));
    presence.onLeave((key, current, leftPres) =>
      emit({ id, topic, ev: "presence_leave", key, refs: leftPres.metas.map((m) => m.phx_ref) }));
    presence.onSync(() =>
      emit({ id, topic, ev: "presence_sync", list: presenceList(presence), metas: metasList(presence) }));
    channel.onError((reason) => emit({ id, topic, ev: "chan_error", reason }));
    channel.onClose(() => emit({ id, topic, ev: "chan_close" }));
    channel.onMessage = (event, payload, ref) => {
      if (!event.startsWith("phx_") && !event.startsWith("chan_reply") &&
          event !== "presence_diff" && event !== "presence_state") {
        emit({ id, topic, ev: "message", event, payload });
      }
      return payload;
    };
    channel
      .join()
      .receive("ok", (resp) => emit({ id, topic, ev: "join_ok", resp, join_ref: channel.joinRef() }))
      .receive("error", (resp) => emit({ id, topic, ev: "join_error", resp }))
      .receive("timeout", () => emit({ id, topic, ev: "join_timeout" }));
  },

  push({ id, topic, event, payload, tag }) {
    const { channel } = clients.get(id).channels.get(topic);
    channel
      .push(event, payload || {})
      .receive("ok", (resp) => emit({ id, topic, ev: "reply", tag, status: "ok", resp }))
      .receive("error", (resp) => emit({ id, topic, ev: "reply", tag, status: "error", resp }))
      .receive("timeout", () => emit({ id, topic, ev: "reply", tag, status: "timeout" }));
  },

  list({ id, topic, tag }) {
    const { presence } = clients.get(id).channels.get(topic);
    emit({ id, topic, ev: "list", tag, list: presenceList(presence), metas: metasList(presence) });
  },

  leave({ id, topic }) {
    const { channel } = clients.get(id).channels.get(topic);
    channel.leave().receive("ok", () => emit({ id, topic, ev: "left" }));
  },

  disconnect({ id }) {
    const client = clients.get(id);
    client.socket.disconnect(() => emit({ id, ev: "disconnected" }), 1000, "bye");
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
    emit({ ev: "driver_error", error: String(err && err.stack || err), line });
  }
});
rl.on("close", () => process.exit(0));
emit({ ev: "driver_ready" });
