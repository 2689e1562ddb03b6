// Two players in one arena of the example game, in headless Chromium (Debian's, never a
// download), on one node: each sees the other, a key held on one page moves that player on the
// other page, the server's ticks count up, and a page that closes leaves the arena.
//
// Usage: node tests/browser/game.mjs BASE_URL SCREENSHOT_PATH
//
// Prints one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}) and exits 0 on
// success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  joinArena, launch, logOf, moveAndWatch, openPage, scoreboardOf, startRun, viewOf,
  waitForState,
} from "./game_page.mjs";

const [baseURL, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(60_000);
const ARENA = "browser-test";

if (!baseURL || !screenshotPath) {
  result.error = "usage: node tests/browser/game.mjs BASE_URL SCREENSHOT_PATH";
  finish(1);
}

const open = (browser, label) => openPage(browser, baseURL, label, result.problems);
const names = (s) => s.players.map((p) => p.name).sort();

let browser;
try {
  step("launch");
  browser = await launch();

  step("alice and bob join the same arena");
  const alice = await open(browser, "alice");
  result.aliceJoin = await joinArena(alice, "Alice", ARENA);
  const bob = await open(browser, "bob");
  result.bobJoin = await joinArena(bob, "Bob", ARENA);

  step("each sees both players");
  const both = (s) => s.players.map((p) => p.name).sort().join() === "Alice,Bob";
  result.aliceSees = names(await waitForState(alice, both, null, undefined, "both on alice's page"));
  result.bobSees = names(await waitForState(bob, both, null, undefined, "both on bob's page"));
  await alice.waitForFunction(() => document.querySelectorAll("#scores li").length === 2);
  result.aliceScoreboard = (await scoreboardOf(alice)).sort((a, b) => a.name.localeCompare(b.name));
  result.hud = await alice.textContent("#hud");

  step("the server's ticks count up");
  const t0 = (await viewOf(alice)).tick;
  await waitForState(alice, (s, _you, t0) => s.tick >= t0 + 20, t0, undefined, "20 more ticks");
  result.ticks = {start: t0, later: (await viewOf(alice)).tick};

  step("bob holds an arrow key: alice sees bob move, then stop");
  result.bobMoves = await moveAndWatch(bob, alice);

  step("alice holds an arrow key: bob sees alice move, then stop");
  result.aliceMoves = await moveAndWatch(alice, bob);

  step("both pages received the same states for the same ticks");
  const [logA, logB] = [await logOf(alice), await logOf(bob)];
  const byTick = new Map(logB.map((e) => [e.tick, JSON.stringify(e.players)]));
  const common = logA.filter((e) => byTick.has(e.tick));
  result.aliceLogTicks = logA.map((e) => e.tick);
  result.commonTicks = common.length;
  result.differing = common.filter((e) => byTick.get(e.tick) !== JSON.stringify(e.players))
    .map((e) => e.tick);

  step("screenshot");
  await alice.screenshot({path: screenshotPath});

  step("bob closes his page and leaves alice's arena");
  await bob.context().close();
  result.aliceAlone = names(await waitForState(alice,
    (s) => s.players.length === 1 && s.players[0].name === "Alice", null, undefined,
    "alice alone"));

  step("a blank name is refused");
  const carol = await open(browser, "carol");
  await carol.fill("#name", "   ");
  await carol.fill("#arena", ARENA);
  await carol.click("#join");
  await carol.waitForFunction(() => !document.getElementById("notice").hidden);
  result.carolNotice = await carol.textContent("#notice");
  result.carolChannel = await carol.evaluate(() => document.body.dataset.channel);

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
