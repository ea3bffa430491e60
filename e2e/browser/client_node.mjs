// Fast test of gateway/static/client.js against real gateways, in Node (no browser).
// Run by e2e/tests/client_js.rs (`cargo test`), which starts two in-process gateways
// and passes their base URLs:
//   GATEWAY_A=http://127.0.0.1:PORT GATEWAY_B=http://127.0.0.1:PORT2 node client_node.mjs
// Node 20 needs --experimental-websocket; Node 22+ has WebSocket built in.
// B stands in for "A restarted with its memory lost": a new epoch and no history.
// Optional: GATEWAY_JWT (JWT auth), GATEWAY_SLOW (a command burst of 4, for the paced
// gap refill), CLIENT_JS_HARNESS (the Rust test answers @@ACTION lines on stdin).
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

// A socket whose traffic a check tampers with, for failures a real gateway does not
// produce on demand. `outgoing(cmd)` may return `{reply}` (answered here, never sent) or
// `{delayMs}` (sent later); `incoming(frame, ws)` may return another frame, or null to
// drop it.
function tampered({ outgoing = () => null, incoming = (f) => f }) {
  return class TamperedWebSocket extends CountingWebSocket {
    send(data) {
      const t = typeof data === "string" ? outgoing(JSON.parse(data)) : null;
      if (t?.reply) setTimeout(() => this.fake?.(t.reply), 5);
      else if (t?.delayMs) setTimeout(() => this.readyState === 1 && super.send(data), t.delayMs);
      else super.send(data);
    }
    set onmessage(fn) {
      this.fake = (f) => fn({ data: JSON.stringify(f) });
      super.onmessage = (ev) => {
        const f = incoming(JSON.parse(ev.data), this);
        if (f) fn({ data: JSON.stringify(f) });
      };
    }
    get onmessage() {
      return super.onmessage;
    }
  };
}

// Import the client exactly as the gateway serves it.
const res = await fetch(A + "/client.js");
assert.equal(res.status, 200);
assert.match(res.headers.get("content-type"), /^text\/javascript/);
const copy = path.join(os.tmpdir(), `chatgw-client-${process.pid}.mjs`);
// CLIENT_JS=path imports a working copy instead (no gateway rebuild while editing).
fs.writeFileSync(copy, process.env.CLIENT_JS ? fs.readFileSync(process.env.CLIENT_JS) : await res.text());
process.on("exit", () => fs.rmSync(copy, { force: true }));
const { ChatClient, backoffDelay, inboxOf } = await import(url.pathToFileURL(copy).href);

const wsOf = (base) => base.replace(/^http/, "ws") + "/ws";
const DEAD = "ws://127.0.0.1:1/ws"; // refused at once: "the gateway is down"
const step = (s) => console.log("# " + s);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

const made = []; // every client makeUser made
// A client whose gateway can be switched or made unreachable, and its log of events.
function makeUser(name, opts = {}) {
  const target = { url: wsOf(A) };
  const client = new ChatClient({ url: () => target.url, user: name, initialDelayMs: 50, maxDelayMs: 200, ...opts });
  made.push(client);
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

step("a user id outside the room-name characters gets DMs at its escaped inbox");
assert.equal(inboxOf("zoë a"), "user:zo%C3%AB%20a");
assert.equal(inboxOf("50%"), "user:50%25");
assert.equal(inboxOf("auth0|x+y@z.io"), "user:auth0|x+y@z.io");
const zoe = makeUser("zoë a");
await zoe.client.connect();
await alice.client.sendDirect("zoë a", "z1");
await waitFor("z1", () => zoe.texts("user:zo%C3%AB%20a").includes("z1"));
assert.equal((await zoe.client.history("user:zo%C3%AB%20a")).messages[0].body, "z1");
zoe.client.close();

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

// ---- failure paths: each check runs on its own (new users on A), all are reported ----
const checks = [];
const check = (name, fn) => checks.push({ name, fn });

// Retries a command the gateway refused for its rate (a writer filling many rooms).
async function paced(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (e?.code !== "rate_limited") throw e;
      await sleep(300);
    }
  }
}

