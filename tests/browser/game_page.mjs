// Helpers shared by the game browser scripts (game.mjs, game_cluster.mjs): a script run with a
// watchdog that prints one JSON result line, Debian's Chromium, and the arena page as data
// (its read-only `window.arena`: the join reply, the latest state, the last ticks received).
// Every wait is bounded.
import {chromium} from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const STEP_MS = 10_000;

// One run of a script: `result` is printed as the last stdout line, whatever happens.
// Exit codes: 0 success, 1 failure, 3 watchdog.
export function startRun(watchdogMs) {
  const result = {ok: false, step: "start", problems: []};
  const finish = (code) => {
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(code);  // playwright kills the browser it launched on exit
  };
  setTimeout(() => {
    result.error = `watchdog: no result within ${watchdogMs} ms (last step: ${result.step})`;
    finish(3);
  }, watchdogMs).unref();
  const step = (name) => { result.step = name; };
  return {result, finish, step};
}

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: STEP_MS,
  });
}

// A page in a context of its own (its own storage and WebSocket, like another browser), with
// console errors and warnings, page errors, failed requests and HTTP errors recorded as problems
// while `page.watched` is true (a test turns it off for a page whose server it kills).
export async function openPage(browser, url, label, problems) {
  const context = await browser.newContext({viewport: {width: 1000, height: 700}});
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.watched = true;
  const problem = (text) => { if (page.watched) problems.push(`${label} ${text}`); };
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      problem(`console ${msg.type()}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (err) => problem(`page error: ${err.message}`));
  page.on("requestfailed", (req) => {
    problem(`request failed: ${req.url()} ${req.failure()?.errorText}`);
  });
  page.on("response", (resp) => {
    if (resp.status() >= 400) problem(`HTTP ${resp.status()}: ${resp.url()}`);
  });
  await page.goto(url);
  await page.waitForSelector('body[data-connection="online"]');
  return page;
}

// Join `arena` under `name` with the form, and wait for the join reply.
export async function joinArena(page, name, arena) {
  await page.fill("#name", name);
  await page.fill("#arena", arena);
  await page.click("#join");
  await page.waitForSelector('body[data-channel="joined"]');
  return page.evaluate(() => window.arena.joined);
}

// The page's view: {you, tick, epoch, node, players: [{id, name, x, y, dx, dy, score}]}.
export const viewOf = (page) => page.evaluate(() => {
  const s = window.arena.state;
  return s && {
    you: window.arena.you, tick: s.tick, epoch: s.epoch, node: s.node,
    players: s.players.map(({id, name, x, y, dx, dy, score}) => ({id, name, x, y, dx, dy, score})),
  };
});

// The tick broadcasts the page received lately (join replies left out):
// [{tick, epoch, node, players: [{id, x, y, dx, dy, score}]}].
export const logOf = (page) => page.evaluate(() => window.arena.log.filter((e) => !e.join));

// The names in the page's scoreboard, in display order, with "me" marked.
export const scoreboardOf = (page) => page.$$eval("#scores li", (lis) => lis.map((li) => ({
  name: li.querySelector(".name").textContent, me: li.classList.contains("me"),
})));

// Resolves once `predicate(state, you)` holds for the page's latest state (it runs in the page;
// `arg` is passed as its third argument), with that state.
export async function waitForState(page, predicate, arg, timeout = STEP_MS, what = "") {
  try {
    // An expression string, so the page can run `predicate` (a function cannot be passed in).
    await page.waitForFunction(
      `(() => { const s = window.arena.state; ` +
      `return !!s && (${predicate})(s, window.arena.you, ${JSON.stringify(arg ?? null)}); })()`,
      undefined, {timeout, polling: 20});
  } catch (err) {
    throw new Error(`${what || "state"} not reached; the page shows ` +
                    `${JSON.stringify(await viewOf(page))} (${err.message.split("\n")[0]})`);
  }
  return viewOf(page);
}

// Hold the arrow key that moves `page`'s own player away from the nearer side wall until
// `observer` sees that player moved by more than 2 units in that direction (and holding it),
// then release it and wait until `observer` sees it stopped. Returns what `observer` saw.
export async function moveAndWatch(page, observer, timeout = STEP_MS) {
  const me = await page.evaluate(() => {
    const s = window.arena.state;
    return s.players.find((p) => p.id === window.arena.you);
  });
  const dx = me.x < 24 ? 1 : -1;
  const key = dx === 1 ? "ArrowRight" : "ArrowLeft";
  const id = me.id;
  await page.keyboard.down(key);
  let moving;
  try {
    moving = await waitForState(observer, (s, _you, [id, x0, dx]) => {
      const p = s.players.find((q) => q.id === id);
      return !!p && p.dx === dx && (p.x - x0) * dx > 2;
    }, [id, me.x, dx], timeout, `${key} held: the player moving`);
  } finally {
    await page.keyboard.up(key);
  }
  const stopped = await waitForState(observer, (s, _you, id) => {
    const p = s.players.find((q) => q.id === id);
    return !!p && p.dx === 0 && p.dy === 0;
  }, id, timeout, `${key} released: the player stopped`);
  return {id, key, dx, from: me, moving, stopped};
}
