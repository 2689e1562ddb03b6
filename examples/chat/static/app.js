// The chat page: one phoenix.js Socket, one channel for the room you are in, and a phoenix.js
// Presence on that channel for the "who is online" sidebar.
// All user-provided text is rendered with textContent, never as HTML.
//
// Messages come from the room's history, kept by the server (trio-channels' History), through
// recoverable() from /trio-channels/history.js: joining a room shows its last RECENT messages;
// after a reconnect, phoenix.js rejoins from the position of the last message seen and the
// server replays what was missed, once and in order, before the live ones. When that is not
// possible (away too long, or the history was lost), the page keeps what it shows, says that
// messages may be missing, and joins again for the recent ones it does not have yet.
import {Presence, Socket} from "/js/phoenix.mjs";
import {recoverable} from "/trio-channels/history.js";

const $ = (id) => document.getElementById(id);
const ui = {
  joinForm: $("join-form"),
  name: $("name"),
  room: $("room"),
  join: $("join"),
  status: $("status"),
  roomTitle: $("room-title"),
  messages: $("messages"),
  sendForm: $("send-form"),
  message: $("message"),
  send: $("send"),
  sidebar: document.querySelector(".sidebar"),
  onlineTitle: $("online-title"),
  online: $("online"),
  onlineEmpty: $("online-empty"),
};

const NAME_KEY = "trio-channels-chat:name";
// Messages a first join shows (the server keeps the last 100 of each room).
const RECENT = 50;
// Why a rejoin could not get what was missed, in words (phx_recovery.reason).
const REASONS = {
  "epoch changed": "the room's history was reset",
  "position older than the history": "you were away too long",
  "history unavailable": "the history is unavailable",
};
const timeFormat = new Intl.DateTimeFormat([], {hour: "2-digit", minute: "2-digit"});

// -- state --------------------------------------------------------------------------------

// Resolves against location.host. Behind a proxy that blocks WebSockets, phoenix.js falls
// back to LongPoll (/socket/longpoll) when the WebSocket fails or has not opened within 2.5 s,
// as Phoenix's generated apps do, and remembers that for the tab (sessionStorage).
const socket = new Socket("/socket", {longPollFallbackMs: 2500});
let channel = null;                     // the phoenix Channel of the current room
let pending = null;                     // a join in progress (to another room or name)
let joins = 0;                          // joinRoom calls so far (a later one supersedes)
let current = null;                     // {user, room} of the current channel
let presence = null;                    // the phoenix.js Presence of the current channel
let seen = new Set();                   // ids of the messages shown for the current room
let everConnected = false;
let connectionLost = false;

// For the console and the browser tests: the socket, and the phx_recovery of every join reply.
window.chat = {socket, recoveries: []};

// -- rendering ----------------------------------------------------------------------------

function nearBottom() {
  const el = ui.messages;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 48;
}

