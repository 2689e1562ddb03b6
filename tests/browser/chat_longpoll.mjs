// The chat example in headless Chromium when WebSockets are blocked: the page's phoenix.js
// Socket has longPollFallbackMs (as Phoenix's generated apps), so a page behind a proxy that
// refuses WebSocket upgrades, or one that never answers them, falls back to LongPoll and
// chats with a page on a WebSocket; a page whose WebSocket works stays on it; a reloaded page
// goes straight to LongPoll (phoenix.js remembers the fallback in sessionStorage).
//
// Usage: node tests/browser/chat_longpoll.mjs DIRECT_URL REFUSING_PROXY_URL HANGING_PROXY_URL
//
// Its last stdout line is the result ({"ok": true, ...} or {"ok": false, "error": ...}); exit 0
// on success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  join, launch, listOf, openPage, say, startRun, waitForMessage, waitForOnline,
} from "./chat_page.mjs";

const [directURL, refusingURL, hangingURL] = process.argv.slice(2);
const {result, finish, step} = startRun(75_000);
result.transports = {};
result.disconnects = [];
const person = (name, tabs, me) => ({name, tabs, me, nodes: null});

// What the page's socket uses now, and what phoenix.js remembered for the tab.
const transportOf = (page) => page.evaluate(() => ({
  transport: window.chat.socket.transportName(window.chat.socket.transport),
  connected: window.chat.socket.isConnected(),
  remembered: sessionStorage.getItem("phx:fallback:LongPoll"),
}));

const open = async (browser, url, label) => {
  const page = await openPage(browser, url, label, result.problems, result.disconnects);
  // longpoll requests: method and path, to show what the page used
  page.requests = [];
  page.on("request", (req) => {
    const u = new URL(req.url());
    if (u.pathname.startsWith("/socket/")) page.requests.push(`${req.method()} ${u.pathname}`);
  });
  return page;
};

let browser;
try {
  if (!directURL || !refusingURL || !hangingURL) throw new Error("usage: DIRECT REFUSING HANGING");
  step("launch");
  browser = await launch();

  step("alice connects directly: WebSocket");
  const alice = await open(browser, directURL, "alice");
  await join(alice, "Alice");
  await waitForOnline(alice, "Online in #lobby (1)", [person("Alice", 1, true)]);
  // past the fallback window and the health check it is still on its WebSocket
  await alice.waitForTimeout(3_000);
  result.transports.alice = await transportOf(alice);

  step("bob behind a proxy that refuses WebSockets: LongPoll");
  const bob = await open(browser, refusingURL, "bob");
  result.transports.bob = await transportOf(bob);
  await join(bob, "Bob");
  result.online_bob = await waitForOnline(bob, "Online in #lobby (2)",
    [person("Alice", 1, false), person("Bob", 1, true)]);
  result.online_alice = await waitForOnline(alice, "Online in #lobby (2)",
    [person("Alice", 1, true), person("Bob", 1, false)]);

  step("they chat");
  await say(alice, "Hi Bob, I am on a WebSocket");
  await waitForMessage(bob, "Alice", "Hi Bob, I am on a WebSocket");
  await say(bob, "Hi Alice, I am on LongPoll 👋");
  await waitForMessage(alice, "Bob", "Hi Alice, I am on LongPoll 👋");
  for (let i = 1; i <= 5; i++) await say(bob, `burst ${i}`);
  await waitForMessage(alice, "Bob", "burst 5");
  await waitForMessage(bob, "Bob", "burst 5");

  step("carol behind a proxy that never answers WebSocket upgrades: LongPoll after 2.5 s");
  const started = Date.now();
  const carol = await open(browser, hangingURL, "carol");
  result.carol_online_after_ms = Date.now() - started;
  result.transports.carol = await transportOf(carol);
  await join(carol, "Carol");
  await waitForMessage(carol, "Bob", "burst 5");  // the room's recent messages
  await say(carol, "Carol here, also on LongPoll");
  await waitForMessage(alice, "Carol", "Carol here, also on LongPoll");
  await waitForMessage(bob, "Carol", "Carol here, also on LongPoll");

  step("bob reloads: straight to LongPoll");
  bob.requests.length = 0;
  await bob.reload();
  await bob.waitForSelector('body[data-connection="online"]');
  result.transports.bob_reloaded = await transportOf(bob);
  await join(bob, "Bob");
  await waitForMessage(bob, "Carol", "Carol here, also on LongPoll");
  await say(bob, "Back after a reload");
  result.bob_requests_after_reload = [...new Set(bob.requests)].sort();
  await waitForMessage(alice, "Bob", "Back after a reload");
  await waitForMessage(carol, "Bob", "Back after a reload");
  await waitForMessage(bob, "Bob", "Back after a reload");

  result.alice = await listOf(alice);
  result.bob = await listOf(bob);
  result.carol = await listOf(carol);
  result.ok = true;
  await browser.close();
  finish(0);
} catch (err) {
  result.error = String(err && err.stack || err);
  try { await browser?.close(); } catch { /* ignore */ }
  finish(1);
}
