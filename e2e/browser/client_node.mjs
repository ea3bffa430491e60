// Fast test of gateway/static/client.js against real gateways, in Node (no browser).
// Run by e2e/tests/client_js.rs (`cargo test`), which starts two in-process gateways
// and passes their base URLs:
//   GATEWAY_A=http://127.0.0.1:PORT GATEWAY_B=http://127.0.0.1:PORT2 node client_node.mjs
// Node 20 needs --experimental-websocket; Node 22+ has WebSocket built in.
// B stands in for "A restarted with its memory lost": a new epoch and no history.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import url from "node:url";

const A = process.env.GATEWAY_A;
const B = process.env.GATEWAY_B;
assert.ok(A && B, "set GATEWAY_A and GATEWAY_B");
if (typeof WebSocket !== "function") {
  console.error("no global WebSocket: run node with --experimental-websocket (Node 20)");
  process.exit(2);
}

// Every command gets exactly one reply (docs/protocol.md). client.js settles a command on
// its first reply and ignores the rest, so the count is kept here, under client.js: every
// socket it opens counts the ok/error frames per ref and fails the script on a second one.
class CountingWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    const replies = new Map();
    this.addEventListener("message", (ev) => {
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      if ((f.type === "ok" || f.type === "error") && f.ref != null) {
        const n = (replies.get(f.ref) ?? 0) + 1;
        replies.set(f.ref, n);
        if (n > 1) {
          console.log(`FAILED: command ${f.ref} got reply number ${n}: ${ev.data}`);
          process.exit(1);
        }
      }
    });
  }
}
globalThis.WebSocket = CountingWebSocket;

// Import the client exactly as the gateway serves it.
const res = await fetch(A + "/client.js");
assert.equal(res.status, 200);
assert.match(res.headers.get("content-type"), /^text\/javascript/);
const copy = path.join(os.tmpdir(), `chatgw-client-${process.pid}.mjs`);
// CLIENT_JS=path imports a working copy instead (no gateway rebuild while editing).
fs.writeFileSync(copy, process.env.CLIENT_JS ? fs.readFileSync(process.env.CLIENT_JS) : await res.text());
process.on("exit", () => fs.rmSync(copy, { force: true }));
const { ChatClient, backoffDelay } = await import(url.pathToFileURL(copy).href);

const wsOf = (base) => base.replace(/^http/, "ws") + "/ws";
const DEAD = "ws://127.0.0.1:1/ws"; // refused at once: "the gateway is down"
const step = (s) => console.log("# " + s);

async function waitFor(what, pred, ms = 5000) {
  const until = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > until) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// client.js catches what a listener throws (a listener's bug must not break the client)
// and only logs it: an assertion inside a listener would be lost. Every listener here
// goes through `listen`, which fails the script at once (a waiting step would otherwise
// hang until the Rust test's time limit); the Rust test also fails on the client's
// "listener failed" log line.
function listen(client, event, fn) {
  return client.on(event, (d) => {
    try {
      fn(d);
    } catch (e) {
      console.log(`FAILED in a ${event} listener: ${e?.stack ?? e}`);
      process.exit(1);
    }
  });
}

function once(client, event) {
  return new Promise((resolve) => {
    const off = listen(client, event, (d) => {
      off();
      resolve(d);
    });
  });
}

// Asks the Rust test (e2e/tests/client_js.rs) for a server-side action; resolves with
// its one-line answer.
const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function harness(action) {
  console.log("@@" + action);
  const { value } = await replies.next();
  return value;
}

// A client whose gateway can be switched or made unreachable, and its log of events.
function makeUser(name) {
  const target = { url: wsOf(A) };
  const client = new ChatClient({ url: () => target.url, user: name, initialDelayMs: 50, maxDelayMs: 200 });
  const log = { messages: [], presence: [], duplicates: 0, resets: [], errors: [] };
  listen(client, "message", (m) => log.messages.push(m));
  listen(client, "presence", (p) => log.presence.push(p));
  listen(client, "duplicate", () => (log.duplicates += 1));
  listen(client, "reset", (r) => log.resets.push(r));
  listen(client, "error", (e) => log.errors.push(e));
  return { client, target, log, texts: (room) => log.messages.filter((m) => m.room === room).map((m) => m.body.text ?? m.body) };
}

