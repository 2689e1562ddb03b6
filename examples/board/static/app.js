// The board page: one phoenix.js Socket, one channel for the open board, a BoardSync that keeps
// the board in step with the room's versions, and a phoenix.js Presence for who is here and
// which card each of them is editing. Changes are shown when the server has made them (the
// board room is the single writer); nothing is applied ahead of it.
// All user-provided text is rendered with textContent, never as HTML.
import {Presence, Socket} from "/js/phoenix.mjs";
import {BoardSync} from "/board_model.js";

const $ = (id) => document.getElementById(id);
const ui = {
  joinForm: $("join-form"),
  name: $("name"),
  boardId: $("board-id"),
  join: $("join"),
  status: $("status"),
  sidebar: document.querySelector(".sidebar"),
  peopleTitle: $("people-title"),
  people: $("people"),
  peopleEmpty: $("people-empty"),
  title: $("board-title"),
  info: $("board-info"),
  notice: $("notice"),
  board: $("board"),
};

const NAME_KEY = "trio-channels-board:name";
const DEFAULT_BOARD = "main";
const MAX_TEXT = 500;
const MAX_TRIES = 6;  // sends of one op (the same opid: the board applies it at most once)

// -- state --------------------------------------------------------------------------------

const socket = new Socket("/socket", {
  // Come back quickly after a node restarts (phoenix.js's default backs off to 5 s).
  reconnectAfterMs: (tries) => [10, 50, 100, 250, 500, 1000][tries - 1] || 2000,
  rejoinAfterMs: (tries) => [500, 1000, 2000][tries - 1] || 4000,
});
let channel = null;      // the phoenix Channel of the open board
let current = null;      // {user, boardId}
let presence = null;     // its phoenix.js Presence
let sync = null;         // its BoardSync
let editing = null;      // {id, textarea}: the card this tab is editing
let rendering = false;   // moving elements around blurs them: not the user leaving a field
let dragging = null;     // the id of the card being dragged
let pendingOps = 0;
let everConnected = false;
let connectionLost = false;
let noticeTimer = null;
const cardEls = new Map();    // card id -> <li>
const columnEls = new Map();  // column id -> {section, list, count}

// -- small helpers --------------------------------------------------------------------------

function newOpid() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function notice(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  ui.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { ui.notice.hidden = true; }, 8000);
}

function findCard(id) {
  const board = sync && sync.board;
  if (!board) return null;
  for (const col of board.columns) {
    const i = col.cards.findIndex((card) => card.id === id);
    if (i >= 0) return {card: col.cards[i], column: col, index: i};
  }
  return null;
}

function setPending(delta) {
  pendingOps += delta;
  document.body.dataset.pending = String(pendingOps);
}

// -- rendering the board --------------------------------------------------------------------

function button(action, label, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `card-btn ${action}`;
  b.dataset.action = action;
  b.textContent = label;
  b.title = title;
  b.setAttribute("aria-label", title);
  return b;
}

function makeCard(id) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.id = id;
  li.draggable = true;
  const text = document.createElement("p");
  text.className = "card-text";
  text.title = "Click to edit";
  const editors = document.createElement("p");
  editors.className = "card-editors";
  editors.hidden = true;
  const actions = document.createElement("div");
  actions.className = "card-actions";
  actions.append(
    button("left", "←", "Move to the previous column"),
    button("up", "↑", "Move up"),
    button("down", "↓", "Move down"),
    button("right", "→", "Move to the next column"),
    button("edit", "✎", "Edit"),
    button("delete", "✕", "Delete"),
  );
  li.append(text, editors, actions);
  return li;
}

