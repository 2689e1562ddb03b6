// Two people on one kanban board in headless Chromium (Debian's, never a download), one node:
// what one adds, moves (buttons and drag and drop), edits and deletes, the other sees; the
// sidebar shows who is on the board and who is editing which card; a reload shows the same
// board.
//
// Usage: node tests/browser/board.mjs BASE_URL BOARD_ID SCREENSHOT_PATH
//
// Prints one JSON line ({"ok": true, ...} or {"ok": false, "error": ...}) and exits 0 on
// success, 1 on failure, 3 if the watchdog fired. Every wait is bounded.
import {
  act, addCard, boardOf, card, launch, openBoard, openPage, peopleOf, startRun, textsOf,
  waitBoard, waitCardIn, waitJoined, waitPeople, waitSame,
} from "./board_page.mjs";

const [baseURL, boardId, screenshotPath] = process.argv.slice(2);
const {result, finish, step} = startRun(60_000);
result.people = {};
result.boards = {};

if (!baseURL || !boardId || !screenshotPath) {
  result.error = "usage: node tests/browser/board.mjs BASE_URL BOARD_ID SCREENSHOT_PATH";
  finish(1);
}

const url = `${baseURL}#${boardId}`;
const person = (name, me, editing = []) => ({name, me, editing});
let version = 0;
// Both pages show the board at the version after `ops` more changes.
const same = (pages, ops = 1) => waitSame(pages, (version += ops));

let browser;
try {
  step("launch");
  browser = await launch();

  step("alice opens the board");
  const alice = await openPage(browser, url, "alice", result.problems);
  await openBoard(alice, "Alice", boardId);
  result.boards.empty = await boardOf(alice);
  result.people.alice_alone = await waitPeople(alice, [person("Alice", true)]);

  step("bob opens it too; each sees both");
  const bob = await openPage(browser, url, "bob", result.problems);
  await openBoard(bob, "Bob", boardId);
  result.people.alice = await waitPeople(alice, [person("Alice", true), person("Bob", false)]);
  result.people.bob = await waitPeople(bob, [person("Alice", false), person("Bob", true)]);

  step("alice adds cards; bob sees them");
  await addCard(alice, "todo", "Buy milk");
  await same([alice, bob]);
  await addCard(alice, "todo", "Write tests");
  await addCard(alice, "doing", "Ship it <b>not bold</b>");
  await same([alice, bob], 2);
  if (await alice.inputValue('.column[data-column="todo"] .add-input') !== "") {
    throw new Error("the add field was not cleared");
  }
  if (await bob.locator("#board b").count()) throw new Error("card text was rendered as HTML");

  step("bob moves cards with the buttons; alice sees it");
  await act(bob, "Buy milk", "right");             // todo -> doing (at the end)
  await same([alice, bob]);
  await act(alice, "Ship it <b>not bold</b>", "left");  // doing -> todo (at the end)
  await same([alice, bob]);
  await act(bob, "Ship it <b>not bold</b>", "up");      // above "Write tests"
  result.boards.after_buttons = textsOf(await same([alice, bob]));

  step("alice drags a card to another column; bob sees it");
  await alice.dragAndDrop('.card:has(.card-text:text-is("Write tests"))',
                          '.column[data-column="done"] .cards');
  await waitCardIn(bob, "Write tests", "done");
  result.boards.after_drag = textsOf(await same([alice, bob]));

  step("alice edits a card: bob sees who edits what, then the new text");
  await card(alice, "Buy milk").locator(".card-text").click();
  await alice.waitForSelector(".card.editing textarea:focus");
  result.people.bob_sees_alice_editing = await waitPeople(bob, [
    person("Alice", false, ["editing “Buy milk”"]), person("Bob", true)]);
  result.boards.bob_badges_alice = (await waitBoard(bob, 'b.badges["Buy milk"] === "✎ Alice"')).badges;
  // her own page shows no badge for herself
  result.boards.alice_badges = (await boardOf(alice)).badges;
  await alice.fill(".card.editing textarea", "Buy oat milk");
  await alice.press(".card.editing textarea", "Enter");
  await waitCardIn(bob, "Buy oat milk", "doing");
  result.people.bob_after_alice_edit = await waitPeople(bob, [
    person("Alice", false), person("Bob", true)]);
  result.boards.after_edit = textsOf(await same([alice, bob]));

  step("Escape cancels an edit");
  await card(bob, "Write tests").locator('button[data-action="edit"]').click();
  await waitPeople(alice, [person("Alice", true),
                           person("Bob", false, ["editing “Write tests”"])]);
  await bob.fill(".card.editing textarea", "not saved");
  await bob.press(".card.editing textarea", "Escape");
  await waitPeople(alice, [person("Alice", true), person("Bob", false)]);
  if ((await boardOf(bob)).version !== version) throw new Error("a cancelled edit changed the board");

  step("bob edits a card that alice deletes");
  await card(bob, "Ship it <b>not bold</b>").locator(".card-text").click();
  await waitPeople(alice, [person("Alice", true),
                           person("Bob", false, ["editing “Ship it <b>not bold</b>”"])]);
  result.boards.alice_badges_bob = (await waitBoard(
    alice, 'b.badges["Ship it <b>not bold</b>"] === "✎ Bob"')).badges;
  await act(alice, "Ship it <b>not bold</b>", "delete");
  result.boards.after_delete = textsOf(await same([alice, bob]));
  await bob.waitForSelector('#notice:not([hidden])');
  result.bob_notice = await bob.textContent("#notice");
  if (await bob.locator(".card.editing").count()) throw new Error("bob still edits a deleted card");
  result.people.alice_after_delete = await waitPeople(alice, [
    person("Alice", true), person("Bob", false)]);

  step("a refused change says why");
  await addCard(bob, "todo", "   ");   // blank: the page does not even send it
  await card(bob, "Write tests").locator(".card-text").click();
  await bob.fill(".card.editing textarea", "");
  await bob.press(".card.editing textarea", "Enter");
  await bob.waitForFunction(() => document.getElementById("notice").textContent
    .startsWith("A card needs some text"));
  if ((await boardOf(bob)).version !== version) throw new Error("a refused change changed the board");

  step("screenshot");
  await bob.screenshot({path: screenshotPath});

  step("alice reloads: the same board, straight away (her name is remembered)");
  const before = await boardOf(bob);
  await alice.reload();
  await waitJoined(alice);
  const reloaded = await waitSame([alice, bob], version);
  result.boards.reloaded = textsOf(reloaded);
  if (reloaded.uid !== before.uid) throw new Error("the reload shows another board");
  result.people.after_reload = await waitPeople(alice, [person("Alice", true), person("Bob", false)]);
  await waitPeople(bob, [person("Alice", false), person("Bob", true)]);

  step("and a change after the reload reaches both");
  await addCard(alice, "todo", "After the reload");
  result.boards.final = await same([alice, bob]);
  result.version = version;

  step("bob closes his page and leaves alice's sidebar");
  await bob.context().close();
  result.people.alice_after_bob_left = await waitPeople(alice, [person("Alice", true)]);

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