check("a resume answered `unavailable` is a failed connection: rooms kept, resumed on the next one", async () => {
  let failResumes = 0;
  const unavailable = (c) => ({ reply: { type: "error", ref: c.id, code: "unavailable", message: "injected" } });
  const outgoing = (c) => (c.type === "resume" && failResumes-- > 0 ? unavailable(c) : null);
  const fay = makeUser("fay", { WebSocket: tampered({ outgoing }) });
  const gus = makeUser("gus1");
  await Promise.all([fay.client.connect(), gus.client.connect()]);
  await fay.client.join("f-room");
  await gus.client.join("f-room");
  failResumes = 1;
  const connects = [];
  const closes = [];
  fay.client.on("connected", (d) => connects.push(d));
  fay.client.on("disconnected", (d) => closes.push(d.code));
  dropByServer(fay.client);
  await waitFor("fay connected again", () => connects.length > 0);
  assert.equal(connects[0].rooms["f-room"]?.recovered, true, JSON.stringify(connects[0].rooms));
  assert.ok(fay.log.errors.some((e) => e.error?.code === "unavailable"), "the failed resume is reported");
  assert.deepEqual(closes, [1003, 4000], "the connection whose resume failed was dropped");
  assert.deepEqual(fay.client.rooms, ["f-room"]);
  await gus.client.send("f-room", "f1");
  await waitFor("f1 at fay", () => fay.texts("f-room").includes("f1"));
});

check("a late resume (inbox `recovered:false`, no epoch) keeps the inbox position: no DM twice", async () => {
  let delay = false;
  const outgoing = (c) => (c.type === "resume" && delay ? { delayMs: 1500 } : null);
  const hal = makeUser("hal", { WebSocket: tampered({ outgoing }) });
  const gus = makeUser("gus2");
  await Promise.all([hal.client.connect(), gus.client.connect()]);
  await gus.client.sendDirect("hal", "h1");
  await gus.client.sendDirect("hal", "h2");
  await waitFor("h1, h2", () => hal.texts("user:hal").length === 2);
  await sleep(400); // acknowledged (200 ms after delivery)
  delay = true; // past the server's 1 s resume grace
  const late = once(hal.client, "connected");
  dropByServer(hal.client);
  const r = await late;
  delay = false;
  assert.equal(r.rooms["user:hal"]?.recovered, false, JSON.stringify(r.rooms));
  assert.equal(hal.client.positions()["user:hal"]?.seq, 2, JSON.stringify(hal.client.positions()));
  const again = once(hal.client, "connected");
  dropByServer(hal.client);
  await again;
  await sleep(300);
  assert.deepEqual(hal.texts("user:hal"), ["h1", "h2"]);
});

check("a copy that takes over the token (a duplicated tab): the original is closed 4409 and resumes from its positions", async () => {
  const lea = makeUser("lea");
  const gus = makeUser("gus5");
  await Promise.all([lea.client.connect(), gus.client.connect()]);
  await lea.client.join("l-room");
  await gus.client.join("l-room");
  await gus.client.send("l-room", "l1");
  await waitFor("l1 at lea", () => lea.texts("l-room").includes("l1"));
  await sleep(400); // the session saved (200 ms after the join)
  const closes = [];
  lea.client.on("disconnected", (d) => closes.push(d.code));
  const back = once(lea.client, "connected");
  const copy = new WebSocket(wsOf(A) + "?user=lea");
  const frames = [];
  copy.onmessage = (ev) => frames.push(JSON.parse(ev.data));
  await waitFor("the copy's welcome", () => frames.some((f) => f.type === "welcome"));
  copy.send(JSON.stringify({ type: "resume", id: 1, resume_token: lea.client._resumeFrom.resume_token }));
  await waitFor("the copy resumed", () => frames.some((f) => f.ref === 1));
  assert.equal(frames.find((f) => f.ref === 1).rooms?.["l-room"]?.recovered, true);
  const r = await back;
  assert.deepEqual(closes, [4409]);
  assert.equal(r.rooms["l-room"]?.recovered, true, JSON.stringify(r.rooms));
  await gus.client.send("l-room", "l2");
  await waitFor("l2 at lea and at the copy", () => lea.texts("l-room").includes("l2") && frames.some((f) => f.body === "l2"));
  assert.deepEqual(lea.texts("l-room"), ["l1", "l2"]);
  copy.close();
});