function makeColumn(col) {
  const section = document.createElement("section");
  section.className = "column";
  section.dataset.column = col.id;
  const head = document.createElement("h3");
  const title = document.createElement("span");
  title.className = "column-title";
  title.textContent = col.title;
  const count = document.createElement("span");
  count.className = "count";
  head.append(title, count);
  const list = document.createElement("ol");
  list.className = "cards";
  const form = document.createElement("form");
  form.className = "add-card";
  form.autocomplete = "off";
  const input = document.createElement("input");
  input.className = "add-input";
  input.maxLength = MAX_TEXT;
  input.placeholder = "Add a card…";
  input.setAttribute("aria-label", `New card in ${col.title}`);
  const add = document.createElement("button");
  add.type = "submit";
  add.textContent = "Add";
  form.append(input, add);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    sendOp({type: "add", column: col.id, text});
  });
  section.append(head, list, form);
  return {section, list, count};
}

function ensureColumns(columns) {
  const ids = columns.map((c) => c.id).join(" ");
  if ([...columnEls.keys()].join(" ") === ids) return;
  columnEls.clear();
  cardEls.clear();
  for (const col of columns) columnEls.set(col.id, makeColumn(col));
  ui.board.replaceChildren(...[...columnEls.values()].map((c) => c.section));
}

// Puts every card element where the board says, moving as few elements as possible (a moved
// element loses focus: the card being edited gets it back afterwards). Card elements are kept
// per id, so an edit in progress survives changes to other cards.
function render() {
  const board = sync && sync.board;
  if (!board) return;
  rendering = true;
  try {
    ensureColumns(board.columns);
    const seen = new Set();
    for (const col of board.columns) {
      const {list, count} = columnEls.get(col.id);
      count.textContent = String(col.cards.length);
      // First out: cards no longer in this column (so the others need not move).
      const here = new Set(col.cards.map((card) => card.id));
      for (const li of [...list.children]) if (!here.has(li.dataset.id)) li.remove();
      col.cards.forEach((card, i) => {
        seen.add(card.id);
        let li = cardEls.get(card.id);
        if (!li) {
          li = makeCard(card.id);
          cardEls.set(card.id, li);
        }
        const text = li.querySelector(".card-text");
        if (text.textContent !== card.text) text.textContent = card.text;
        if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
      });
    }
    for (const [id, li] of cardEls) {
      if (seen.has(id)) continue;
      cardEls.delete(id);
      li.remove();
      if (editing && editing.id === id) {
        editing = null;
        pushEditing(null);
        notice("The card you were editing was deleted.", "error");
      }
    }
    if (editing && document.activeElement !== editing.textarea) editing.textarea.focus();
  } finally {
    rendering = false;
  }
  ui.board.dataset.version = String(board.version);
  ui.board.dataset.uid = board.uid;
  ui.info.textContent = `version ${board.version}` + (board.node ? ` · room on node ${board.node}` : "");
  renderPeople();  // the sidebar names the cards being edited by their text
}

function clearBoard() {
  columnEls.clear();
  cardEls.clear();
  ui.board.replaceChildren();
  ui.board.dataset.version = "";
  ui.board.dataset.uid = "";
  ui.info.textContent = "";
}

// -- presence: who is here, who edits what --------------------------------------------------

function people() {
  if (!presence) return [];
  return presence.list((name, {metas}) => ({name, metas}))
    .sort((a, b) => a.name.localeCompare(b.name) || (a.name < b.name ? -1 : 1));
}

function renderPeople() {
  if (!presence || !current) return;
  if (presence.inPendingSyncState()) {
    ui.sidebar.dataset.state = "stale";
    return;
  }
  const list = people();
  ui.peopleTitle.textContent = `On this board (${list.length})`;
  ui.people.replaceChildren(...list.map(({name, metas}) => {
    const li = document.createElement("li");
    li.className = "person";
    li.dataset.name = name;
    const nameEl = document.createElement("span");
    nameEl.className = "name";
    nameEl.textContent = name;
    li.append(nameEl);
    if (name === current.user) {
      li.classList.add("me");
      const you = document.createElement("span");
      you.className = "you";
      you.textContent = "you";
      li.append(you);
    }
    const nodes = [...new Set(metas.map((m) => String(m.node)))].sort();
    li.title = `connected to node ${nodes.join(", ")}`;
    const edits = [...new Set(metas.map((m) => m.editing).filter(Boolean))].sort();
    if (edits.length) {
      const ul = document.createElement("ul");
      ul.className = "edits";
      for (const id of edits) {
        const item = document.createElement("li");
        item.className = "edit";
        item.dataset.card = id;
        const found = findCard(id);
        item.textContent = `editing “${found ? found.card.text : id}”`;
        ul.append(item);
      }
      li.append(ul);
    }
    return li;
  }));
  ui.peopleEmpty.hidden = true;
  ui.sidebar.dataset.state = document.body.dataset.channel === "joined" ? "live" : "stale";
  renderEditors();
}