// The server closes a socket that sends a binary frame (1003): a server-side drop.
function dropByServer(client) {
  client._ws.send(new Uint8Array([1]));
}

function assertOrdered(msgs) {
  for (let i = 1; i < msgs.length; i++) {
    if (msgs[i].epoch === msgs[i - 1].epoch) assert.ok(msgs[i].seq > msgs[i - 1].seq, "seq order");
  }
}

// ---- backoff: full jitter, 1 s doubling to 30 s ----
step("backoff");
assert.equal(backoffDelay(0, 1000, 30000, () => 0.999), 999);
assert.equal(backoffDelay(3, 1000, 30000, () => 0.999), 7992);
assert.equal(backoffDelay(10, 1000, 30000, () => 0.999), 29970);
assert.equal(backoffDelay(5, 1000, 30000, () => 0), 0);

const alice = makeUser("alice");
const bob = makeUser("bob");

step("connect, join, presence");
const [wa, wb] = await Promise.all([alice.client.connect(), bob.client.connect()]);
assert.equal(wa.user, "alice");
assert.equal(wb.user, "bob");
const ja = await alice.client.join("lobby");
assert.equal(ja.room, "lobby");
await bob.client.join("lobby");
await waitFor("bob's presence", () => alice.log.presence.some((p) => p.room === "lobby" && p.joined.includes("bob")));
assert.deepEqual((await alice.client.presence("lobby")).sort(), ["alice", "bob"]);

step("chat and DM");
const sent = await alice.client.send("lobby", { text: "m1" });
assert.equal(sent.room, "lobby");
assert.equal(typeof sent.seq, "number");
await waitFor("m1", () => bob.texts("lobby").includes("m1"));
await alice.client.sendDirect("bob", "d1");
await waitFor("d1", () => bob.texts("user:bob").includes("d1"));
assert.equal(bob.log.messages.find((m) => m.body === "d1").from, "alice");
const hist = await bob.client.history("lobby");
assert.deepEqual(hist.messages.map((m) => m.body.text), ["m1"]);

step("errors reject the command's promise");
await assert.rejects(bob.client.send("nojoin", "x"), { name: "ChatError", code: "not_joined" });
await assert.rejects(bob.client.join("bad room!"), { code: "invalid_room" });
assert.equal((await bob.client.ping()).pong, true);

step("server drops bob; he stays away while alice writes; resume recovers");
bob.target.url = DEAD;
const gone = once(bob.client, "disconnected");
dropByServer(bob.client);
assert.equal((await gone).code, 1003);
for (let i = 2; i <= 6; i++) await alice.client.send("lobby", { text: "m" + i });
await alice.client.sendDirect("bob", "d2");
// Sent while disconnected: queued, written after the resume, delivered once.
const queued = bob.client.send("lobby", { text: "bob-away" });
await new Promise((r) => setTimeout(r, 300)); // a few refused reconnects
const back = once(bob.client, "connected");
bob.target.url = wsOf(A);
const resumed = await back;
assert.equal(resumed.resumed, true);
assert.equal(resumed.rooms.lobby.recovered, true, JSON.stringify(resumed.rooms));
assert.equal(resumed.rooms["user:bob"].recovered, true, JSON.stringify(resumed.rooms));
await queued;
await waitFor("m6 and d2", () => bob.texts("lobby").includes("m6") && bob.texts("user:bob").includes("d2"));
await waitFor("bob-away at alice", () => alice.texts("lobby").includes("bob-away"));
assert.deepEqual(bob.texts("lobby"), ["m1", "m2", "m3", "m4", "m5", "m6", "bob-away"]);
assert.deepEqual(bob.texts("user:bob"), ["d1", "d2"]);
assertOrdered(bob.log.messages.filter((m) => m.room === "lobby"));

step("duplicates by (room, seq) are dropped");
const m3 = bob.log.messages.find((m) => m.body.text === "m3");
const before = bob.log.messages.length;
bob.client._onText(JSON.stringify(m3));
assert.equal(bob.log.messages.length, before);
assert.equal(bob.log.duplicates, 1);

