// The arena page: one phoenix.js Socket, one channel for the arena you play in. The server
// runs the game; this page sends the direction you hold and draws the states it receives
// (20 a second), interpolating between the last two so the dots move smoothly.
// All user-provided text is drawn with textContent or fillText, never as HTML.
import {Socket} from "/js/phoenix.mjs";

const $ = (id) => document.getElementById(id);
const ui = {
  joinForm: $("join-form"),
  name: $("name"),
  arena: $("arena"),
  status: $("status"),
  board: $("board"),
  hud: $("hud"),
  notice: $("notice"),
  scores: $("scores"),
};
const ctx = ui.board.getContext("2d");

const NAME_KEY = "trio-channels-arena:name";
const KEYS = {
  ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right",
  w: "up", s: "down", a: "left", d: "right", W: "up", S: "down", A: "left", D: "right",
};
const LOG_SIZE = 400;

// -- state ----------------------------------------------------------------------------------

const socket = new Socket("/socket");   // resolves against location.host
let channel = null;      // the phoenix Channel of the arena
let joined = null;       // the last join reply: {id, name, arena, node, tick_rate, world, state}
let current = null;      // the latest state and when it arrived
let previous = null;     // the one before (to interpolate from)
let lastSeen = 0;        // when the latest state arrived (performance.now())
const held = new Set();  // directions held down
let sent = {dx: 0, dy: 0};

// Read-only view for debugging (and the browser tests): the join reply, the latest state and
// the last LOG_SIZE states received ({tick, epoch, node, players: [{id, x, y, dx, dy, score}],
// join}); `join` is true for the state of a join reply (the state of that tick plus the new
// player), false for a tick broadcast.
const log = [];
window.arena = {
  get you() { return joined && joined.id; },
  get joined() { return joined; },
  get state() { return current; },
  log,
};

// -- connection and channel -----------------------------------------------------------------

function setConnection(state, label) {
  document.body.dataset.connection = state;
  ui.status.dataset.state = state;
  ui.status.textContent = label;
}

function setChannel(state) {
  document.body.dataset.channel = state;
}

function notice(text) {
  ui.notice.hidden = !text;
  ui.notice.textContent = text || "";
}

let everConnected = false;
socket.onOpen(() => {
  everConnected = true;
  setConnection("online", "connected");
});
function onDisconnect() {
  setConnection(everConnected ? "reconnecting" : "offline",
                everConnected ? "reconnecting…" : "offline");
}
socket.onError(onDisconnect);
socket.onClose(onDisconnect);

function receive(state, fromJoin = false) {
  if (!state || !Array.isArray(state.players)) return;
  previous = current;
  current = state;
  lastSeen = performance.now();
  log.push({
    tick: state.tick, epoch: state.epoch, node: state.node,
    players: state.players.map(({id, x, y, dx, dy, score}) => ({id, x, y, dx, dy, score})),
    join: fromJoin,
  });
  if (log.length > LOG_SIZE) log.splice(0, log.length - LOG_SIZE);
  renderScores();
  renderHud();
}

function join(name, arena) {
  if (channel) channel.leave();
  joined = null;
  current = previous = null;
  log.length = 0;
  renderScores();
  notice("");
  const ch = channel = socket.channel(`game:${arena}`, {name});
  setChannel("joining");
  ch.on("tick", (state) => { if (ch === channel) receive(state); });
  // A dropped connection errors the channel; phoenix.js rejoins it when the socket is back.
  ch.onError(() => { if (ch === channel) setChannel("joining"); });
  // Every successful (re)join is a new player on the server: its id comes with the reply.
  ch.join()
    .receive("ok", (reply) => {
      if (ch !== channel) return;
      joined = reply;
      sent = {dx: 0, dy: 0};
      previous = null;
      current = null;
      receive(reply.state, true);
      setChannel("joined");
      notice("");
      try { localStorage.setItem(NAME_KEY, name); } catch { /* storage may be disabled */ }
      history.replaceState(null, "", `#${arena}`);
      ui.board.focus();
      sendInput();  // keys held while (re)joining
    })
    .receive("error", (resp) => {
      if (ch !== channel) return;
      const reason = (resp && resp.reason) || "refused";
      if (resp && resp.retry) {
        notice(`Cannot join yet: ${reason}`);  // phoenix.js retries the join
        return;
      }
      ch.leave();  // without it, phoenix.js would keep retrying a join the server refused
      channel = null;
      setChannel("none");
      notice(`Could not join: ${reason}`);
    })
    .receive("timeout", () => {
      if (ch === channel) notice("Joining is taking a while. Retrying…");
    });
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  const arena = ui.arena.value.trim().replace(/^#/, "").toLowerCase();
  ui.arena.value = arena;
  join(name, arena);
});

