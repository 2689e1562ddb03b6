// Helpers shared by the board browser scripts (board.mjs, board_cluster.mjs): a run with a
// watchdog that prints one JSON result line, Debian's Chromium, and the board page as data.
// Every wait is bounded.
import {chromium} from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const STEP_MS = 10_000;

// One run of a script: `result` is printed as the last stdout line, whatever happens.
// Exit codes: 0 success, 1 failure, 3 watchdog.
export function startRun(watchdogMs) {
  const result = {ok: false, step: "start", problems: [], steps: []};
  const started = Date.now();
  const finish = (code) => {
    process.stdout.write(JSON.stringify(result) + "\n");
    process.exit(code);  // playwright kills the browser it launched on exit
  };
  setTimeout(() => {
    result.error = `watchdog: no result within ${watchdogMs} ms (last step: ${result.step})`;
    finish(3);
  }, watchdogMs).unref();
  const step = (name) => {
    result.step = name;
    result.steps.push(`${((Date.now() - started) / 1000).toFixed(1)}s ${name}`);
  };
  return {result, finish, step};
}

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: STEP_MS,
  });
}

// A console message Chromium logs when a WebSocket cannot connect (a node that is down).
const WS_FAILED = /^WebSocket connection to '.*' failed/;

// A page in a context of its own (its own storage and WebSocket, like another browser), with
// console errors and warnings, page errors, failed requests and HTTP errors recorded as
// problems. With `disconnects` (an array), failed WebSocket connections go there instead:
// expected while a node restarts.
export async function openPage(browser, url, label, problems, disconnects = null) {
  const context = await browser.newContext({viewport: {width: 1100, height: 760}});
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (msg) => {
    if (msg.type() !== "error" && msg.type() !== "warning") return;
    const text = `${label} console ${msg.type()}: ${msg.text()}`;
    if (disconnects && WS_FAILED.test(msg.text())) disconnects.push(text);
    else problems.push(text);
  });
  page.on("pageerror", (err) => problems.push(`${label} page error: ${err.message}`));
  page.on("requestfailed", (req) => {
    problems.push(`${label} request failed: ${req.url()} ${req.failure()?.errorText}`);
  });
  page.on("response", (resp) => {
    if (resp.status() >= 400) problems.push(`${label} HTTP ${resp.status()}: ${resp.url()}`);
  });
  await page.goto(url);
  await page.waitForSelector('body[data-connection="online"]');
  return page;
}

// Open the board named in the form (the URL's #hash fills it) under `name`.
export async function openBoard(page, name, boardId) {
  const field = await page.inputValue("#board-id");
  if (field !== boardId) throw new Error(`the board field reads ${JSON.stringify(field)}, not ${boardId}`);
  await page.fill("#name", name);
  await page.click("#join");
  await waitJoined(page);
}

export const waitJoined = (page, timeout = STEP_MS) =>
  page.waitForSelector('body[data-channel="joined"] #board[data-version]:not([data-version=""])',
                       {timeout});

// Runs in the page: the board as shown, {version, uid, node, columns: [{id, cards: [{id, text}]}]},
// plus what the page is doing (channel state, ops in flight) and the edit badges.
function readBoard() {
  const board = document.getElementById("board");
  return {
    version: board.dataset.version === "" ? null : Number(board.dataset.version),
    uid: board.dataset.uid,
    node: (document.getElementById("board-info").textContent.match(/node (\S+)/) || [])[1] ?? null,
    channel: document.body.dataset.channel,
    pending: Number(document.body.dataset.pending),
    columns: [...board.querySelectorAll(".column")].map((col) => ({
      id: col.dataset.column,
      count: Number(col.querySelector(".count").textContent),
      cards: [...col.querySelectorAll(".cards > .card")].map((li) => ({
        id: li.dataset.id,
        text: li.querySelector(".card-text").textContent,
      })),
    })),
    badges: Object.fromEntries([...board.querySelectorAll(".card")]
      .filter((li) => !li.querySelector(".card-editors").hidden)
      .map((li) => [li.querySelector(".card-text").textContent,
                    li.querySelector(".card-editors").textContent])),
  };
}

export const boardOf = (page) => page.evaluate(readBoard);

// The cards as {column: [text, ...]}.
export const textsOf = (board) =>
  Object.fromEntries(board.columns.map((c) => [c.id, c.cards.map((card) => card.text)]));

// Resolves with the board once check(board) is true in the page (check is an expression over
// `b`, the board as readBoard() returns it, e.g. "b.version === 3").
export async function waitBoard(page, check, timeout = STEP_MS) {
  try {
    await page.waitForFunction(`((b) => ${check})((${readBoard})())`, undefined, {timeout});
  } catch (err) {
    throw new Error(`the board is ${JSON.stringify(await boardOf(page))}, wanted ${check} ` +
                    `(${err.message.split("\n")[0]})`);
  }
  return boardOf(page);
}

// Waits until every page shows the same board at version `version` with nothing in flight;
// returns that board.
export async function waitSame(pages, version, timeout = STEP_MS) {
  const boards = [];
  for (const page of pages) {
    boards.push(await waitBoard(page,
      `b.channel === "joined" && b.pending === 0 && b.version === ${version}`, timeout));
  }
  const strip = ({version: v, uid, columns}) => JSON.stringify({v, uid, columns});
  const first = strip(boards[0]);
  for (const b of boards.slice(1)) {
    if (strip(b) !== first) {
      throw new Error(`the pages disagree at version ${version}: ${first} vs ${strip(b)}`);
    }
  }
  return boards[0];
}

export async function addCard(page, column, text) {
  const input = page.locator(`.column[data-column="${column}"] .add-input`);
  await input.fill(text);
  await input.press("Enter");
}

// The card whose text is exactly `text`.
export const card = (page, text) =>
  page.locator(".card").filter({has: page.locator(".card-text").getByText(text, {exact: true})});

export async function act(page, text, action) {
  await card(page, text).locator(`button[data-action="${action}"]`).click();
}

// Waits until `text` is a card in `column` of the page.
export async function waitCardIn(page, text, column, timeout = STEP_MS) {
  await waitBoard(page, `b.columns.some((c) => c.id === ${JSON.stringify(column)} && ` +
                        `c.cards.some((k) => k.text === ${JSON.stringify(text)}))`, timeout);
}

// Runs in the page: the presence sidebar as data.
function readPeople() {
  return {
    title: document.getElementById("people-title").textContent,
    state: document.querySelector(".sidebar").dataset.state,
    people: [...document.querySelectorAll("#people > li.person")].map((li) => ({
      name: li.querySelector(".name").textContent,
      me: li.classList.contains("me"),
      editing: [...li.querySelectorAll(".edits > li")].map((e) => e.textContent),
    })),
  };
}

export const peopleOf = (page) => page.evaluate(readPeople);

// Resolves with the sidebar once it is live and shows exactly `people` ([{name, me, editing}]).
export async function waitPeople(page, people, timeout = STEP_MS) {
  const want = JSON.stringify({title: `On this board (${people.length})`, state: "live", people});
  try {
    await page.waitForFunction(`JSON.stringify((${readPeople})()) === ${JSON.stringify(want)}`,
                               undefined, {timeout});
  } catch (err) {
    throw new Error(`the sidebar is ${JSON.stringify(await peopleOf(page))}, not ${want} ` +
                    `(${err.message.split("\n")[0]})`);
  }
  return peopleOf(page);
}