check("a send over the frame limit (1009) is refused with too_big, never sent again", async () => {
  const ivy = makeUser("ivy", { timeoutMs: 5000 });
  await ivy.client.connect();
  await ivy.client.join("big");
  const reconnects = [];
  ivy.client.on("reconnecting", (r) => reconnects.push(r));
  const t0 = Date.now();
  await assert.rejects(ivy.client.send("big", "x".repeat(70 * 1024)), { code: "too_big" });
  assert.ok(Date.now() - t0 < 3000, "refused at the close, not at the deadline");
  assert.equal((await ivy.client.send("big", "small")).room, "big");
  assert.equal(reconnects.length, 1);
  // Now known to be too big: refused before it is sent, the connection stays.
  await assert.rejects(ivy.client.send("big", "y".repeat(70 * 1024)), { code: "too_big" });
  await sleep(200);
  assert.equal(reconnects.length, 1);
  assert.deepEqual(ivy.texts("big"), ["small"]);
});

check("connections that die soon after connecting back off: the attempt count grows", async () => {
  const kai = makeUser("kai");
  await kai.client.connect();
  let drops = 3;
  kai.client.on("connected", () => drops-- > 0 && dropByServer(kai.client));
  const attempts = [];
  kai.client.on("reconnecting", (r) => attempts.push(r.attempt));
  dropByServer(kai.client);
  await waitFor("four reconnects", () => attempts.length >= 4 && kai.client.connected, 8000);
  assert.deepEqual(attempts, [1, 2, 3, 4]);
});

check("join with `since` answered recovered:false refills the gap and emits reset", async () => {
  const gus = makeUser("gus4");
  const jo = makeUser("jo");
  await Promise.all([gus.client.connect(), jo.client.connect()]);
  await gus.client.join("j-room");
  for (const t of ["j1", "j2", "j3"]) await gus.client.send("j-room", t);
  const ok = await jo.client.join("j-room", { since: 7, epoch: "gone" });
  assert.equal(ok.recovered, false);
  await waitFor("j1..j3 refilled", () => jo.texts("j-room").length >= 3);
  assert.ok(jo.log.resets.some((r) => r.room === "j-room"), "reset emitted");
  assert.ok(jo.log.messages.every((m) => m.room !== "j-room" || m.replayed), "refilled");
  await gus.client.send("j-room", "j4");
  await waitFor("j4", () => jo.texts("j-room").includes("j4"));
  assert.deepEqual(jo.texts("j-room"), ["j1", "j2", "j3", "j4"]);
});

check("a gap refill of many rooms is paced: no rate-limit close, no gap skipped", async () => {
  const SLOW = process.env.GATEWAY_SLOW; // limits.messageBurst 4
  if (!SLOW) return;
  const rooms = Array.from({ length: 20 }, (_, i) => "gap" + i);
  const lee = makeUser("lee");
  await lee.client.connect();
  for (const room of rooms) {
    await paced(() => lee.client.join(room));
    await paced(() => lee.client.send(room, "a-" + room));
  }
  // The same rooms hold a message on SLOW, in another epoch.
  const dave = new ChatClient({ url: wsOf(SLOW), user: "dave" });
  await dave.connect();
  for (const room of rooms) {
    await paced(() => dave.join(room));
    await paced(() => dave.send(room, "s-" + room));
  }
  dave.close();
  const closes = [];
  lee.client.on("disconnected", (d) => closes.push(d.code));
  const back = once(lee.client, "connected");
  lee.target.url = wsOf(SLOW);
  dropByServer(lee.client);
  const r = await back;
  assert.ok(rooms.every((room) => r.rooms[room]?.recovered === false), JSON.stringify(r.rooms));
  await waitFor("every gap refilled", () => rooms.every((room) => lee.texts(room).length >= 2), 15000);
  assert.deepEqual(closes, [1003], "no close for too many refused commands");
  for (const room of rooms) {
    assert.deepEqual(lee.texts(room), ["a-" + room, "s-" + room]);
    assert.equal(lee.log.messages.find((m) => m.body === "s-" + room).replayed, true);
  }
});

