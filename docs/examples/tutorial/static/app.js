// The tutorial's page (docs/tutorial.md): the official phoenix.js client, its Presence, and
// the history helper every trio-channels endpoint serves. User text is set with textContent.
import {Presence, Socket} from "/js/phoenix.mjs";
import {recoverable} from "/trio-channels/history.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const board = query.get("board") || "lobby";
$("board").textContent = board;

// 1. Connect with the token the server gave us (a 403 makes phoenix.js retry; we say so).
const socket = new Socket("/socket", {params: {token: query.get("token")}});
socket.onOpen(() => { document.body.dataset.connection = "online"; });
socket.onError(() => { document.body.dataset.connection = "offline"; });
socket.connect();

// 2. Join the board through recoverable(): a first join replays the board so far, a rejoin
//    after a reconnect replays what was missed, once and in order.
const channel = recoverable(socket, `qa:${board}`, {}, {
  initial: 500,
  onRecovery(info) {
    if (!info.recovered && info.reason) {
      $("notice").textContent = `Some updates may be missing (${info.reason}): reload the page.`;
    }
  },
});

// 3. Render questions and votes as they come.
const counts = new Map();                   // question id -> votes
function setCount(id, count) {
  counts.set(id, count);
  const cell = document.querySelector(`li[data-id="${CSS.escape(id)}"] .count`);
  if (cell) cell.textContent = count;
}
channel.on("question", ({id, user, text}) => {
  if (document.querySelector(`li[data-id="${CSS.escape(id)}"]`)) return;
  const li = document.createElement("li");
  li.dataset.id = id;
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = counts.get(id) || 0;
  const vote = document.createElement("button");
  vote.textContent = "▲";
  vote.title = "Upvote";
  vote.onclick = () => channel.push("vote", {id});
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  const by = document.createElement("span");
  by.className = "user";
  by.textContent = `— ${user}`;
  li.append(count, vote, body, by);
  $("questions").append(li);
});
channel.on("votes", ({question, count}) => setCount(question, count));

// 4. Who is here: phoenix.js Presence does the bookkeeping.
const presence = new Presence(channel);
presence.onSync(() => {
  const people = presence.list((user) => user);
  $("online").textContent = `Online: ${people.join(", ") || "nobody yet"}`;
});

channel.join()
  .receive("ok", ({user, votes}) => {
    document.body.dataset.user = user;
    for (const [id, count] of Object.entries(votes)) setCount(id, count);
  })
  .receive("error", ({reason}) => { $("notice").textContent = `Cannot join: ${reason}`; });

// 5. Ask.
$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  channel.push("ask", {text})
    .receive("ok", () => { $("text").value = ""; })
    .receive("error", ({reason}) => { $("notice").textContent = reason; });
});

window.qa = {socket, channel, presence};  // for the console (and the tests)
