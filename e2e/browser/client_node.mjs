// Fast test of gateway/static/client.js against real gateways, in Node (no browser): the
// main flow here, then the failure paths of client_checks.mjs (helpers: harness.mjs).
// Run by e2e/tests/client_js.rs (`cargo test`), which starts in-process gateways and
// passes their base URLs:
//   GATEWAY_A=http://127.0.0.1:PORT GATEWAY_B=http://127.0.0.1:PORT2 node client_node.mjs
// Node 20 needs --experimental-websocket; Node 22+ has WebSocket built in.
// B stands in for "A restarted with its memory lost": a new epoch and no history.
// Optional: GATEWAY_JWT (JWT auth), GATEWAY_SLOW (a command burst of 4, for the paced
// gap refill), CLIENT_JS_HARNESS (the Rust test answers @@ACTION lines on stdin).
import assert from "node:assert/strict";
import {
  A,
  B,
  ChatClient,
  DEAD,
  assertOrdered,
  backoffDelay,
  dropByServer,
  harness,
  inboxOf,
  listen,
  made,
  makeUser,
  once,
  sleep,
  step,
  waitFor,
  wsOf,
} from "./harness.mjs";
import { checks } from "./client_checks.mjs";

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
  eve.connect().catch(() => {}); // rejects (closed) at eve.close()
  await waitFor("refused attempts", () => failures.length >= 3);
  assert.equal(eve.state === "connected", false);
  eve.close();
}

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
