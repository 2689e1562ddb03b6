// Two people chat through the example app in headless Chromium (Debian's, never a download).
//
// Usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH
//
// Prints one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}) and exits 0 on
// success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {chromium} from "playwright-core";

const [baseURL, screenshotPath] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const WATCHDOG_MS = 30_000;
const STEP_MS = 8_000;

const result = {ok: false, step: "start", problems: []};

function finish(code) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);  // playwright kills the browser it launched on exit
}

setTimeout(() => {
  result.error = `watchdog: no result within ${WATCHDOG_MS} ms (last step: ${result.step})`;
  finish(3);
}, WATCHDOG_MS).unref();

if (!baseURL || !screenshotPath) {
  result.error = "usage: node tests/browser/chat.mjs BASE_URL SCREENSHOT_PATH";
  finish(1);
}

const step = (name) => { result.step = name; };

async function openPage(browser, label) {
  const context = await browser.newContext({viewport: {width: 900, height: 620}});
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      result.problems.push(`${label} console ${msg.type()}: ${msg.text()}`);
    }
  });
  page.on("pageerror", (err) => result.problems.push(`${label} page error: ${err.message}`));
  page.on("requestfailed", (req) => {
    result.problems.push(`${label} request failed: ${req.url()} ${req.failure()?.errorText}`);
  });
  page.on("response", (resp) => {
    if (resp.status() >= 400) result.problems.push(`${label} HTTP ${resp.status()}: ${resp.url()}`);
  });
  await page.goto(baseURL);
  await page.waitForSelector('body[data-connection="online"]');
  return page;
}

async function join(page, name) {
  await page.fill("#name", name);
  const room = await page.inputValue("#room");
  if (room !== "lobby") throw new Error(`the room field defaults to ${JSON.stringify(room)}, not "lobby"`);
  await page.click("#join");
  await page.waitForSelector('body[data-channel="joined"]');
}

// Resolves when page's message list shows `body` from `user`.
async function waitForMessage(page, user, body) {
  await page.waitForFunction(([u, b]) => [...document.querySelectorAll("#messages li.msg")]
    .some((li) => li.querySelector(".user")?.textContent === u &&
                  li.querySelector(".body")?.textContent === b), [user, body]);
}

const listOf = (page) => page.$$eval("#messages li", (lis) => lis.map((li) => (
  li.classList.contains("msg")
    ? {user: li.querySelector(".user").textContent, body: li.querySelector(".body").textContent}
    : {system: li.textContent})));

let browser;
try {
  step("launch");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout: STEP_MS,
  });

  step("alice joins");
  const alice = await openPage(browser, "alice");
  await join(alice, "Alice");

  step("alice speaks before bob arrives");
  await alice.locator("#message").pressSequentially("Is anyone here?");
  await alice.press("#message", "Enter");
  await waitForMessage(alice, "Alice", "Is anyone here?");

  step("bob joins and gets the history");
  const bob = await openPage(browser, "bob");
  await join(bob, "Bob");
  await waitForMessage(bob, "Alice", "Is anyone here?");
  await bob.waitForFunction(() => [...document.querySelectorAll("#messages li.system")]
    .some((li) => li.textContent === "Joined #lobby as Bob."));

  step("alice types, presses Enter; both see it");
  const hello = "Hello Bob! <b>not bold</b> & <img src=x onerror=alert(1)>";
  await alice.locator("#message").pressSequentially(hello);
  await alice.press("#message", "Enter");
  await waitForMessage(bob, "Alice", hello);
  await waitForMessage(alice, "Alice", hello);
  if (await alice.inputValue("#message") !== "") throw new Error("the input was not cleared");
  const injected = await bob.$$eval("#messages b, #messages img", (els) => els.length);
  if (injected) throw new Error("message text was rendered as HTML");

  step("bob answers");
  await bob.locator("#message").pressSequentially("Hi Alice 👋");
  await bob.press("#message", "Enter");
  await waitForMessage(alice, "Bob", "Hi Alice 👋");
  await waitForMessage(bob, "Bob", "Hi Alice 👋");

  step("a blank name is refused with a reason");
  const carol = await openPage(browser, "carol");
  await carol.fill("#name", "   ");
  await carol.click("#join");
  await carol.waitForFunction(() => [...document.querySelectorAll("#messages li.system.error")]
    .some((li) => li.textContent.includes("a display name is required")));
  if (await carol.getAttribute("body", "data-channel") !== "none") {
    throw new Error("a refused join left the page in a joined state");
  }

  step("screenshot");
  await bob.screenshot({path: screenshotPath});

  result.alice = await listOf(alice);
  result.bob = await listOf(bob);
  result.carol = await listOf(carol);
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
