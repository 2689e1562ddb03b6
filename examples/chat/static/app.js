// The chat page: one phoenix.js Socket, one channel for the room you are in, and a phoenix.js
// Presence on that channel for the "who is online" sidebar.
// All user-provided text is rendered with textContent, never as HTML.
import {Presence, Socket} from "/js/phoenix.mjs";

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
const timeFormat = new Intl.DateTimeFormat([], {hour: "2-digit", minute: "2-digit"});

// -- state --------------------------------------------------------------------------------

const socket = new Socket("/socket");   // resolves against location.host
let channel = null;                     // the phoenix Channel of the current room
let pending = null;                     // a join in progress (to another room or name)
let current = null;                     // {user, room} of the current channel
let presence = null;                    // the phoenix.js Presence of the current channel
let seen = new Set();                   // ids of the messages shown for the current room
let everConnected = false;
let connectionLost = false;

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

// Join `room` as `user`. The current room (if any) stays until the new join succeeds, so a
// refused join leaves you where you were.
function joinRoom(user, room) {
  if (pending) pending.leave();
  const topic = `room:${room}`;
  const ch = socket.channel(topic, {user});
  // Created before join() so that it sees the presence_state that follows the join reply.
  const chPresence = new Presence(ch);
  pending = ch;
  let joinedBefore = false;
  const active = () => ch === channel;
  if (channel && channel.topic === topic) {
    // Same room, new name: phoenix.js leaves the old channel of a topic it joins again.
    channel = null;
    current = null;
  }
  if (!channel) setChannelState("joining");
  system(user ? `Joining #${room} as ${user}…` : `Joining #${room}…`);

  ch.on("history", ({messages}) => {
    if (active()) for (const msg of messages || []) addMessage(msg);
  });
  ch.on("new_msg", (msg) => {
    if (active()) addMessage(msg);
  });
  chPresence.onSync(() => {
    if (active()) renderOnline();
  });
  // A dropped connection errors the channel; phoenix.js rejoins it when the socket is back.
  ch.onError(() => {
    if (active()) setChannelState("joining");
  });

  ch.join()
    .receive("ok", () => {
      if (joinedBefore) {
        if (active()) {
          system(`Rejoined #${room}.`, "ok");
          setChannelState("joined");
        }
        return;
      }
      if (pending !== ch) return;  // superseded by a later join
      joinedBefore = true;
      pending = null;
      if (channel) channel.leave();
      channel = ch;
      current = {user, room};
      presence = chPresence;
      seen = new Set();
      ui.messages.replaceChildren();
      ui.roomTitle.textContent = `#${room}`;
      document.title = `#${room} · trio-channels chat`;
      system(`Joined #${room} as ${user}.`, "ok");
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
