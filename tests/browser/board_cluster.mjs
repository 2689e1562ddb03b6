// Two board nodes sharing one Redis, one Chromium page on each, editing the same board at the
// same time; then the node that owns the board's room stops (its room is handed off) and the
// page left edits on, the node starts again, the other node restarts, and both pages reload:
// every page always ends up with the same board, and nothing is lost.
//
// Usage: node tests/browser/board_cluster.mjs URL_NODE_A URL_NODE_B BOARD_ID SCREENSHOT_PATH
// (the nodes are named board-a and board-b).
//
// The test that runs this restarts nodes when asked: the script writes {"ask": "..."} lines on
// stdout and reads one JSON answer line on stdin for each:
//   "stop-owner"        -> {"stopped": node}   (SIGTERM to the node owning the board, waited)
//   "start-stopped"     -> {"started": node}   (that node again, same port and name)
//   "restart-non-owner" -> {"restarted": node, "owner": node}
// Its last stdout line is the result ({"ok": true, ...} or {"ok": false, "error": ...}); exit 0
// on success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {createInterface} from "node:readline";

import {
  act, addCard, boardOf, card, launch, openBoard, openPage, startRun, waitBoard, waitCardIn,
  waitJoined, waitPeople, waitSame,
} from "./board_page.mjs";

const [urlA, urlB, boardId, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(180_000);
result.boards = {};
result.disconnects = [];
// Changes and presence cross nodes through Redis; a restarted node takes a few seconds to
// start and a page up to 2 s more to reconnect: the bound on one such wait.
const CROSS_MS = 30_000;

if (!urlA || !urlB || !boardId || !screenshotPath) {
  result.error = "usage: node tests/browser/board_cluster.mjs URL_NODE_A URL_NODE_B BOARD_ID SCREENSHOT_PATH";
  finish(1);
}

// -- asking the test to restart nodes -------------------------------------------------------

const answers = [];
const waiting = [];
createInterface({input: process.stdin}).on("line", (line) => {
  const resolve = waiting.shift();
  if (resolve) resolve(line);
  else answers.push(line);
});

async function ask(what, timeout = 60_000) {
  process.stdout.write(JSON.stringify({ask: what}) + "\n");
  let timer;
  const line = answers.length ? answers.shift() : await Promise.race([
    new Promise((resolve) => waiting.push(resolve)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer to ${what}`)), timeout);
    }),
  ]);
  clearTimeout(timer);
  const answer = JSON.parse(line);
  if (answer.error) throw new Error(`${what}: ${answer.error}`);
  return answer;
}

// -- the run --------------------------------------------------------------------------------

const pad = (i) => String(i).padStart(2, "0");
const person = (name, me, editing = []) => ({name, me, editing});

let browser;
try {
  step("launch");
  browser = await launch();

  step("ada opens the board on node a, bea on node b");
  const ada = await openPage(browser, `${urlA}#${boardId}`, "ada", result.problems, result.disconnects);
  await openBoard(ada, "Ada", boardId);
  const bea = await openPage(browser, `${urlB}#${boardId}`, "bea", result.problems, result.disconnects);
  await openBoard(bea, "Bea", boardId);
  const pages = [ada, bea];
  const byNode = {"board-a": {page: ada, who: "ada"}, "board-b": {page: bea, who: "bea"}};

  step("each sees both");
  await waitPeople(ada, [person("Ada", true), person("Bea", false)], CROSS_MS);
  await waitPeople(bea, [person("Ada", false), person("Bea", true)], CROSS_MS);

  step("both add 10 cards at once");
  const addTen = async (page, who) => {
    for (let i = 1; i <= 10; i++) await addCard(page, "todo", `${who} ${pad(i)}`);
  };
  await Promise.all([addTen(ada, "ada"), addTen(bea, "bea")]);
  result.boards.after_adds = await waitSame(pages, 20, CROSS_MS);

  step("both move, edit and delete at once");
  const columns = ["todo", "doing", "done"];
  const moveRight = async (page, who, steps) => {
    for (let i = 1; i <= 3; i++) {
      for (let s = 1; s <= steps; s++) {
        await act(page, `${who} ${pad(i)}`, "right");
        await waitCardIn(page, `${who} ${pad(i)}`, columns[s], CROSS_MS);
      }
    }
  };
  const edit = async (page, text, newText) => {
    await card(page, text).locator(".card-text").click();
    await page.fill(".card.editing textarea", newText);
    await page.press(".card.editing textarea", "Enter");
  };
  await Promise.all([
    (async () => {
      await moveRight(ada, "ada", 1);  // ada 01-03 to doing
      await edit(ada, "ada 10", "ada 10 edited");
    })(),
    (async () => {
      await moveRight(bea, "bea", 2);  // bea 01-03 to done, through doing
      await act(bea, "bea 10", "delete");
    })(),
  ]);
  // 20 adds, 3 + 6 moves, 1 edit, 1 delete
  result.boards.concurrent = await waitSame(pages, 31, CROSS_MS);

  step("who edits what crosses nodes");
  await card(ada, "ada 05").locator(".card-text").click();
  await waitPeople(bea, [person("Ada", false, ["editing “ada 05”"]), person("Bea", true)], CROSS_MS);
  await waitBoard(bea, 'b.badges["ada 05"] === "✎ Ada"', CROSS_MS);
  await ada.press(".card.editing textarea", "Escape");
  await waitPeople(bea, [person("Ada", false), person("Bea", true)], CROSS_MS);

  step("the node that owns the board stops; the page on the other node edits on");
  const {stopped} = await ask("stop-owner");
  result.stopped_owner = stopped;
  const survivor = byNode[stopped === "board-a" ? "board-b" : "board-a"];
  result.survivor = survivor.who;
  await addCard(survivor.page, "doing", `${survivor.who} 11`);
  await act(survivor.page, "ada 04", "right");
  await waitCardIn(survivor.page, "ada 04", "doing", CROSS_MS);
  result.boards.while_down = await waitBoard(survivor.page,
    "b.pending === 0 && b.version === 33", CROSS_MS);

  step("the stopped node starts again; its page reconnects to the same board");
  await ask("start-stopped");
  result.boards.after_start = await waitSame(pages, 33, CROSS_MS);

  step("both edit again");
  await Promise.all([addCard(ada, "done", "ada 12"), addCard(bea, "done", "bea 12")]);
  result.boards.after_start_edits = await waitSame(pages, 35, CROSS_MS);

  step("the other node restarts");
  const restart = await ask("restart-non-owner");
  result.restarted = restart;
  await waitSame(pages, 35, CROSS_MS);
  await Promise.all([addCard(ada, "todo", "ada 13"), addCard(bea, "todo", "bea 13")]);
  result.boards.after_restart = await waitSame(pages, 37, CROSS_MS);

  step("screenshot");
  await ada.screenshot({path: screenshotPath});

  step("both pages reload: the same board");
  const before = await boardOf(ada);
  await Promise.all(pages.map((page) => page.reload()));
  await Promise.all(pages.map((page) => waitJoined(page, CROSS_MS)));
  const reloaded = await waitSame(pages, 37, CROSS_MS);
  if (JSON.stringify(reloaded.columns) !== JSON.stringify(before.columns) ||
      reloaded.uid !== before.uid) {
    throw new Error(`the reloaded board differs: ${JSON.stringify(reloaded)} vs ${JSON.stringify(before)}`);
  }
  result.boards.final = reloaded;

  step("and both are still on it");
  await waitPeople(ada, [person("Ada", true), person("Bea", false)], CROSS_MS);
  await waitPeople(bea, [person("Ada", false), person("Bea", true)], CROSS_MS);

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
