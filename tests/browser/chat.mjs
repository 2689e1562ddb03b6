// Two people chat through the example app in headless Chromium (Debian's, never a download),
// and the "who is online" sidebar follows them: a second person, a second tab of a name, and
// pages that close.
//
// Usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH
//
// Prints one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}) and exits 0 on
// success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  join, launch, listOf, onlineOf, openPage, say, startRun, waitForMessage, waitForOnline,
} from "./chat_page.mjs";

const [baseURL, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(30_000);
result.online = {};

if (!baseURL || !screenshotPath) {
  result.error = "usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH";
  finish(1);
}

const open = (browser, label) => openPage(browser, baseURL, label, result.problems);
// A sidebar entry on a single node: no node names are shown.
const person = (name, tabs, me) => ({name, tabs, me, nodes: null});

let browser;
try {
  step("launch");
  browser = await launch();

  step("alice joins");
  const alice = await open(browser, "alice");
  const before = await onlineOf(alice);
  if (before.title !== "Online" || before.people.length || before.state !== "none") {
    throw new Error(`before joining, the online list is ${JSON.stringify(before)}`);
  }
  await join(alice, "Alice");
  result.online.alice_alone = await waitForOnline(alice, "Online in #lobby (1)",
    [person("Alice", 1, true)]);

  step("alice speaks before bob arrives");
  await say(alice, "Is anyone here?");
  await waitForMessage(alice, "Alice", "Is anyone here?");

  step("bob joins and gets the history");
  const bob = await open(browser, "bob");
  await join(bob, "Bob");
  await waitForMessage(bob, "Alice", "Is anyone here?");
  await bob.waitForFunction(() => [...document.querySelectorAll("#messages li.system")]
    .some((li) => li.textContent === "Joined #lobby as Bob."));

  step("each sees the other online");
  result.online.alice_with_bob = await waitForOnline(alice, "Online in #lobby (2)",
    [person("Alice", 1, true), person("Bob", 1, false)]);
  result.online.bob_with_alice = await waitForOnline(bob, "Online in #lobby (2)",
    [person("Alice", 1, false), person("Bob", 1, true)]);

  step("alice types, presses Enter; both see it");
  const hello = "Hello Bob! <b>not bold</b> & <img src=x onerror=alert(1)>";
  await say(alice, hello);
  await waitForMessage(bob, "Alice", hello);
  await waitForMessage(alice, "Alice", hello);
  if (await alice.inputValue("#message") !== "") throw new Error("the input was not cleared");
  const injected = await bob.$$eval("#messages b, #messages img", (els) => els.length);
  if (injected) throw new Error("message text was rendered as HTML");

  step("bob answers");
  await say(bob, "Hi Alice 👋");
  await waitForMessage(alice, "Bob", "Hi Alice 👋");
  await waitForMessage(bob, "Bob", "Hi Alice 👋");

  step("a second tab of Alice shows once, with a tab count");
  const alice2 = await open(browser, "alice2");
  await join(alice2, "Alice");
  result.online.bob_sees_two_alice_tabs = await waitForOnline(bob, "Online in #lobby (2)",
    [person("Alice", 2, false), person("Bob", 1, true)]);
  await waitForOnline(alice2, "Online in #lobby (2)",
    [person("Alice", 2, true), person("Bob", 1, false)]);
  const badge = await bob.textContent("#online li.person:first-child .tabs");
  if (badge !== "×2") throw new Error(`the tab count reads ${JSON.stringify(badge)}, not "×2"`);

  step("closing that tab leaves one Alice");
  await alice2.context().close();
  result.online.bob_after_tab_closed = await waitForOnline(bob, "Online in #lobby (2)",
    [person("Alice", 1, false), person("Bob", 1, true)]);

  step("a blank name is refused with a reason");
  const carol = await open(browser, "carol");
  await carol.fill("#name", "   ");
  await carol.click("#join");
  await carol.waitForFunction(() => [...document.querySelectorAll("#messages li.system.error")]
    .some((li) => li.textContent.includes("a display name is required")));
  if (await carol.getAttribute("body", "data-channel") !== "none") {
    throw new Error("a refused join left the page in a joined state");
  }

  step("a refused join is not online");
  result.online.carol = await onlineOf(carol);
  result.online.alice_after_carol = await waitForOnline(alice, "Online in #lobby (2)",
    [person("Alice", 1, true), person("Bob", 1, false)]);

  step("screenshot");
  await bob.screenshot({path: screenshotPath});

  result.alice = await listOf(alice);
  result.bob = await listOf(bob);
  result.carol = await listOf(carol);

  step("bob closes his page and leaves alice's list");
  await bob.context().close();
  result.online.alice_after_bob_left = await waitForOnline(alice, "Online in #lobby (1)",
    [person("Alice", 1, true)]);

  if (result.problems.length) throw new Error("the pages reported problems");
  step("done");
  result.ok = true;
} catch (err) {
  result.error = `${result.step}: ${err && err.message ? err.message : err}`;
}

try {
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5_000))]);
} catch { /* closing is best effort */ }
finish(result.ok ? 0 : 1);
