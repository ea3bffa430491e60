// Browser end-to-end test of the demo page (gateway/static) in headless Chromium.
// Two browser contexts (alice, bob) chat in a room and by DM; the gateway process is
// restarted in the middle (same port, Redis engine so history survives) and both pages
// must reconnect, resume and show every message exactly once. See README.md.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import url from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(url.fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
// Not CHATGW_*: the gateway reads every CHATGW_* variable as configuration.
const GATEWAY_BIN = process.env.GATEWAY_BIN ?? path.join(root, "target/debug/chat-gateway");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = path.join(root, "target/browser");

const children = new Set();
after(() => {
  for (const c of children) c.kill("SIGKILL");
});

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitUntil(what, pred, ms = 15000) {
  const until = Date.now() + ms;
  for (;;) {
    try {
      if (await pred()) return;
    } catch (e) {
      if (e.fatal) throw e;
    }
    if (Date.now() > until) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function run(cmd, args, env = {}) {
  // The gateway's configuration comes only from `env`, never from the caller's shell.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHATGW_")));
  const child = spawn(cmd, args, { env: { ...inherited, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => (log = (log + d).slice(-20000)));
  child.log = () => log;
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

function stop(child, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", resolve);
    child.kill(signal);
  });
}

async function startRedis() {
  const port = await freePort();
  const child = run("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  child.once("error", (e) => console.error("redis-server (apt-get install redis-server):", e.message));
  await waitUntil("redis-server", () => new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => {
      s.write("PING\r\n");
    });
    s.on("data", (d) => {
      s.destroy();
      resolve(String(d).startsWith("+PONG"));
    });
    s.on("error", () => resolve(false));
  }));
  return { child, url: `redis://127.0.0.1:${port}` };
}

// redisUrl null: the in-memory engine, which forgets everything on restart.
async function startGateway(port, redisUrl) {
  assert.ok(fs.existsSync(GATEWAY_BIN), `${GATEWAY_BIN} missing: cargo build -p chat-gateway`);
  const engine = redisUrl ? { CHATGW_ENGINE: "redis", CHATGW_REDIS__URL: redisUrl } : { CHATGW_ENGINE: "memory" };
  const child = run(GATEWAY_BIN, ["--listen", `127.0.0.1:${port}`], {
    CHATGW_AUTH__MODE: "insecure",
    // SIGTERM drains: goaway + 1012 to every page. No accept grace (there are no
    // endpoints to update here) keeps the restart short.
    CHATGW_DRAIN__ACCEPT_GRACE: "0s",
    ...engine,
    RUST_LOG: "warn",
  });
  try {
    await waitUntil("gateway ready", async () => {
      if (child.exitCode !== null) throw Object.assign(new Error("gateway exited"), { fatal: true });
      return (await fetch(`http://127.0.0.1:${port}/readyz`)).ok;
    });
  } catch (e) {
    throw new Error(`${e.message} (exit ${child.exitCode}); its log:\n${child.log()}`);
  }
  return child;
}

// A signed-in page, with every console error and CSP violation recorded.
async function openChat(browser, base, name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`${name}: ${e.message}`));
  page.on("console", (m) => {
    // The refused reconnects while the gateway is down are expected; nothing else is.
    if (m.type() === "error" && !/WebSocket connection to .* failed/.test(m.text())) {
      page.problems.push(`${name}: ${m.text()}`);
    }
  });
  await page.goto(base + "/");
  await page.fill("#name", name);
  await page.click("#connect");
  await page.waitForSelector("#status[data-state=connected]");
  await page.waitForSelector('#rooms button[data-conv="lobby"].active');
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// Texts of the open conversation, in display order, pending echoes included.
function texts(page) {
  return page.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent));
}

async function seesExactly(page, wanted) {
  await waitUntil(`${wanted.join(", ")} on the page`, async () => {
    const got = await texts(page);
    return wanted.every((w) => got.includes(w)) && (await page.$$("#messages .msg.pending")).length === 0;
  });
  const got = await texts(page);
  for (const w of wanted) assert.equal(got.filter((t) => t === w).length, 1, `${w} shown once: ${got}`);
  // Server order: within an epoch (a room's history), seqs ascend down the page.
  const shown = await page.$$eval("#messages .msg", (els) => els.map((e) => [e.dataset.epoch, Number(e.dataset.seq)]));
  const byEpoch = new Map();
  for (const [epoch, seq] of shown) if (epoch && seq > 0) byEpoch.set(epoch, [...(byEpoch.get(epoch) ?? []), seq]);
  for (const seqs of byEpoch.values()) assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "messages in seq order");
  return got;
}

