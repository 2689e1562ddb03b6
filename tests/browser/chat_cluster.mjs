// Two chat nodes sharing one Redis, one browser page on each, in headless Chromium: messages and
// the "who is online" list cross nodes, a fresh page on either node shows the messages sent
// before it was opened (the history is one Redis stream per room), and a page on node b whose
// connection dropped gets what was said on node a meanwhile, once, in order.
//
// Usage: node tests/browser/chat_cluster.mjs URL_NODE_A URL_NODE_B SCREENSHOT_PATH
// (the nodes are named chat-a and chat-b).
//
// Prints one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}) and exits 0 on
// success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  disconnect, join, launch, listOf, openPage, reconnect, recoveriesOf, say, startRun,
  waitForMessage, waitForOnline,
} from "./chat_page.mjs";

const [urlA, urlB, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(120_000);
result.online = {};
result.recoveries = {};
// Presence crosses nodes with the tracker's heartbeats (every 1.5 s by default), and two nodes
// that just started first have to find each other: allow more than a local step.
const CROSS_MS = 20_000;

if (!urlA || !urlB || !screenshotPath) {
  result.error = "usage: node tests/browser/chat_cluster.mjs URL_NODE_A URL_NODE_B SCREENSHOT_PATH";
  finish(1);
}

const person = (name, me, nodes) => ({name, tabs: 1, me, nodes});

let browser;
try {
  step("launch");
  browser = await launch();

  step("ada joins on node a, bea on node b");
  const ada = await openPage(browser, urlA, "ada", result.problems);
  await join(ada, "Ada");
  const bea = await openPage(browser, urlB, "bea", result.problems);
  await join(bea, "Bea");

  step("each page lists both, with their nodes");
  result.online.ada = await waitForOnline(ada, "Online in #lobby (2)",
    [person("Ada", true, "chat-a"), person("Bea", false, "chat-b")], CROSS_MS);
  result.online.bea = await waitForOnline(bea, "Online in #lobby (2)",
    [person("Ada", false, "chat-a"), person("Bea", true, "chat-b")], CROSS_MS);

  step("a message typed on node a appears on node b");
  const fromA = "Hello from node a <i>not italic</i>";
  await say(ada, fromA);
  await waitForMessage(bea, "Ada", fromA, CROSS_MS);
  await waitForMessage(ada, "Ada", fromA);

  step("and one typed on node b appears on node a");
  const fromB = "Hi Ada, this is node b 👋";
  await say(bea, fromB);
  await waitForMessage(ada, "Bea", fromB, CROSS_MS);
  await waitForMessage(bea, "Bea", fromB);

  step("a newcomer on either node gets both messages as the room's recent ones");
  const cy = await openPage(browser, urlB, "cy", result.problems);
  await join(cy, "Cy");
  await waitForMessage(cy, "Bea", fromB);
  const dee = await openPage(browser, urlA, "dee", result.problems);
  await join(dee, "Dee");
  await waitForMessage(dee, "Bea", fromB);
  result.cy = await listOf(cy);
  result.dee = await listOf(dee);
  result.online.ada_with_four = await waitForOnline(ada, "Online in #lobby (4)", [
    person("Ada", true, "chat-a"), person("Bea", false, "chat-b"),
    person("Cy", false, "chat-b"), person("Dee", false, "chat-a"),
  ], CROSS_MS);

  step("bea's connection drops; what ada says on node a meanwhile reaches her once, in order");
  await disconnect(bea);
  const missed = ["Bea, are you there? (1)", "Bea, are you there? (2)"];
  for (const body of missed) {
    await say(ada, body);
    await waitForMessage(ada, "Ada", body);
  }
  await reconnect(bea, CROSS_MS);
  await waitForMessage(bea, "Ada", missed[1], CROSS_MS);
  await say(ada, "Welcome back");
  await waitForMessage(bea, "Ada", "Welcome back", CROSS_MS);
  await say(bea, "Back on node b");
  await waitForMessage(ada, "Bea", "Back on node b", CROSS_MS);
  await waitForMessage(bea, "Bea", "Back on node b");
  result.bea = await listOf(bea);
  result.recoveries.bea = await recoveriesOf(bea);

  step("a page opened now on node a has it all, as one on node b");
  const eve = await openPage(browser, urlA, "eve", result.problems);
  await join(eve, "Eve");
  await waitForMessage(eve, "Bea", "Back on node b");
  const fay = await openPage(browser, urlB, "fay", result.problems);
  await join(fay, "Fay");
  await waitForMessage(fay, "Bea", "Back on node b");
  result.eve = await listOf(eve);
  result.fay = await listOf(fay);
  await eve.context().close();
  await fay.context().close();

  step("screenshot");
  await ada.screenshot({path: screenshotPath});

  step("bea closes her page on node b and leaves ada's list on node a");
  await bea.context().close();
  result.online.ada_after_bea_left = await waitForOnline(ada, "Online in #lobby (3)", [
    person("Ada", true, "chat-a"), person("Cy", false, "chat-b"), person("Dee", false, "chat-a"),
  ], CROSS_MS);

  result.ada = await listOf(ada);
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
