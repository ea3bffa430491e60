import assert from "node:assert/strict";
import {
  A,
  ChatClient,
  CountingWebSocket,
  DEAD,
  dropByServer,
  listen,
  made,
  makeUser,
  once,
  sleep,
  tampered,
  waitFor,
  wsOf,
} from "./harness.mjs";

// Failure paths: each check runs on its own (new users on A) and all are reported
// (client_node.mjs runs them after its main flow).
export const checks = [];
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
  const first = mo.connect();
  mo.close();
  await assert.rejects(first, { code: "closed" }, "the first connect() settles at close()");
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
    nia.connect().catch(() => {});
    await new Promise((r) => real.set(r, 20));
    nia.close();
    assert.deepEqual([...live.values()].filter((ms) => ms === 10000), []);
  } finally {
    Object.assign(globalThis, { setTimeout: real.set, clearTimeout: real.clear });
  }
});

check("reconnects with nothing delivered in between replay no acknowledged DM", async () => {
  const gus = makeUser("gus9");
  const first = makeUser("ola"); // a first device reads o1 and o2 and acknowledges them
  await Promise.all([gus.client.connect(), first.client.connect()]);
  await gus.client.sendDirect("ola", "o1");
  await gus.client.sendDirect("ola", "o2");
  await waitFor("o1, o2", () => first.texts("user:ola").length === 2);
  await sleep(400); // acknowledged (200 ms after delivery)
  first.client.close();
  const ola = makeUser("ola"); // a new device starts after the acknowledged cursor
  await ola.client.connect();
  await ola.client.join("o-room"); // its session is saved with a room
  await sleep(400);
  for (let i = 0; i < 2; i++) {
    const back = once(ola.client, "connected");
    dropByServer(ola.client);
    await back;
  }
  await gus.client.sendDirect("ola", "o3");
  await waitFor("o3", () => ola.texts("user:ola").includes("o3"));
  await sleep(200);
  assert.deepEqual(ola.texts("user:ola"), ["o3"]);
});

check("an inbox the resume could not restore: nothing acknowledged past its gap, which the next connection brings once", async () => {
  let failInbox = false;
  // Stands in for a store that failed the inbox's resume: the reply says so and the
  // replay of the missed DMs (p2, p3) never comes; live DMs still flow.
  const incoming = (f) => {
    if (!failInbox) return f;
    if (f.type === "ok" && f.rooms?.["user:pia"]) {
      return { ...f, rooms: { ...f.rooms, "user:pia": { error: "unavailable", message: "injected" } } };
    }
    return f.type === "msg" && f.room === "user:pia" && f.seq <= 3 ? null : f;
  };
  const pia = makeUser("pia", { WebSocket: tampered({ incoming }) });
  const gus = makeUser("gus10");
  await Promise.all([pia.client.connect(), gus.client.connect()]);
  await gus.client.sendDirect("pia", "p1");
  await waitFor("p1", () => pia.texts("user:pia").includes("p1"));
  await sleep(400); // acknowledged
  pia.target.url = DEAD;
  const gone = once(pia.client, "disconnected");
  dropByServer(pia.client);
  await gone;
  await gus.client.sendDirect("pia", "p2");
  await gus.client.sendDirect("pia", "p3");
  failInbox = true;
  const back = once(pia.client, "connected");
  pia.target.url = wsOf(A);
  await back;
  assert.ok(pia.log.errors.some((e) => e.room === "user:pia" && e.error.code === "unavailable"));
  await gus.client.sendDirect("pia", "p4"); // live, past the gap
  await waitFor("p4", () => pia.texts("user:pia").includes("p4"));
  await sleep(400); // an acknowledgement of p4 would have gone out by now
  failInbox = false;
  const again = once(pia.client, "connected");
  dropByServer(pia.client);
  await again;
  await waitFor("p2, p3", () => pia.texts("user:pia").includes("p3"));
  await sleep(400); // acknowledged now, up to p4
  const third = once(pia.client, "connected");
  dropByServer(pia.client);
  await third;
  await sleep(300);
  assert.deepEqual(pia.texts("user:pia"), ["p1", "p4", "p2", "p3"], "each once");
});

