// Shared by the Node tests of gateway/static/client.js (client_node.mjs and the checks in
// client_checks.mjs): the gateways under test, a WebSocket that counts replies, one that
// tampers with traffic, client.js as the gateway serves it, and small helpers.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import url from "node:url";

export const A = process.env.GATEWAY_A;
export const B = process.env.GATEWAY_B;
assert.ok(A && B, "set GATEWAY_A and GATEWAY_B");
if (typeof WebSocket !== "function") {
  console.error("no global WebSocket: run node with --experimental-websocket (Node 20)");
  process.exit(2);
}

// Every command gets exactly one reply (docs/protocol.md). client.js settles a command on
// its first reply and ignores the rest, so the count is kept here, under client.js: every
// socket it opens counts the ok/error frames per ref and fails the script on a second one.
export class CountingWebSocket extends WebSocket {
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
export function tampered({ outgoing = () => null, incoming = (f) => f }) {
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
export const { ChatClient, backoffDelay, inboxOf } = await import(url.pathToFileURL(copy).href);

export const wsOf = (base) => base.replace(/^http/, "ws") + "/ws";
export const DEAD = "ws://127.0.0.1:1/ws"; // refused at once: "the gateway is down"
export const step = (s) => console.log("# " + s);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, pred, ms = 5000) {
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
export function listen(client, event, fn) {
  return client.on(event, (d) => {
    try {
      fn(d);
    } catch (e) {
      console.log(`FAILED in a ${event} listener: ${e?.stack ?? e}`);
      process.exit(1);
    }
  });
}

export function once(client, event) {
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
export async function harness(action) {
  console.log("@@" + action);
  const { value } = await replies.next();
  return value;
}

export const made = []; // every client makeUser made
// A client whose gateway can be switched or made unreachable, and its log of events.
export function makeUser(name, opts = {}) {
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
export function dropByServer(client) {
  client._ws.send(new Uint8Array([1]));
}

export function assertOrdered(msgs) {
  for (let i = 1; i < msgs.length; i++) {
    if (msgs[i].epoch === msgs[i - 1].epoch) assert.ok(msgs[i].seq > msgs[i - 1].seq, "seq order");
  }
}
