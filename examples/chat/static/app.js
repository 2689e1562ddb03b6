// The chat page: one phoenix.js Socket, one channel for the room you are in.
// All user-provided text is rendered with textContent, never as HTML.
import {Socket} from "/js/phoenix.mjs";

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
};

const NAME_KEY = "trio-channels-chat:name";
const timeFormat = new Intl.DateTimeFormat([], {hour: "2-digit", minute: "2-digit"});

// -- state --------------------------------------------------------------------------------

const socket = new Socket("/socket");   // resolves against location.host
let channel = null;                     // the phoenix Channel of the current room
let pending = null;                     // a join in progress (to another room or name)
let current = null;                     // {user, room} of the current channel
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
      seen = new Set();
      ui.messages.replaceChildren();
      ui.roomTitle.textContent = `#${room}`;
      document.title = `#${room} · trio-channels chat`;
      system(`Joined #${room} as ${user}.`, "ok");
      setChannelState("joined");
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