// The "✎ name" badge of every card someone else is editing.
function renderEditors() {
  const byCard = new Map();
  for (const {name, metas} of people()) {
    if (current && name === current.user) continue;
    for (const m of metas) {
      if (!m.editing) continue;
      if (!byCard.has(m.editing)) byCard.set(m.editing, new Set());
      byCard.get(m.editing).add(name);
    }
  }
  for (const [id, li] of cardEls) {
    const names = byCard.has(id) ? [...byCard.get(id)].sort() : [];
    const badge = li.querySelector(".card-editors");
    const text = names.length ? `✎ ${names.join(", ")}` : "";
    if (badge.textContent !== text) badge.textContent = text;
    badge.hidden = !names.length;
    li.classList.toggle("being-edited", names.length > 0);
  }
}

// -- editing a card ---------------------------------------------------------------------------

function pushEditing(id) {
  if (channel) channel.push("editing", {card: id});
}

function startEdit(id) {
  if (editing && editing.id === id) {
    editing.textarea.focus();
    return;
  }
  if (editing) finishEdit(true);
  const li = cardEls.get(id);
  const found = findCard(id);
  if (!li || !found) return;
  const textarea = document.createElement("textarea");
  textarea.className = "card-editor";
  textarea.maxLength = MAX_TEXT;
  textarea.rows = 3;
  textarea.value = found.card.text;
  textarea.setAttribute("aria-label", "Card text");
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      finishEdit(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      finishEdit(false);
    }
  });
  textarea.addEventListener("blur", () => {
    if (!rendering && editing && editing.textarea === textarea) finishEdit(true);
  });
  li.classList.add("editing");
  li.draggable = false;
  li.querySelector(".card-text").after(textarea);
  editing = {id, textarea};
  textarea.focus();
  textarea.select();
  pushEditing(id);
}

function finishEdit(save) {
  if (!editing) return;
  const {id, textarea} = editing;
  editing = null;  // first: removing the textarea blurs it
  const text = textarea.value.replace(/\r\n/g, "\n").trim();
  const li = cardEls.get(id);
  if (li) {
    li.classList.remove("editing");
    li.draggable = true;
  }
  textarea.remove();
  pushEditing(null);
  const found = findCard(id);
  if (!save || !found || text === found.card.text) return;
  if (!text) {
    notice("A card needs some text (✕ deletes it).", "error");
    return;
  }
  sendOp({type: "edit", id, text});
}

// -- sending changes --------------------------------------------------------------------------

// Ops go out one at a time, in the order they were made: the next one when the board has
// answered the previous one. An answer that says "retry" (the board was moving between nodes,
// or could not store the change) or no answer at all sends the op again with the same opid,
// which the board applies at most once.
const outbox = [];        // [{ch, sync, payload, tries}], the first one in flight
let outboxBusy = false;

function sendOp(op) {
  if (!channel) return;
  outbox.push({ch: channel, sync, payload: {...op, opid: newOpid()}, tries: 0});
  setPending(1);
  sendNext();
}

