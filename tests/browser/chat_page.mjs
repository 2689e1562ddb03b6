// Helpers shared by the chat browser scripts (chat.mjs, chat_cluster.mjs): a script run with a
// watchdog that prints one JSON result line, asking the test to act on servers, Debian's
// Chromium, the chat page as data, and dropping and restoring a page's connection.
// Every wait is bounded.
import {createInterface} from "node:readline";

import {chromium} from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
export const STEP_MS = 8_000;

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

// Asking the test that runs the script to act on the servers: `ask(what)` writes
// {"ask": what} on stdout and resolves with the JSON answer line read from stdin (rejects on
// {"error": ...} or after `timeout` ms). `close()` lets the process exit.
export function asker() {
  const answers = [];
  const waiting = [];
  const lines = createInterface({input: process.stdin});
  lines.on("line", (line) => {
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
  return {ask, close: () => lines.close()};
}

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: STEP_MS,
  });
}

// A console message Chromium logs when a WebSocket cannot connect (a server that is down).
const WS_FAILED = /^WebSocket connection to '.*' failed/;
// A page whose WebSocket failed may go on with LongPoll (the chat page sets
// longPollFallbackMs): its requests fail too while the server is down, get 503 while it
// drains, and are cancelled when the page reloads or closes.
const LONGPOLL = /\/socket\/longpoll(\?|$)/;
const LONGPOLL_FAILED = /^net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE|ABORTED)$/;

// A page in a context of its own (its own storage and WebSocket, like another browser), with
// console errors and warnings, page errors, failed requests and HTTP errors recorded as problems.
// With `disconnects` (an array), failed WebSocket connections and LongPoll requests go there
// instead: expected while a server restarts.
export async function openPage(browser, url, label, problems, disconnects = null) {
  const context = await browser.newContext({viewport: {width: 900, height: 620}});
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (msg) => {
    if (msg.type() !== "error" && msg.type() !== "warning") return;
    const text = `${label} console ${msg.type()}: ${msg.text()}`;
    const failedPoll = LONGPOLL.test(msg.location()?.url || "") &&
      /^Failed to load resource: (net::ERR_|the server responded with a status of 503)/.test(msg.text());
    if (disconnects && (WS_FAILED.test(msg.text()) || failedPoll)) disconnects.push(text);
    else problems.push(text);
  });
  page.on("pageerror", (err) => problems.push(`${label} page error: ${err.message}`));
  page.on("requestfailed", (req) => {
    const text = `${label} request failed: ${req.url()} ${req.failure()?.errorText}`;
    if (disconnects && LONGPOLL.test(req.url()) && LONGPOLL_FAILED.test(req.failure()?.errorText))
      disconnects.push(text);
    else problems.push(text);
  });
  page.on("response", (resp) => {
    if (resp.status() < 400) return;
    const text = `${label} HTTP ${resp.status()}: ${resp.url()}`;
    if (disconnects && resp.status() === 503 && LONGPOLL.test(resp.url())) disconnects.push(text);
    else problems.push(text);
  });
  await page.goto(url);
  await page.waitForSelector('body[data-connection="online"]');
  return page;
}

// Join the room in the form (it defaults to "lobby") under `name`.
export async function join(page, name) {
  await page.fill("#name", name);
  const room = await page.inputValue("#room");
  if (room !== "lobby") throw new Error(`the room field defaults to ${JSON.stringify(room)}, not "lobby"`);
  await page.click("#join");
  await page.waitForSelector('body[data-channel="joined"]');
}

// Type `body` in the message field and press Enter.
export async function say(page, body) {
  await page.locator("#message").pressSequentially(body);
  await page.press("#message", "Enter");
}

// Resolves when page's message list shows `body` from `user`.
export async function waitForMessage(page, user, body, timeout = STEP_MS) {
  await page.waitForFunction(([u, b]) => [...document.querySelectorAll("#messages li.msg")]
    .some((li) => li.querySelector(".user")?.textContent === u &&
                  li.querySelector(".body")?.textContent === b), [user, body], {timeout});
}

// Drop the page's connection (as a network blip would) and wait until the page knows it.
export async function disconnect(page) {
  await page.evaluate(() => window.chat.socket.disconnect());
  await page.waitForSelector('body[data-connection="reconnecting"]');
}

// Connect again and wait until the page is back in its room.
export async function reconnect(page, timeout = STEP_MS) {
  await page.evaluate(() => window.chat.socket.connect());
  await page.waitForSelector('body[data-connection="online"][data-channel="joined"]', {timeout});
}

// The phx_recovery of every join reply the page got, oldest first.
export const recoveriesOf = (page) => page.evaluate(() => window.chat.recoveries);

// Resolves when page's message list has a notice containing `text`.
export async function waitForNotice(page, text, timeout = STEP_MS) {
  await page.waitForFunction((t) => [...document.querySelectorAll("#messages li.system")]
    .some((li) => li.textContent.includes(t)), text, {timeout});
}

// The message list: {user, body} for messages, {system} for notices.
export const listOf = (page) => page.$$eval("#messages li", (lis) => lis.map((li) => (
  li.classList.contains("msg")
    ? {user: li.querySelector(".user").textContent, body: li.querySelector(".body").textContent}
    : {system: li.textContent})));

// Runs in the page: the "who is online" sidebar as data. `nodes` is the visible node list of a
// person (shown only when the room's presences span several nodes), else null.
function readOnline() {
  return {
    title: document.getElementById("online-title").textContent,
    people: [...document.querySelectorAll("#online li.person")].map((li) => ({
      name: li.querySelector(".name").textContent,
      tabs: Number(li.dataset.tabs),
      me: li.classList.contains("me"),
      nodes: li.querySelector(".nodes")?.textContent ?? null,
    })),
    state: document.querySelector(".sidebar").dataset.state,
  };
}

export const onlineOf = (page) => page.evaluate(readOnline);

// Resolves with the sidebar once it is up to date and shows exactly `title` and `people`
// ([{name, tabs, me, nodes}] in display order).
export async function waitForOnline(page, title, people, timeout = STEP_MS) {
  const want = JSON.stringify({title, people, state: "live"});
  try {
    // An expression string, so the page can run readOnline (a function cannot be passed in).
    await page.waitForFunction(`JSON.stringify((${readOnline})()) === ${JSON.stringify(want)}`,
                               undefined, {timeout});
  } catch (err) {
    throw new Error(`the online list is ${JSON.stringify(await onlineOf(page))}, not ${want} ` +
                    `(${err.message.split("\n")[0]})`);
  }
  return onlineOf(page);
}