// -- input ------------------------------------------------------------------------------------

function direction() {
  return {
    dx: (held.has("right") ? 1 : 0) - (held.has("left") ? 1 : 0),
    dy: (held.has("down") ? 1 : 0) - (held.has("up") ? 1 : 0),
  };
}

// Push the held direction when it differs from the last one sent.
function sendInput() {
  if (!channel || document.body.dataset.channel !== "joined") return;
  const dir = direction();
  if (dir.dx === sent.dx && dir.dy === sent.dy) return;
  sent = dir;
  channel.push("input", dir)
    .receive("error", (resp) => notice(`Input refused: ${(resp && resp.reason) || "error"}`));
}

const typing = (event) => event.target instanceof HTMLInputElement;
window.addEventListener("keydown", (event) => {
  const dir = KEYS[event.key];
  if (!dir || typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  event.preventDefault();  // no scrolling with the arrow keys
  held.add(dir);
  sendInput();
});
window.addEventListener("keyup", (event) => {
  const dir = KEYS[event.key];
  if (!dir) return;
  held.delete(dir);
  sendInput();
});
window.addEventListener("blur", () => {
  held.clear();
  sendInput();
});

// -- drawing ----------------------------------------------------------------------------------

function renderHud() {
  if (!current || !joined) {
    ui.hud.textContent = joined ? "Waiting for the arena…" :
      "Pick a name and press Play. Arrow keys or WASD move; eat the pellets.";
    return;
  }
  ui.hud.textContent = `#${joined.arena} · tick ${current.tick} · arena on ${current.node}` +
    ` · you are connected to ${joined.node}`;
}

function renderScores() {
  const players = current ? [...current.players] : [];
  players.sort((a, b) => b.score - a.score || a.name.localeCompare(b.name) ||
                         (a.id < b.id ? -1 : 1));
  ui.scores.replaceChildren(...players.map((p) => {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    if (joined && p.id === joined.id) li.classList.add("me");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = p.color;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.name;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = String(p.score);
    li.append(swatch, name, score);
    return li;
  }));
}

function draw(now) {
  requestAnimationFrame(draw);
  const {width, height} = ui.board;
  ctx.clearRect(0, 0, width, height);
  if (!current || !joined) return;
  const world = joined.world;
  const scale = Math.min(width / world.width, height / world.height);
  // grid
  ctx.strokeStyle = "#161b26";
  ctx.lineWidth = 1;
  for (let x = 0; x <= world.width; x += 4) {
    ctx.beginPath(); ctx.moveTo(x * scale, 0); ctx.lineTo(x * scale, height); ctx.stroke();
  }
  for (let y = 0; y <= world.height; y += 4) {
    ctx.beginPath(); ctx.moveTo(0, y * scale); ctx.lineTo(width, y * scale); ctx.stroke();
  }
  // pellets
  for (const [x, y, points] of current.pellets) {
    ctx.fillStyle = points > 1 ? "#facc15" : "#94a3b8";
    ctx.beginPath();
    ctx.arc(x * scale, y * scale, (points > 1 ? 0.55 : 0.4) * scale, 0, 2 * Math.PI);
    ctx.fill();
  }
  // players, between the previous state and the latest one
  const tickMs = 1000 / (joined.tick_rate || 20);
  const t = Math.min(1, (now - lastSeen) / tickMs);
  const before = new Map((previous ? previous.players : []).map((p) => [p.id, p]));
  ctx.textAlign = "center";
  ctx.font = `${Math.round(0.9 * scale)}px system-ui, sans-serif`;
  for (const p of current.players) {
    const q = before.get(p.id) || p;
    const x = (q.x + (p.x - q.x) * t) * scale;
    const y = (q.y + (p.y - q.y) * t) * scale;
    ctx.fillStyle = p.color;
    ctx.beginPath();
    ctx.arc(x, y, p.r * scale, 0, 2 * Math.PI);
    ctx.fill();
    if (p.id === joined.id) {
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.stroke();
    }
    ctx.fillStyle = "#e7e9ee";
    ctx.fillText(p.name, x, y - (p.r + 0.4) * scale);
  }
}

// -- start ------------------------------------------------------------------------------------

try { ui.name.value = localStorage.getItem(NAME_KEY) || ""; } catch { /* no storage */ }
if (location.hash.length > 1) ui.arena.value = decodeURIComponent(location.hash.slice(1));
ui.name.focus();
setChannel("none");
setConnection("connecting", "connecting…");
socket.connect();
requestAnimationFrame(draw);
