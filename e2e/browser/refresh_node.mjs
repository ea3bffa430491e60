// client.js keeps a connection alive across token expiry: on `expiring` it asks the
// app's getToken() for a new token and sends `refresh`; a room joined with a subscription
// token is refreshed through getRoomToken(room). Run by e2e/tests/client_js.rs with
// GATEWAY (a JWT gateway warning 2 s ahead, no leeway) and SECRET (its HS256 secret).
// A fixed token (a string, not a function) cannot be renewed: its 4401 close is final.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import url from "node:url";

const GATEWAY = process.env.GATEWAY;
const SECRET = process.env.SECRET;
const AUDIENCE = process.env.AUDIENCE;
assert.ok(GATEWAY && SECRET && AUDIENCE, "set GATEWAY, SECRET and AUDIENCE");

const res = await fetch(GATEWAY + "/client.js");
assert.equal(res.status, 200);
const copy = path.join(os.tmpdir(), `chatgw-refresh-${process.pid}.mjs`);
// CLIENT_JS=path imports a working copy instead (no gateway rebuild while editing).
fs.writeFileSync(copy, process.env.CLIENT_JS ? fs.readFileSync(process.env.CLIENT_JS) : await res.text());
process.on("exit", () => fs.rmSync(copy, { force: true }));
const { ChatClient } = await import(url.pathToFileURL(copy).href);

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
function sign(claims) {
  const head = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return head + "." + crypto.createHmac("sha256", SECRET).update(head).digest("base64url");
}
const now = () => Math.floor(Date.now() / 1000);
let minted = 0;
let roomMinted = 0;
const client = new ChatClient({
  url: GATEWAY.replace(/^http/, "ws") + "/ws",
  getToken: async () => {
    minted += 1;
    return sign({ sub: "rita", aud: AUDIENCE, exp: now() + 4 });
  },
  getRoomToken: async (room) => {
    roomMinted += 1;
    return sign({ sub: "rita", aud: AUDIENCE, exp: now() + 4, room });
  },
});
const closes = [];
client.on("disconnected", (d) => closes.push(d.code));
const unsubscribed = [];
client.on("unsubscribed", (f) => unsubscribed.push(f.room));
const failures = [];
client.on("error", (e) => failures.push(e));

// Expires in 1-2 s and nothing can replace it: the close (4401) ends the client, with an
// error saying why, instead of reconnecting with the dead token forever.
const fixed = new ChatClient({
  url: GATEWAY.replace(/^http/, "ws") + "/ws",
  token: sign({ sub: "sam", aud: AUDIENCE, exp: now() + 2 }),
  initialDelayMs: 20,
  maxDelayMs: 50,
});
const fixedEvents = [];
fixed.on("disconnected", (d) => fixedEvents.push(`disconnected ${d.code} permanent=${d.permanent}`));
fixed.on("reconnecting", () => fixedEvents.push("reconnecting"));
fixed.on("error", (e) => fixedEvents.push(`error ${e.error?.code}`));
await fixed.connect();

await client.connect();
await client.join("vip:x", { token: sign({ sub: "rita", aud: AUDIENCE, exp: now() + 4, room: "vip:x" }) });
// Tokens last 4 s and are refreshed 2 s ahead: 9 s cover two refreshes of each.
await new Promise((r) => setTimeout(r, 9000));
assert.deepEqual(closes, [], "never disconnected");
assert.deepEqual(unsubscribed, [], "the room was never taken away");
assert.deepEqual(failures, [], "no errors");
assert.ok(minted >= 3, `connection token minted ${minted} times (connect + refreshes)`);
assert.ok(roomMinted >= 2, `room token minted ${roomMinted} times`);
assert.deepEqual(fixedEvents, ["error unauthorized", "disconnected 4401 permanent=true"]);
assert.equal(fixed.state, "closed");
const ack = await client.send("vip:x", "still a member");
assert.equal(ack.type, "ok");
client.close();
console.log("ok: refreshed in place");