function sendNext() {
  if (outboxBusy || !outbox.length) return;
  const item = outbox[0];
  // Answers and timers of an op that is no longer first (its board was closed) do nothing.
  const current = () => outbox[0] === item;
  const done = () => {
    if (!current()) return;
    outbox.shift();
    setPending(-1);
    outboxBusy = false;
    sendNext();
  };
  const again = (delay) => setTimeout(() => {
    if (!current()) return;
    outboxBusy = false;
    sendNext();
  }, delay);
  outboxBusy = true;
  if (item.ch !== channel) {  // its board was closed
    done();
    return;
  }
  item.tries += 1;
  item.ch.push("op", item.payload)
    .receive("ok", (event) => {
      if (current()) item.sync.event(event);
      done();
    })
    .receive("error", (resp) => {
      if (!current()) return;
      if (resp && resp.retry && item.tries < MAX_TRIES) {
        again(300 * item.tries);
        return;
      }
      notice(`Not saved: ${(resp && resp.reason) || "refused"}`, "error");
      done();
    })
    .receive("timeout", () => {
      if (!current()) return;
      if (item.tries < MAX_TRIES) {
        again(0);
        return;
      }
      notice("Not saved: the server did not answer in time.", "error");
      done();
    });
}

function cardAction(action, id) {
  const found = findCard(id);
  if (!found) return;
  const columns = sync.board.columns;
  const c = columns.indexOf(found.column);
  switch (action) {
    case "edit":
      startEdit(id);
      break;
    case "delete":
      if (editing && editing.id === id) finishEdit(false);
      sendOp({type: "delete", id});
      break;
    case "left":
    case "right": {
      const to = columns[c + (action === "left" ? -1 : 1)];
      if (to) sendOp({type: "move", id, column: to.id});
      break;
    }
    case "up":
    case "down": {
      const index = found.index + (action === "up" ? -1 : 1);
      if (index >= 0 && index < found.column.cards.length) {
        sendOp({type: "move", id, column: found.column.id, index});
      }
      break;
    }
  }
}

ui.board.addEventListener("click", (event) => {
  const li = event.target.closest(".card");
  if (!li) return;
  const btn = event.target.closest("button[data-action]");
  if (btn) {
    cardAction(btn.dataset.action, li.dataset.id);
  } else if (event.target.closest(".card-text")) {
    startEdit(li.dataset.id);
  }
});

// -- drag and drop ----------------------------------------------------------------------------

function clearDropMarks() {
  for (const el of ui.board.querySelectorAll(".drop-target")) el.classList.remove("drop-target");
}

ui.board.addEventListener("dragstart", (event) => {
  const li = event.target.closest && event.target.closest(".card");
  if (!li || (editing && editing.id === li.dataset.id)) return;
  dragging = li.dataset.id;
  event.dataTransfer.setData("text/plain", dragging);
  event.dataTransfer.effectAllowed = "move";
  li.classList.add("dragging");
});

ui.board.addEventListener("dragend", () => {
  for (const el of ui.board.querySelectorAll(".dragging")) el.classList.remove("dragging");
  clearDropMarks();
  dragging = null;
});

ui.board.addEventListener("dragover", (event) => {
  const section = event.target.closest(".column");
  if (!dragging || !section) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "move";
  if (!section.classList.contains("drop-target")) {
    clearDropMarks();
    section.classList.add("drop-target");
  }
});

ui.board.addEventListener("drop", (event) => {
  const section = event.target.closest(".column");
  if (!dragging || !section) return;
  event.preventDefault();
  const id = dragging;
  // The card lands before the first other card whose middle is below the pointer.
  const others = [...section.querySelectorAll(".cards > .card")].filter((li) => li.dataset.id !== id);
  const index = others.filter((li) => {
    const r = li.getBoundingClientRect();
    return r.top + r.height / 2 < event.clientY;
  }).length;
  clearDropMarks();
  sendOp({type: "move", id, column: section.dataset.column, index});
});

// -- connection and channel state ---------------------------------------------------------------

function setConnection(state, label) {
  document.body.dataset.connection = state;
  ui.status.dataset.state = state;
  ui.status.textContent = label;
}

function setChannelState(state) {
  document.body.dataset.channel = state;
  if (ui.sidebar.dataset.state !== "none") {
    ui.sidebar.dataset.state = state === "joined" && presence && !presence.inPendingSyncState()
      ? "live" : "stale";
  }
}

socket.onOpen(() => {
  if (connectionLost) notice("Reconnected.", "ok");
  everConnected = true;
  connectionLost = false;
  setConnection("online", "connected");
});

