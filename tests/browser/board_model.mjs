// The page's board logic (examples/board/static/board_model.js) under Node, no browser: fed the
// boards and change events the Python model made (tests/test_board_model.py), it must end with
// the same board, whether the events come in order or late, out of order, twice or not at all.
//
// Usage: node tests/browser/board_model.mjs < case.json, where case.json is
// {"boards": [board at version 0, 1, ...], "events": [event for version 1, 2, ...],
//  "other": a board with another uid, "seed": n}.
// Prints one JSON line: {"ok": true, "scenarios": {...}} or {"ok": false, "error": ...}.
import {readFileSync} from "node:fs";

import {BoardSync, applyOp, cloneBoard} from "../../examples/board/static/board_model.js";

const input = JSON.parse(readFileSync(0, "utf8"));
const {boards, events, other} = input;
const last = boards[boards.length - 1];
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const strip = (board) => ({uid: board.uid, version: board.version, columns: board.columns});
const tick = () => new Promise((resolve) => setImmediate(resolve));

// A small seeded generator (mulberry32), so a failure can be replayed.
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const scenarios = {};

// 1. applyOp, event after event, gives every intermediate board.
{
  const board = cloneBoard(boards[0]);
  const wrong = [];
  events.forEach((ev, i) => {
    applyOp(board, ev.op);
    board.version = ev.version;
    if (!same(strip(board), strip(boards[i + 1]))) wrong.push(ev.version);
  });
  scenarios.apply_in_order = {wrong};
}

// 2. BoardSync fed in order never fetches.
{
  let fetches = 0;
  const sync = new BoardSync(() => { fetches += 1; return Promise.reject(new Error("no")); });
  sync.reset(boards[0]);
  for (const ev of events) sync.event(ev);
  scenarios.sync_in_order = {same: same(strip(sync.board), strip(last)), fetches,
                             pending: sync.pending.length};
}

// 3. The server sends event after event; each reaches the client 0-3 steps late (so out of
// order), some twice, some never (but not the last one: a client cannot know it missed the
// newest change until the next one, or the catch-up after a join). A fetch answers with the
// board at the server's version when it is answered.
{
  const rand = random(input.seed);
  let serverVersion = 0;
  let fetches = 0;
  let changes = 0;
  const sync = new BoardSync(async () => {
    fetches += 1;
    await tick();
    return boards[serverVersion];
  }, () => { changes += 1; });
  sync.reset(boards[0]);
  let inflight = [];
  let dropped = 0;
  const deliver = (now) => {
    const due = inflight.filter((m) => m.due <= now).sort(() => rand() - 0.5);
    inflight = inflight.filter((m) => m.due > now);
    for (const m of due) sync.event(m.ev);
  };
  for (const [i, ev] of events.entries()) {
    serverVersion = ev.version;
    const isLast = i === events.length - 1;
    if (!isLast && rand() < 0.1) {
      dropped += 1;
    } else {
      inflight.push({ev, due: i + Math.floor(rand() * 4)});
      if (rand() < 0.1) inflight.push({ev, due: i + Math.floor(rand() * 4)});
    }
    deliver(i);
    await tick();
  }
  deliver(Infinity);
  for (let i = 0; i < 10; i++) await tick();
  scenarios.sync_late_twice_lost = {same: same(strip(sync.board), strip(last)), fetches,
                                    dropped, pending: sync.pending.length,
                                    fetching: sync.fetching, changes};
}

// 4. Another board under the same name (another uid): its events make the client fetch it.
{
  let fetches = 0;
  const sync = new BoardSync(async () => { fetches += 1; await tick(); return other; });
  sync.reset(last);
  sync.event({uid: other.uid, version: 1, op: {type: "delete", id: "nope"}});
  for (let i = 0; i < 5; i++) await tick();
  scenarios.other_uid = {same: same(strip(sync.board), strip(other)), fetches};
}

// 5. A whole board offered after a join is taken only if newer (or another board).
{
  const sync = new BoardSync(() => Promise.reject(new Error("no")));
  sync.reset(boards[1]);
  sync.offer(boards[0]);
  const keptNewer = sync.board.version === 1;
  sync.offer(last);
  scenarios.offer = {kept_newer: keptNewer, took_newer: same(strip(sync.board), strip(last))};
}

process.stdout.write(JSON.stringify({ok: true, scenarios}) + "\n");
