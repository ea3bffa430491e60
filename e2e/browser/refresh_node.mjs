// client.js keeps a connection alive across token expiry: on `expiring` it asks the
// app's getToken() for a new token and sends `refresh`; a room joined with a subscription
// token is refreshed through getRoomToken(room). Run by e2e/tests/client_js.rs with
// GATEWAY (a JWT gateway warning 2 s ahead, no leeway) and SECRET (its HS256 secret).
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
fs.writeFileSync(copy, await res.text());
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

await client.connect();
await client.join("vip:x", { token: sign({ sub: "rita", aud: AUDIENCE, exp: now() + 4, room: "vip:x" }) });
// Tokens last 4 s and are refreshed 2 s ahead: 9 s cover two refreshes of each.
await new Promise((r) => setTimeout(r, 9000));
assert.deepEqual(closes, [], "never disconnected");
assert.deepEqual(unsubscribed, [], "the room was never taken away");
assert.deepEqual(failures, [], "no errors");
assert.ok(minted >= 3, `connection token minted ${minted} times (connect + refreshes)`);
assert.ok(roomMinted >= 2, `room token minted ${roomMinted} times`);
const ack = await client.send("vip:x", "still a member");
assert.equal(ack.type, "ok");
client.close();
console.log("ok: refreshed in place");