check("a socket that falls silent and never reports its close is replaced", async () => {
  // A dead path: nothing arrives any more and the close event never fires.
  class Deafened extends CountingWebSocket {
    set onmessage(fn) {
      super.onmessage = (ev) => {
        if (this.deaf) return;
        const f = JSON.parse(ev.data);
        if (f.type === "welcome") f.heartbeat_ms = 1000; // the client pings every 500 ms
        fn({ data: JSON.stringify(f) });
      };
    }
    get onmessage() {
      return super.onmessage;
    }
    set onclose(fn) {
      super.onclose = (ev) => this.deaf || fn(ev);
    }
    get onclose() {
      return super.onclose;
    }
  }
  const ron = makeUser("ron", { WebSocket: Deafened });
  await ron.client.connect();
  const closes = [];
  ron.client.on("disconnected", (d) => closes.push(d.code));
  const back = once(ron.client, "connected");
  ron.client._ws.deaf = true;
  await back;
  assert.deepEqual(closes, [4001]);
});

check("a user function that never settles, or an upgrade without a welcome, is given up at connectTimeoutMs", async () => {
  let calls = 0;
  const user = () => (++calls === 1 ? new Promise(() => {}) : "sam");
  const sam = makeUser("sam", { user, connectTimeoutMs: 500 });
  assert.equal((await sam.client.connect()).user, "sam");
  assert.equal(calls, 2);
  let sockets = 0;
  class FirstMute extends CountingWebSocket {
    constructor(...args) {
      super(...args);
      this.mute = ++sockets === 1;
    }
    set onmessage(fn) {
      super.onmessage = (ev) => this.mute || fn(ev);
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  const tom = makeUser("tom", { WebSocket: FirstMute, connectTimeoutMs: 500 });
  const closes = [];
  tom.client.on("disconnected", (d) => closes.push(d.code));
  assert.equal((await tom.client.connect()).user, "tom");
  assert.equal(sockets, 2);
  assert.deepEqual(closes, [4002]);
});

check("4401 with a token function: the reconnect waits a jittered moment, not none", async () => {
  const uma = makeUser("uma", { token: async () => "" }); // insecure mode: connects as ?user=
  await uma.client.connect();
  const random = Math.random;
  Math.random = () => 0.5;
  try {
    const planned = once(uma.client, "reconnecting");
    uma.client._abandon(uma.client._ws, 4401, "token expired");
    assert.equal((await planned).delayMs, 25, "half of initialDelayMs (50)");
  } finally {
    Math.random = random;
  }
  await waitFor("uma back", () => uma.client.connected);
});

check("a reconnect as another user fails what the old one queued", async () => {
  let name = "val";
  const val = makeUser("val", { user: () => name });
  const gus = makeUser("gus11");
  await Promise.all([val.client.connect(), gus.client.connect()]);
  val.target.url = DEAD;
  const gone = once(val.client, "disconnected");
  dropByServer(val.client);
  await gone;
  const queued = val.client.sendDirect("gus11", "from val");
  name = "wes";
  val.target.url = wsOf(A);
  await assert.rejects(queued, { code: "closed" });
  assert.equal(val.client.welcome.user, "wes");
  await sleep(200);
  assert.deepEqual(gus.texts("user:gus11"), []);
});

check("a refresh refused for the moment is asked again; none goes out without its connection", async () => {
  const JWT = process.env.GATEWAY_JWT;
  if (!JWT) return;
  let refreshes = 0;
  const unavailable = (c) => ({ reply: { type: "error", ref: c.id, code: "unavailable", message: "injected" } });
  const outgoing = (c) => (c.type === "refresh" && refreshes++ === 0 ? unavailable(c) : null);
  const tia = new ChatClient({
    url: wsOf(JWT),
    token: () => process.env.TOKEN_OK,
    WebSocket: tampered({ outgoing }),
    initialDelayMs: 50,
    maxDelayMs: 100,
    timeoutMs: 1000,
  });
  made.push(tia);
  const errors = [];
  // (Failed connects to DEAD below report errors without a code.)
  listen(tia, "error", (e) => e.error?.code && errors.push(e.error.code));
  await tia.connect();
  tia._onText(JSON.stringify({ type: "expiring", expires_at: Date.now() + 10_000 }));
  await waitFor("a second refresh", () => refreshes === 2, 8000);
  await sleep(300);
  assert.deepEqual(errors, [], "answered on the second try, no error");
  // Warned while its connection is gone: nothing to refresh (the next connection gets a
  // fresh token), and no error at the command's deadline.
  tia.opts.url = DEAD;
  const gone = once(tia, "disconnected");
  dropByServer(tia);
  await gone;
  tia._onText(JSON.stringify({ type: "expiring", expires_at: Date.now() + 10_000 }));
  await sleep(1500);
  assert.deepEqual(errors, []);
  assert.equal(refreshes, 2);
});
