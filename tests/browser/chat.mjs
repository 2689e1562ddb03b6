// Two people chat through the example app in headless Chromium (Debian's, never a download),
// and the "who is online" sidebar follows them: a second person, a second tab of a name, and
// pages that close. Then the room's history: a page whose connection drops gets what was said
// meanwhile once, in order; a reload shows the recent messages once; after a server restart
// (the history was in its memory) the pages say messages may be missing and show what came
// after.
//
// Usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH
//
// The test that runs this restarts the server when asked: the script writes {"ask": "restart"}
// on stdout and reads one JSON answer line on stdin ({"restarted": true}, same port).
// Its last stdout line is the result ({"ok": true, ...} or {"ok": false, "error": ...}); exit 0
// on success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  asker, disconnect, join, launch, listOf, onlineOf, openPage, reconnect, recoveriesOf, say,
  startRun, waitForMessage, waitForNotice, waitForOnline,
} from "./chat_page.mjs";

const [baseURL, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(75_000);
result.online = {};
result.recoveries = {};
result.disconnects = [];
// A restarted server takes a few seconds to start, and a page up to 2 s more to reconnect.
const RESTART_MS = 25_000;
const {ask, close: closeAsker} = asker();

if (!baseURL || !screenshotPath) {
  result.error = "usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH";
  finish(1);
}

const open = (browser, label) => openPage(browser, baseURL, label, result.problems,
                                          result.disconnects);
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
  result.recoveries.bob_first_join = await recoveriesOf(bob);

  step("bob's connection drops; what alice says meanwhile reaches him once, in order");
  await disconnect(bob);
  const missed = ["While you were away 1", "While you were away 2", "While you were away 3"];
  for (const body of missed) {
    await say(alice, body);
    await waitForMessage(alice, "Alice", body);
  }
  await reconnect(bob);
  await waitForMessage(bob, "Alice", missed[2]);
  await say(alice, "And live again");
  await waitForMessage(bob, "Alice", "And live again");
  result.bob_after_blip = await listOf(bob);
  result.recoveries.bob_after_blip = await recoveriesOf(bob);

  step("bob reloads the page: the room's recent messages, once");
  await bob.reload();
  await bob.waitForSelector('body[data-connection="online"]');
  await join(bob, "Bob");
  await waitForMessage(bob, "Alice", "And live again");
  result.bob_after_reload = await listOf(bob);
  result.recoveries.bob_after_reload = await recoveriesOf(bob);

  step("the server restarts while bob is away; alice's page comes back by itself");
  await disconnect(bob);
  await ask("restart");
  // Its rejoin cannot recover (the history was in the old process's memory): a notice, then
  // a join for the recent messages (there are none yet).
  await waitForNotice(alice, "may be missing", RESTART_MS);
  await alice.waitForSelector('body[data-connection="online"][data-channel="joined"]',
                              {timeout: RESTART_MS});
  await say(alice, "After the restart");
  await waitForMessage(alice, "Alice", "After the restart");

  step("bob comes back after the restart: a notice, then what was said since, once");
  await reconnect(bob);
  await waitForMessage(bob, "Alice", "After the restart");
  await say(bob, "Back after the restart");
  await waitForMessage(alice, "Bob", "Back after the restart");
  await waitForMessage(bob, "Bob", "Back after the restart");
  result.alice_after_restart = await listOf(alice);
  result.bob_after_restart = await listOf(bob);
  result.recoveries.alice_after_restart = await recoveriesOf(alice);
  result.recoveries.bob_after_restart = await recoveriesOf(bob);

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
closeAsker();

try {
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5_000))]);
} catch { /* closing is best effort */ }
finish(result.ok ? 0 : 1);