function append(li) {
  const stick = nearBottom();
  ui.messages.append(li);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function system(text, kind = "info") {
  const li = document.createElement("li");
  li.className = `system ${kind}`;
  li.textContent = text;
  append(li);
}

function addMessage(msg) {
  if (!msg || typeof msg.body !== "string" || seen.has(msg.id)) return;
  seen.add(msg.id);
  const li = document.createElement("li");
  li.className = "msg";
  if (current && msg.user === current.user) li.classList.add("mine");
  li.dataset.id = msg.id;

  const time = document.createElement("time");
  time.className = "time";
  const at = new Date(msg.at);
  time.dateTime = at.toISOString();
  time.title = at.toLocaleString();
  time.textContent = timeFormat.format(at);

  const user = document.createElement("span");
  user.className = "user";
  user.textContent = msg.user;

  const body = document.createElement("span");
  body.className = "body";
  body.textContent = msg.body;

  li.append(time, user, body);
  append(li);
}

// -- who is online ------------------------------------------------------------------------

// The server tracks one presence per tab (channel) under the display name, so a name open in
// several tabs is one entry whose `metas` has one element per tab (each with its node).
function renderOnline() {
  if (!presence || !current) return;
  if (presence.inPendingSyncState()) {  // joined; the server's list is on its way
    ui.onlineTitle.textContent = `Online in #${current.room}`;
    ui.online.replaceChildren();
    ui.onlineEmpty.hidden = true;
    ui.sidebar.dataset.state = "stale";
    return;
  }
  const people = presence.list((name, {metas}) => ({name, metas}))
    .sort((a, b) => a.name.localeCompare(b.name) || (a.name < b.name ? -1 : 1));
  const allNodes = new Set(people.flatMap(({metas}) => metas.map((m) => String(m.node))));
  ui.onlineTitle.textContent = `Online in #${current.room} (${people.length})`;
  ui.online.replaceChildren(...people.map(({name, metas}) => {
    const li = document.createElement("li");
    li.className = "person";
    li.dataset.tabs = String(metas.length);
    const nameEl = document.createElement("span");
    nameEl.className = "name";
    nameEl.textContent = name;
    li.append(nameEl);
    if (metas.length > 1) {
      const tabs = document.createElement("span");
      tabs.className = "tabs";
      tabs.textContent = `×${metas.length}`;
      tabs.title = `${metas.length} tabs`;
      li.append(tabs);
    }
    if (name === current.user) {
      li.classList.add("me");
      const you = document.createElement("span");
      you.className = "you";
      you.textContent = "you";
      li.append(you);
    }
    const nodes = [...new Set(metas.map((m) => String(m.node)))].sort();
    const since = Math.min(...metas.map((m) => Number(m.online_at)).filter(Number.isFinite));
    li.title = (Number.isFinite(since) ? `online since ${timeFormat.format(new Date(since))}, ` : "") +
      `on node ${nodes.join(", ")}`;
    if (allNodes.size > 1) {  // in a cluster, say which node(s) each person is connected to
      const where = document.createElement("span");
      where.className = "nodes";
      where.textContent = nodes.join(", ");
      li.append(where);
    }
    return li;
  }));
  ui.onlineEmpty.hidden = true;
  ui.sidebar.dataset.state = document.body.dataset.channel === "joined" ? "live" : "stale";
}

function clearOnline() {
  presence = null;
  ui.onlineTitle.textContent = "Online";
  ui.online.replaceChildren();
  ui.onlineEmpty.hidden = false;
  ui.sidebar.dataset.state = "none";
}

function setConnection(state, label) {
  document.body.dataset.connection = state;
  ui.status.dataset.state = state;
  ui.status.textContent = label;
}

function setChannelState(state) {
  document.body.dataset.channel = state;
  const joined = state === "joined";
  ui.message.disabled = !joined;
  ui.send.disabled = !joined;
  ui.message.placeholder = joined ? `Message #${current.room}` :
    state === "joining" ? "Joining…" : "Join a room to chat";
  // While (re)joining, the list may be out of date: the server sends it again after the join.
  if (ui.sidebar.dataset.state !== "none") {
    ui.sidebar.dataset.state = joined && presence && !presence.inPendingSyncState() ? "live" : "stale";
  }
}

// -- the socket ---------------------------------------------------------------------------

socket.onOpen(() => {
  if (connectionLost) system("Reconnected.");
  everConnected = true;
  connectionLost = false;
  setConnection("online", "connected");
});

function onDisconnect() {
  if (!connectionLost) {
    connectionLost = true;
    system(everConnected ? "Connection lost. Reconnecting…" : "Cannot reach the server. Retrying…",
           "error");
  }
  setConnection(everConnected ? "reconnecting" : "offline",
                everConnected ? "reconnecting…" : "offline");
}
socket.onError(onDisconnect);
socket.onClose(onDisconnect);

// -- the room channel ---------------------------------------------------------------------

const why = (reason) => REASONS[reason] || reason;

// Leave `ch`, then call `then` once the server has answered the leave (or after 5 s, e.g. if
// the connection is down). Until that answer, broadcasts for the old join may still arrive,
// and phoenix.js would hand them to a new channel of the same topic: its Presence would count
// the old join's presence_diff (and miss the diff of its leave). phoenix.js settles leave()
// at once, so the answer is watched on the socket.
function leaveThen(ch, then) {
  const push = ch.leave();
  let done = false;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.off([listener]);
    then();
  };
  const listener = socket.onMessage(({event, ref}) => {
    if (event === "phx_reply" && ref === push.ref) finish();
  });
  const timer = setTimeout(finish, 5000);
}

