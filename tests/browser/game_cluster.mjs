// The example game on two nodes sharing one Redis, in headless Chromium: Ada's page on node a
// starts the arena (so it runs on node a), Bea's page on node b joins it; both see the same
// ticks. Then node a is killed (kill -9, by the test that runs this script) and the arena comes
// back on node b from its last snapshot: Bea keeps receiving ticks, her keys still move her,
// a newcomer on node b (Cy) sees her move, and Ada (whose node died) drops out of the arena.
//
// Usage: node tests/browser/game_cluster.mjs URL_NODE_A URL_NODE_B SCREENSHOT_PATH ARENA
// (the nodes are named game-a and game-b).
//
// Talks to the test over stdio: when it is time to kill node a it prints the line
// {"kill": true, ...} and waits for one line on stdin ({"killed": true, ...}) once the node is
// dead. Its last stdout line is the result ({"ok": true, ...} or {"ok": false, "error": ...});
// exits 0 on success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {createInterface} from "node:readline";

import {
  STEP_MS, joinArena, launch, logOf, moveAndWatch, openPage, startRun, viewOf, waitForState,
} from "./game_page.mjs";

const [urlA, urlB, screenshotPath, ARENA] = process.argv.slice(2);
const {result, finish, step} = startRun(110_000);
// Ticks of a room on node a reach node b through Redis, and nodes that just started may take a
// moment: allow more than a local step. The failover itself takes about 1.5 leases.
const CROSS_MS = 20_000;
const FAILOVER_MS = 40_000;

if (!urlA || !urlB || !screenshotPath || !ARENA) {
  result.error = "usage: node tests/browser/game_cluster.mjs URL_NODE_A URL_NODE_B " +
    "SCREENSHOT_PATH ARENA";
  finish(1);
}

const stdinLines = createInterface({input: process.stdin});
const nextLine = (timeout) => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no answer on stdin within ${timeout} ms`)),
                           timeout);
  stdinLines.once("line", (line) => { clearTimeout(timer); resolve(line); });
});

const names = (s) => s.players.map((p) => p.name).sort();

// For the ticks both logs have: how many, and those whose states differ.
function compareLogs(logA, logB) {
  const byTick = new Map(logB.map((e) => [`${e.epoch}:${e.tick}`, JSON.stringify(e.players)]));
  const common = logA.filter((e) => byTick.has(`${e.epoch}:${e.tick}`));
  return {
    common: common.length,
    differing: common.filter((e) => byTick.get(`${e.epoch}:${e.tick}`) !== JSON.stringify(e.players))
      .map((e) => e.tick),
  };
}

let browser;
try {
  step("launch");
  browser = await launch();

  step("ada joins on node a: the arena starts there");
  const ada = await openPage(browser, urlA, "ada", result.problems);
  result.adaJoin = await joinArena(ada, "Ada", ARENA);

  step("bea joins on node b");
  const bea = await openPage(browser, urlB, "bea", result.problems);
  result.beaJoin = await joinArena(bea, "Bea", ARENA);

  step("both see both players, from the arena on node a");
  const both = (s) => s.players.map((p) => p.name).sort().join() === "Ada,Bea";
  result.adaSees = await waitForState(ada, both, null, CROSS_MS, "both on ada's page");
  result.beaSees = await waitForState(bea, both, null, CROSS_MS, "both on bea's page");

  step("both see the same ticks");
  const t0 = (await viewOf(bea)).tick;
  await waitForState(bea, (s, _you, t0) => s.tick >= t0 + 30, t0, CROSS_MS, "30 more ticks");
  await waitForState(ada, (s, _you, t0) => s.tick >= t0 + 30, t0, CROSS_MS, "30 more ticks");
  result.sameTicks = compareLogs(await logOf(ada), await logOf(bea));

  step("bea's keys move her on ada's page (inputs cross to node a)");
  result.beaMovesBefore = await moveAndWatch(bea, ada, CROSS_MS);

  step("screenshot");
  await bea.screenshot({path: screenshotPath});

  step("node a is killed");
  result.before = await viewOf(bea);
  ada.watched = false;  // its reconnection attempts to the dead node are expected to fail
  process.stdout.write(JSON.stringify({kill: true, tick: result.before.tick}) + "\n");
  result.killed = JSON.parse(await nextLine(30_000));
  await ada.context().close();

  step("the arena comes back on node b: bea receives ticks of a new epoch");
  const oldEpoch = result.before.epoch;
  await waitForState(bea, (s, _you, e) => s.epoch > e, oldEpoch, FAILOVER_MS,
                     "a tick from the arena's new activation");
  const after = (await logOf(bea)).filter((e) => e.epoch > oldEpoch);
  result.firstAfter = {tick: after[0].tick, epoch: after[0].epoch, node: after[0].node};
  result.lastBefore = (await logOf(bea)).filter((e) => e.epoch === oldEpoch).at(-1)?.tick ?? null;
  const t1 = result.firstAfter.tick;
  await waitForState(bea, (s, _you, t1) => s.tick >= t1 + 20, t1, STEP_MS, "20 more ticks");
  result.afterTicks = (await logOf(bea)).filter((e) => e.epoch > oldEpoch).map((e) => e.tick);
  result.afterEpochs = [...new Set((await logOf(bea)).filter((e) => e.epoch > oldEpoch)
    .map((e) => `${e.epoch}@${e.node}`))];

  step("cy joins on node b after the move");
  const cy = await openPage(browser, urlB, "cy", result.problems);
  result.cyJoin = await joinArena(cy, "Cy", ARENA);
  await waitForState(cy, (s) => s.players.some((p) => p.name === "Bea"), null, STEP_MS,
                     "bea on cy's page");

  step("bea's keys still move her, as cy sees it");
  result.beaMovesAfter = await moveAndWatch(bea, cy);

  step("ada, whose node died, drops out of the arena");
  const withoutAda = (s) => s.players.map((p) => p.name).sort().join() === "Bea,Cy";
  result.beaFinal = names(await waitForState(bea, withoutAda, null, CROSS_MS, "ada dropped"));
  result.cyFinal = names(await waitForState(cy, withoutAda, null, CROSS_MS, "ada dropped"));
  result.sameTicksAfter = compareLogs(await logOf(bea), await logOf(cy));
  result.final = await viewOf(bea);

  if (result.problems.length) throw new Error("the pages reported problems");
  step("done");
  result.ok = true;
} catch (err) {
  result.error = `${result.step}: ${err && err.message ? err.message : err}`;
}

stdinLines.close();
try {
  await Promise.race([browser?.close(), new Promise((r) => setTimeout(r, 5_000))]);
} catch { /* closing is best effort */ }
finish(result.ok ? 0 : 1);
