// The tutorial's page (docs/examples/tutorial/static) in headless Chromium (Debian's): two
// people see each other online, a question asked on one page appears on the other, an upvote
// is counted once per person, a page opened later gets the board so far from the history,
// and a page without a valid token is refused.
//
// Usage: node tests/browser/tutorial.mjs BASE_URL '{"ada": TOKEN, "bob": TOKEN, "carol": TOKEN}'
// The last stdout line is the result ({"ok": true, ...} or {"ok": false, "error": ...}).
import {launch, openPage, startRun} from "./chat_page.mjs";

const [baseURL, tokensJSON] = process.argv.slice(2);
const tokens = JSON.parse(tokensJSON || "{}");
const {result, finish, step} = startRun(60_000);

const url = (name, board = "tutorial") =>
  `${baseURL}?board=${board}&token=${encodeURIComponent(tokens[name])}`;
const online = (page, text) => page.waitForFunction(
  (t) => document.getElementById("online").textContent === t, text);
const questions = (page) => page.$$eval("#questions li", (lis) => lis.map((li) => ({
  count: li.querySelector(".count").textContent,
  text: li.querySelector(".text").textContent,
  user: li.querySelector(".user").textContent,
})));
const waitFor = (page, want) => page.waitForFunction((w) => JSON.stringify(
  [...document.querySelectorAll("#questions li")].map((li) => [
    li.querySelector(".count").textContent, li.querySelector(".text").textContent])) === w,
JSON.stringify(want));

let browser;
try {
  step("launch");
  browser = await launch();

  step("ada and bob open the board and see each other");
  const ada = await openPage(browser, url("ada"), "ada", result.problems);
  const bob = await openPage(browser, url("bob"), "bob", result.problems);
  await online(ada, "Online: ada, bob");
  await online(bob, "Online: ada, bob");

  step("ada asks; both see it");
  await ada.fill("#text", "What is a room? <b>not bold</b>");
  await ada.press("#text", "Enter");
  await waitFor(bob, [["0", "What is a room? <b>not bold</b>"]]);
  await waitFor(ada, [["0", "What is a room? <b>not bold</b>"]]);
  if (await ada.inputValue("#text") !== "") throw new Error("the input was not cleared");

  step("bob upvotes twice, ada once: two votes");
  await bob.click("#questions li button");
  await waitFor(ada, [["1", "What is a room? <b>not bold</b>"]]);
  await bob.click("#questions li button");
  await ada.click("#questions li button");
  await waitFor(bob, [["2", "What is a room? <b>not bold</b>"]]);

  step("carol comes later and gets the board so far");
  const carol = await openPage(browser, url("carol"), "carol", result.problems);
  await waitFor(carol, [["2", "What is a room? <b>not bold</b>"]]);
  await online(ada, "Online: ada, bob, carol");
  result.carol = await questions(carol);

  step("bob leaves");
  await bob.context().close();
  await online(ada, "Online: ada, carol");

  step("a forged token is refused");
  const context = await browser.newContext();
  const mallory = await context.newPage();
  const refused = new Promise((resolve) => mallory.on("response", (resp) => {
    if (resp.url().includes("/socket/websocket") || resp.status() === 403) resolve(resp.status());
  }));
  mallory.on("console", () => {});  // the failed WebSocket is expected here
  await mallory.goto(`${baseURL}?board=tutorial&token=forged`);
  await mallory.waitForTimeout(1000);
  if (await mallory.getAttribute("body", "data-connection") !== "offline") {
    throw new Error("a forged token connected");
  }
  result.forged = await Promise.race([refused, new Promise((r) => setTimeout(() => r(null), 10))]);

  result.ok = true;
  finish(0);
} catch (err) {
  result.error = String(err && err.stack || err);
  finish(1);
}