// Join `room` as `user`. The current room (if any) stays until the new join succeeds, so a
// refused join leaves you where you were. `reload`: the same room again, after a rejoin that
// could not recover what was missed: the messages shown stay, the recent ones are added.
function joinRoom(user, room, reload = false) {
  const seq = ++joins;
  const topic = `room:${room}`;
  // The same room again (a new name, or a reload) while in it or joining it: a socket joins
  // a topic once, so leave first, and join again once the server has answered the leave.
  const old = [channel, pending].find((c) => c && c.topic === topic);
  if (pending && pending !== old) pending.leave();
  pending = null;
  if (old) {
    if (old === channel) {
      channel = null;
      current = null;
    }
    if (!channel) setChannelState("joining");
    leaveThen(old, () => { if (seq === joins) joinRoom(user, room, reload); });
    return;
  }
  // A first join asks for the last RECENT messages; phoenix.js rejoins (after a reconnect)
  // with the position of the last message seen, and gets what was missed.
  let live = false;  // joined, and not errored since
  const ch = recoverable(socket, topic, {user}, {
    initial: RECENT,
    // Join replies are handled below (their phx_recovery); this is the other case: a live
    // message from a new stream (the history was lost while joined, e.g. Redis restarted
    // empty), so some messages may never have arrived. What is shown stays in order.
    onRecovery(info) {
      if (live && active() && !info.recovered) {
        system(`Some messages may be missing (${why(info.reason)}).`, "error");
      }
    },
  });
  // Created before join() so that it sees the presence_state that follows the join reply.
  const chPresence = new Presence(ch);
  pending = ch;
  let joinedBefore = false;
  const active = () => ch === channel;
  if (!channel) setChannelState("joining");
  if (!reload) system(user ? `Joining #${room} as ${user}…` : `Joining #${room}…`);

  // Replayed messages (recent or missed) and live ones alike.
  ch.on("new_msg", (msg) => {
    if (active()) addMessage(msg);
  });
  chPresence.onSync(() => {
    if (active()) renderOnline();
  });
  // A dropped connection errors the channel; phoenix.js rejoins it when the socket is back.
  ch.onError(() => {
    live = false;
    if (active()) setChannelState("joining");
  });

  ch.join()
    .receive("ok", (resp) => {
      const recovery = (resp && resp.phx_recovery) || null;
      if (joinedBefore) {  // a rejoin after a reconnect
        if (!active()) return;
        window.chat.recoveries.push(recovery);
        if (recovery && !recovery.recovered) {
          // What was missed cannot be replayed: this channel's messages stop here (a live one
          // shown now would come before older missed ones), and a new join gets the recent.
          system(`Rejoined #${room}. Messages sent while you were away may be missing ` +
                 `(${why(recovery.reason)}); the latest follow.`, "error");
          joinRoom(user, room, true);
          return;
        }
        live = true;
        system(`Rejoined #${room}.`, "ok");
        setChannelState("joined");
        return;
      }
      if (pending !== ch) return;  // superseded by a later join
      window.chat.recoveries.push(recovery);
      joinedBefore = true;
      live = true;
      pending = null;
      if (channel) channel.leave();
      channel = ch;
      current = {user, room};
      presence = chPresence;
      if (!reload) {
        seen = new Set();
        ui.messages.replaceChildren();
        system(`Joined #${room} as ${user}.`, "ok");
      }
      if (recovery && recovery.reason) {
        system(`Recent messages could not be loaded (${why(recovery.reason)}).`, "error");
      }
      ui.roomTitle.textContent = `#${room}`;
      document.title = `#${room} · trio-channels chat`;
      setChannelState("joined");
      renderOnline();
      try { localStorage.setItem(NAME_KEY, user); } catch { /* storage may be disabled */ }
      history.replaceState(null, "", `#${room}`);
      if (document.activeElement === document.body || document.activeElement === ui.join) {
        ui.message.focus();
      }
    })
    .receive("error", (resp) => {
      const reason = (resp && resp.reason) || "refused";
      if (pending === ch) {
        pending = null;
      } else if (!active()) {
        return;
      }
      // Without leave(), phoenix.js would keep retrying a join the server refused.
      ch.leave();
      system(`Could not join #${room}: ${reason}`, "error");
      if (active() || !channel) {  // a refused rejoin, or nothing to stay in
        channel = null;
        current = null;
        ui.roomTitle.textContent = "Not in a room";
        clearOnline();
      }
      setChannelState(channel ? "joined" : "none");
    })
    .receive("timeout", () => {
      if (active() || pending === ch) {
        system(`Joining #${room} is taking a while. Retrying…`, "error");
      }
    });
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const user = ui.name.value.trim();
  const room = ui.room.value.trim().replace(/^#/, "").toLowerCase();
  ui.room.value = room;
  if (channel && current && current.user === user && current.room === room) {
    ui.message.focus();
    return;
  }
  if (pending && pending.topic === `room:${room}` && pending.params().user === user) return;
  joinRoom(user, room);
});

ui.sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const body = ui.message.value.trim();
  if (!body || !channel || document.body.dataset.channel !== "joined") return;
  ui.message.value = "";
  const restore = () => { if (!ui.message.value) ui.message.value = body; };
  channel.push("new_msg", {body})
    .receive("error", (resp) => {
      system(`Not sent: ${(resp && resp.reason) || "refused"}`, "error");
      restore();
    })
    .receive("timeout", () => {
      system("Not sent: the server did not answer in time.", "error");
      restore();
    });
});

// -- start --------------------------------------------------------------------------------

try { ui.name.value = localStorage.getItem(NAME_KEY) || ""; } catch { /* no storage */ }
if (location.hash.length > 1) ui.room.value = decodeURIComponent(location.hash.slice(1));
(ui.name.value ? ui.join : ui.name).focus();
setChannelState("none");
setConnection("connecting", "connecting…");
socket.connect();
