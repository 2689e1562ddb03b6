// Cross-node broadcast load: subscribers on node B, one publisher on node A.
//   node bench/load/cross.mjs <urlA> <urlB> <subscribers> <seconds> <window>
// The publisher pushes "bcast" with a send timestamp; every delivery on B is counted and its
// latency (receive - send, same machine clock) recorded. Keeps <window> broadcasts in flight
// (the oldest must arrive at the first subscriber before another is sent). Prints JSON.
import WebSocket from "ws";

const [, , urlA, urlB, subsArg, secsArg, windowArg] = process.argv;
const SUBS = Number(subsArg || 100), SECS = Number(secsArg || 5), WINDOW = Number(windowArg || 50);
const TOPIC = "room:cross";
setTimeout(() => { console.error("watchdog"); process.exit(3); }, (SECS + 30) * 1000).unref();

function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/socket/websocket?vsn=2.0.0`);
    ws.on("open", () => {
      ws.send(JSON.stringify(["1", "1", TOPIC, "phx_join", {}]));
      ws.once("message", () => resolve(ws));
    });
    ws.on("error", reject);
  });
}

const subs = [];
for (let i = 0; i < SUBS; i++) subs.push(await open(urlB));
const pub = await open(urlA);
await new Promise((r) => setTimeout(r, 500)); // let subscriptions settle across nodes

let delivered = 0, sent = 0, firstSeen = 0, measuring = true;
const latencies = [];
const start = Date.now();
subs.forEach((ws, idx) => {
  ws.on("message", (data) => {
    const s = data.toString();
    if (!s.includes('"msg"')) return;
    delivered++;
    if (idx === 0) {
      const t = JSON.parse(s)[4].t;
      latencies.push(Number(process.hrtime.bigint() / 1000n) - t);
      firstSeen++;
      pump();
    }
  });
});
function pump() {
  while (measuring && sent - firstSeen < WINDOW) {
    sent++;
    pub.send(JSON.stringify(["1", String(sent + 1), TOPIC, "bcast",
      { t: Number(process.hrtime.bigint() / 1000n), n: sent }]));
  }
}
pump();
await new Promise((r) => setTimeout(r, SECS * 1000));
measuring = false;
const elapsed = (Date.now() - start) / 1000;
await new Promise((r) => setTimeout(r, 1000));
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] / 1000;
console.log(JSON.stringify({
  subscribers: SUBS, seconds: elapsed, broadcasts: sent, deliveries: delivered,
  broadcasts_per_s: Math.round(firstSeen / elapsed), deliveries_per_s: Math.round(delivered / elapsed),
  lost: sent * SUBS - delivered, p50_ms: q(0.5), p99_ms: q(0.99),
}));
for (const ws of [...subs, pub]) ws.terminate();
process.exit(0);
