// trio-channels history: rejoin a channel from the last position it saw, on top of the
// official phoenix.js client (unchanged). Served by every trio-channels endpoint at
// /trio-channels/history.js; an ES module with no dependencies, usable without npm.
//
//   import {Socket} from "/js/phoenix.mjs";
//   import {recoverable} from "/trio-channels/history.js";
//
//   const socket = new Socket("/socket", {params: {user: "ada"}});
//   socket.connect();
//   const channel = recoverable(socket, "room:lobby", {user: "ada"}, {
//     onRecovery(info) { if (!info.recovered) reloadEverything(); },
//   });
//   channel.on("new_msg", (msg) => show(msg));   // missed ones arrive first, once, in order
//   channel.join();
//
// Broadcasts on a topic with history carry `phx_pos: {offset, epoch}` in their payload. This
// module remembers the newest one per channel and sends it as `phx_pos` in the join params
// (phoenix.js evaluates params given as a function on every join and rejoin), so after a
// network blip, a server restart or a move to another node the server replays what was
// missed before going live. The join reply's `phx_recovery` says whether that worked
// (`recovered`), and `onRecovery(info)` is called with it after every join; also when a
// live broadcast shows the stream's epoch changed while the channel stayed joined (then
// `info.reason` is "epoch changed" and `info.offset` is just before that broadcast).
//
// Options: `initial` (N): on a first join (no position yet), replay the newest N stored
// broadcasts (e.g. a chat's recent messages); `position` ({offset, epoch}) to start from;
// `storage` (e.g. window.sessionStorage) to save and restore the position under
// `storageKey` (default "phx_pos:" + topic); `onRecovery(info)`.

export function recoverable(socket, topic, params = {}, options = {}) {
  const storage = options.storage || null;
  const storageKey = options.storageKey || `phx_pos:${topic}`;
  let last = options.position || load(storage, storageKey);

  const joinParams = () => {
    const base = typeof params === "function" ? params() : params;
    if (last) return {...base, phx_pos: last};
    // A first join: ask for the newest `initial` entries, if the app wants the recent past.
    return options.initial ? {...base, phx_pos: {last: options.initial}} : {...base};
  };
  const channel = socket.channel(topic, joinParams);

  const remember = (pos) => {
    last = {offset: pos.offset, epoch: pos.epoch};
    if (storage) {
      try { storage.setItem(storageKey, JSON.stringify(last)); } catch (_) { /* full */ }
    }
  };

  const report = (info) => {
    if (options.onRecovery) {
      try { options.onRecovery(info); } catch (err) { console.error(err); }
    }
  };

  const previous = channel.onMessage.bind(channel);
  channel.onMessage = (event, payload, ref, joinRef) => {
    if (payload && typeof payload === "object") {
      const pos = payload.phx_pos;
      if (isPosition(pos) && (!last || pos.epoch !== last.epoch || pos.offset > last.offset)) {
        const lost = last && last.epoch && pos.epoch !== last.epoch;
        remember(pos);
        if (lost) {
          // The stream was lost while this channel stayed joined (Redis restarted empty,
          // broadcasts that could not be stored): what came in between cannot be recovered.
          report({recovered: false, epoch: pos.epoch, offset: pos.offset - 1, replayed: 0,
                  reason: "epoch changed"});
        }
      }
      const info = event === "phx_reply" && payload.response && payload.response.phx_recovery;
      if (info && typeof info === "object" && typeof info.epoch === "string") {
        if (!info.recovered && info.epoch) {
          // Nothing to replay (a first join, or too far behind): go on from the stream's end.
          // (No epoch: the history was unavailable; keep the position we have and retry it.)
          remember({offset: info.offset, epoch: info.epoch});
        }
        report(info);
      }
    }
    return previous(event, payload, ref, joinRef);
  };

  channel.position = () => (last ? {...last} : null);
  return channel;
}

function isPosition(pos) {
  return pos && typeof pos === "object" && typeof pos.epoch === "string" &&
    Number.isInteger(pos.offset);
}

function load(storage, key) {
  if (!storage) return null;
  try {
    const pos = JSON.parse(storage.getItem(key) || "null");
    return isPosition(pos) ? pos : null;
  } catch (_) {
    return null;
  }
}