check("close() then connect() while the user/token function resolves opens one socket", async () => {
  let opened = 0;
  class Counted extends CountingWebSocket {
    constructor(...args) {
      super(...args);
      opened += 1;
    }
  }
  const user = async () => (await sleep(150), "mo");
  const mo = new ChatClient({ url: wsOf(A), user, WebSocket: Counted });
  mo.connect();
  mo.close();
  assert.equal((await mo.connect()).user, "mo");
  await sleep(300);
  assert.equal(opened, 1);
  mo.close();
});

check("reconnectNow() keeps the retry of a send answered unknown_outcome", async () => {
  let tamper = false;
  const incoming = (f, ws) => {
    if (!tamper || f.type !== "ok" || f.msg_id !== "lea-1") return f;
    tamper = false;
    setTimeout(() => ws.send(new Uint8Array([1])), 0); // then the connection drops
    return { type: "error", ref: f.ref, code: "unknown_outcome", message: "injected" };
  };
  const lea = makeUser("lea", { timeoutMs: 4000, WebSocket: tampered({ incoming }) });
  const gus = makeUser("gus8");
  await Promise.all([lea.client.connect(), gus.client.connect()]);
  await lea.client.join("l-room");
  await gus.client.join("l-room");
  tamper = true;
  const gone = once(lea.client, "disconnected");
  const sent = lea.client.send("l-room", "l1", { msgId: "lea-1" });
  await gone;
  assert.equal(lea.client.state, "waiting");
  lea.client.reconnectNow();
  assert.equal((await sent).duplicate, true, "stored by the first attempt");
  await sleep(200);
  assert.deepEqual(gus.texts("l-room"), ["l1"]);
});

check("close() while connecting leaves no connect timer running", async () => {
  const real = { set: globalThis.setTimeout, clear: globalThis.clearTimeout };
  const live = new Map();
  globalThis.setTimeout = (fn, ms, ...args) => {
    const t = real.set(() => (live.delete(t), fn(...args)), ms);
    live.set(t, ms);
    return t;
  };
  globalThis.clearTimeout = (t) => (live.delete(t), real.clear(t));
  try {
    class Silent {
      readyState = 0;
      close() {}
    }
    const nia = new ChatClient({ url: DEAD, user: "nia", WebSocket: Silent });
    nia.connect();
    await new Promise((r) => real.set(r, 20));
    nia.close();
    assert.deepEqual([...live.values()].filter((ms) => ms === 10000), []);
  } finally {
    Object.assign(globalThis, { setTimeout: real.set, clearTimeout: real.clear });
  }
});

const failed = [];
for (const { name, fn } of checks) {
  step(name);
  const mine = made.length;
  try {
    await Promise.race([fn(), sleep(25000).then(() => Promise.reject(new Error("check timed out")))]);
  } catch (e) {
    console.log(`FAILED check: ${name}: ${e?.stack ?? e}`);
    failed.push(name);
  }
  for (const c of made.slice(mine)) c.close();
}
if (failed.length) {
  console.log(`FAILED: ${failed.length} of ${checks.length} checks:\n  ${failed.join("\n  ")}`);
  process.exit(1);
}

step("close: no reconnect, pending commands fail");
alice.client.close();
await assert.rejects(alice.client.ping(), { code: "closed" });
bob.client.close();
console.log("client.js: all checks passed");
process.exit(0);