function onDisconnect() {
  if (!connectionLost) {
    connectionLost = true;
    notice(everConnected ? "Connection lost. Reconnecting…" : "Cannot reach the server. Retrying…",
           "error");
  }
  setConnection(everConnected ? "reconnecting" : "offline",
                everConnected ? "reconnecting…" : "offline");
}
socket.onError(onDisconnect);
socket.onClose(onDisconnect);

function fetchBoard(ch) {
  return new Promise((resolve, reject) => {
    ch.push("get", {})
      .receive("ok", resolve)
      .receive("error", reject)
      .receive("timeout", reject);
  });
}

function closeBoard() {
  if (editing) finishEdit(false);
  setPending(-outbox.length);  // what was not sent yet is dropped with its board
  outbox.length = 0;
  outboxBusy = false;
  if (channel) channel.leave();
  channel = null;
  current = null;
  presence = null;
  sync = null;
  clearBoard();
  ui.title.textContent = "No board open";
  ui.peopleTitle.textContent = "On this board";
  ui.people.replaceChildren();
  ui.peopleEmpty.hidden = false;
  ui.sidebar.dataset.state = "none";
}

function openBoard(user, boardId) {
  closeBoard();
  const ch = socket.channel(`board:${boardId}`, {user});
  // Created before join() so that it sees the presence_state that follows the join.
  const chPresence = new Presence(ch);
  const chSync = new BoardSync(() => fetchBoard(ch), () => { if (ch === channel) render(); });
  channel = ch;
  current = {user, boardId};
  presence = chPresence;
  sync = chSync;
  ui.title.textContent = `Board ${boardId}`;
  ui.sidebar.dataset.state = "stale";
  setChannelState("joining");

  ch.on("op", (event) => chSync.event(event));
  ch.on("board", (board) => chSync.offer(board));
  chPresence.onSync(() => { if (ch === channel) renderPeople(); });
  // A dropped connection errors the channel; phoenix.js rejoins it when the socket is back.
  ch.onError(() => { if (ch === channel) setChannelState("joining"); });

  ch.join()
    .receive("ok", ({board}) => {
      if (ch !== channel) return;
      chSync.reset(board);  // the whole board, after a first join and after every rejoin
      setChannelState("joined");
      renderPeople();
      if (editing) pushEditing(editing.id);  // a rejoin starts with a fresh presence
      document.title = `${boardId} · trio-channels board`;
      try { localStorage.setItem(NAME_KEY, user); } catch { /* storage may be disabled */ }
      history.replaceState(null, "", `#${boardId}`);
    })
    .receive("error", (resp) => {
      if (ch !== channel) return;
      const reason = (resp && resp.reason) || "refused";
      if (resp && resp.retry) {  // phoenix.js joins again by itself
        notice(`The board is not available (${reason}). Retrying…`, "error");
        return;
      }
      closeBoard();  // leave(): phoenix.js would otherwise retry a join the server refused
      setChannelState("none");
      notice(`Could not open the board: ${reason}`, "error");
    })
    .receive("timeout", () => {
      if (ch === channel) notice("Opening the board is taking a while. Retrying…", "error");
    });
}

ui.joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const user = ui.name.value.trim();
  const boardId = ui.boardId.value.trim().replace(/^#/, "").toLowerCase();
  ui.boardId.value = boardId;
  if (channel && current && current.user === user && current.boardId === boardId) return;
  openBoard(user, boardId);
});

// -- start --------------------------------------------------------------------------------------

try { ui.name.value = localStorage.getItem(NAME_KEY) || ""; } catch { /* no storage */ }
if (location.hash.length > 1) ui.boardId.value = decodeURIComponent(location.hash.slice(1));
else ui.boardId.value = DEFAULT_BOARD;
setChannelState("none");
setConnection("connecting", "connecting…");
socket.connect();
// A returning visitor (a name is remembered) goes straight to the board.
if (ui.name.value) openBoard(ui.name.value, ui.boardId.value.toLowerCase());
else ui.name.focus();