async function scenario(engine) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const redis = engine === "redis" ? await startRedis() : null;
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let gateway = await startGateway(port, redis?.url);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const alice = await openChat(browser, base, "alice");
    const bob = await openChat(browser, base, "bob");

    // Room chat and presence.
    await say(alice, "hello from alice");
    await seesExactly(bob, ["hello from alice"]);
    await say(bob, "hi alice");
    await seesExactly(alice, ["hello from alice", "hi alice"]);
    await alice.waitForSelector('#presence button[data-user="bob"]');
    await bob.waitForSelector('#presence button[data-user="alice"]');

    // A direct message: alice clicks bob in the presence list.
    await alice.click('#presence button[data-user="bob"]');
    await alice.waitForSelector("#title >> text=Direct: bob");
    await say(alice, "psst, bob");
    await bob.waitForSelector('#dms button[data-conv="dm:alice"] .badge');
    await bob.click('#dms button[data-conv="dm:alice"]');
    await seesExactly(bob, ["psst, bob"]);
    await bob.click('#rooms button[data-conv="lobby"]');
    await alice.click('#rooms button[data-conv="lobby"]');

    // Restart the gateway process on the same port. SIGTERM drains: each page gets a
    // goaway (reason "draining") and close 1012. Alice writes while it is down.
    for (const page of [alice, bob]) {
      await page.evaluate(() => {
        window.goaways = [];
        window.chat.client.on("goaway", (g) => window.goaways.push(g));
      });
    }
    await stop(gateway, "SIGTERM");
    await alice.waitForSelector("#status[data-state=reconnecting]");
    await bob.waitForSelector("#status[data-state=reconnecting]");
    await say(alice, "written while the gateway was down");
    gateway = await startGateway(port, redis?.url);
    // Carol writes the moment it is back, most likely before the pages' backoff ends:
    // those messages reach alice and bob through the resume replay.
    const carol = await browser.newPage();
    await carol.goto(base + "/");
    await carol.evaluate(async () => {
      const ws = new WebSocket(`ws://${location.host}/ws?user=carol`, ["chatgw.v1"]);
      const replies = new Map();
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.ref !== undefined) replies.get(f.ref)?.(f);
      };
      const cmd = (c) => new Promise((r) => {
        replies.set(c.id, r);
        ws.send(JSON.stringify(c));
      });
      await new Promise((r) => (ws.onopen = r));
      await cmd({ type: "join", id: 1, room: "lobby" });
      for (let i = 1; i <= 3; i++) await cmd({ type: "send", id: 1 + i, room: "lobby", body: { text: `carol ${i}` } });
      ws.close();
    });

    for (const page of [alice, bob]) {
      const goaways = await page.evaluate(() => window.goaways);
      assert.equal(goaways[0]?.reason, "draining", JSON.stringify(goaways));
    }
    await alice.waitForSelector("#status[data-state=connected]", { timeout: 40_000 });
    await bob.waitForSelector("#status[data-state=connected]", { timeout: 40_000 });
    const lobby = ["hello from alice", "hi alice", "written while the gateway was down", "carol 1", "carol 2", "carol 3"];
    await seesExactly(alice, lobby);
    await seesExactly(bob, lobby);
    for (const page of [alice, bob]) {
      const resume = await page.evaluate(() => window.chat.client.lastResume);
      // Redis kept the room's history: the resume replays it. The in-memory engine
      // lost it: a new epoch, and the client refills what the new gateway has.
      assert.equal(resume?.rooms?.lobby?.recovered, engine === "redis", JSON.stringify(resume));
      if (engine === "memory") await page.waitForSelector("#messages .note");
    }

    // Still chatting after the restart, in the room and by DM.
    await say(bob, "back after the restart");
    await seesExactly(alice, [...lobby, "back after the restart"]);
    await bob.click('#presence button[data-user="alice"]');
    await say(bob, "dm after the restart");
    await alice.waitForSelector('#dms button[data-conv="dm:bob"] .badge');
    await alice.click('#dms button[data-conv="dm:bob"]');
    await seesExactly(alice, ["dm after the restart"]);
    await alice.click('#rooms button[data-conv="lobby"]');
    await seesExactly(alice, [...lobby, "back after the restart"]);

    const suffix = engine === "redis" ? "" : "-" + engine;
    await alice.screenshot({ path: path.join(SHOTS, `chat${suffix}.png`) });
    await bob.screenshot({ path: path.join(SHOTS, `chat-bob${suffix}.png`) });
    assert.deepEqual([...alice.problems, ...bob.problems], [], "no page errors or CSP violations");
  } finally {
    await browser.close();
    await stop(gateway);
    if (redis) await stop(redis.child);
  }
}

test("two pages chat, DM, survive a gateway restart with resume (redis engine)", { timeout: 120_000 }, () =>
  scenario("redis"));

test("a restarted in-memory gateway: recovered:false, the pages refill and keep working", { timeout: 120_000 }, () =>
  scenario("memory"));
