// phoenix.js's own Presence.syncState / syncDiff as an oracle for the Python client.
// One JSON request per line on stdin: {"op": "state"|"diff", "state": {...}, "arg": {...}};
// one line out: {"state", "keys" (own property order), "log" (callbacks, snapshotted)}.
import { Presence } from "phoenix";
import readline from "node:readline";

const snap = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const { op, state, arg } = JSON.parse(line);
  const log = [];
  const onJoin = (key, current, joined) => log.push(["join", key, snap(current), snap(joined)]);
  const onLeave = (key, current, left) => log.push(["leave", key, snap(current), snap(left)]);
  const result = op === "state"
    ? Presence.syncState(state, arg, onJoin, onLeave)
    : Presence.syncDiff(state, arg, onJoin, onLeave);
  const list = Presence.list(result, (key, p) => [key, p.metas.map((m) => m.phx_ref)]);
  process.stdout.write(JSON.stringify({ state: result, keys: Object.getOwnPropertyNames(result),
                                        list, log }) + "\n");
});