step("goaway: reconnect after reconnect_after_ms");
const planned = once(bob.client, "reconnecting");
bob.client._onText(JSON.stringify({ type: "goaway", reason: "draining", reconnect_after_ms: 400 }));
const t0 = Date.now();
const again = once(bob.client, "connected");
dropByServer(bob.client); // stands in for the server's 1012 close
assert.equal((await planned).delayMs, 400);
await again;
assert.ok(Date.now() - t0 >= 380, "waited for reconnect_after_ms");
await alice.client.send("lobby", { text: "m7" });
await waitFor("m7", () => bob.texts("lobby").includes("m7"));

step("a real goaway (rebalance): reconnect after reconnect_after_ms, resume");
if (process.env.CLIENT_JS_HARNESS) {
  const told = once(bob.client, "goaway");
  const closed = once(bob.client, "disconnected");
  const aliceAgain = once(alice.client, "connected");
  const bobAgain = once(bob.client, "connected");
  assert.equal(await harness("EVICT_A"), "2"); // alice and bob
  const goaway = await told;
  assert.equal(goaway.reason, "rebalance");
  assert.ok(goaway.reconnect_after_ms >= 0 && goaway.reconnect_after_ms <= 300, JSON.stringify(goaway));
  const close = await closed;
  assert.equal(close.code, 1012);
  assert.equal(close.reconnectInMs, goaway.reconnect_after_ms);
  const [ra, rb] = await Promise.all([aliceAgain, bobAgain]);
  assert.equal(ra.rooms.lobby.recovered, true);
  assert.equal(rb.rooms.lobby.recovered, true);
  await alice.client.send("lobby", { text: "m7b" });
  await waitFor("m7b", () => bob.texts("lobby").includes("m7b"));
}

step("gateway lost its memory (new epoch): resume says recovered:false, the gap is refilled");
alice.target.url = wsOf(B);
bob.target.url = DEAD;
const aliceBack = once(alice.client, "connected");
dropByServer(alice.client);
dropByServer(bob.client);
const ra = await aliceBack;
assert.equal(ra.rooms.lobby.recovered, false);
await alice.client.send("lobby", { text: "m8" }); // bob misses this one live
const bobBack = once(bob.client, "connected");
bob.target.url = wsOf(B);
const rb = await bobBack;
assert.equal(rb.rooms.lobby.recovered, false);
await waitFor("m8 refilled", () => bob.texts("lobby").includes("m8"));
assert.equal(bob.log.messages.find((m) => m.body.text === "m8").replayed, true);
assert.ok(bob.log.resets.some((r) => r.room === "lobby"));
await alice.client.send("lobby", { text: "m9" });
await waitFor("m9", () => bob.texts("lobby").includes("m9"));
const m7b = process.env.CLIENT_JS_HARNESS ? ["m7b"] : [];
assert.deepEqual(bob.texts("lobby"), ["m1", "m2", "m3", "m4", "m5", "m6", "bob-away", "m7", ...m7b, "m8", "m9"]);
// Alice's own messages come back to her too; bob's queued one exactly once.
assert.deepEqual(alice.texts("lobby"), ["m1", "m2", "m3", "m4", "m5", "m6", "bob-away", "m7", ...m7b, "m8", "m9"]);

step("JWT in the subprotocol list; a bad token never connects");
if (process.env.GATEWAY_JWT) {
  const tina = new ChatClient({ url: wsOf(process.env.GATEWAY_JWT), token: () => process.env.TOKEN_OK });
  assert.equal((await tina.connect()).user, "tina");
  await tina.join("lobby");
  assert.equal((await tina.send("lobby", "hi")).seq, 1);
  tina.close();
  const eve = new ChatClient({ url: wsOf(process.env.GATEWAY_JWT), token: process.env.TOKEN_BAD, initialDelayMs: 20, maxDelayMs: 50 });
  const failures = [];
  listen(eve, "reconnecting", (r) => failures.push(r));
  listen(eve, "connected", () => assert.fail("a bad token connected"));
  eve.connect();
  await waitFor("refused attempts", () => failures.length >= 3);
  assert.equal(eve.state === "connected", false);
  eve.close();
}

step("close: no reconnect, pending commands fail");
alice.client.close();
await assert.rejects(alice.client.ping(), { code: "closed" });
bob.client.close();
console.log("client.js: all checks passed");
process.exit(0);
