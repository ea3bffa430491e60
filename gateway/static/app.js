// The demo chat page, built only on the public API of /client.js (docs/client.md).
// Everything is rendered with textContent: message bodies are never parsed as HTML.
import { ChatClient, inboxOf } from "/client.js";

const $ = (id) => document.getElementById(id);
const MAX_SHOWN = 500; // per conversation; older ones stay reachable via history

let client = null;
let me = "";
let myInbox = ""; // inboxOf(me), named once per welcome
let current = null; // key of the open conversation: a room name, or "dm:<user>"
// key -> {kind: "room"|"dm", name, msgs: Map(msgKey -> msg), unread, notes: []}
const convs = new Map();
const presence = new Map(); // room -> Set(user)

// ---- conversations --------------------------------------------------------------------

function conv(key) {
  if (!convs.has(key)) {
    const dm = key.startsWith("dm:");
    convs.set(key, { kind: dm ? "dm" : "room", name: dm ? key.slice(3) : key, msgs: new Map(), unread: 0 });
  }
  return convs.get(key);
}

// Who a direct message is "with": the sender of what is in my inbox.
function dmKeyOf(msg) {
  return "dm:" + msg.from;
}

function addMsg(key, msgKey, msg) {
  const c = conv(key);
  if (c.msgs.has(msgKey)) return; // history and live overlap: show each once
  c.msgs.set(msgKey, msg);
  if (key !== current) c.unread += 1;
  if (c.msgs.size > MAX_SHOWN) {
    const oldest = [...c.msgs.entries()].sort(byTime)[0][0];
    c.msgs.delete(oldest);
  }
}

function byTime([, a], [, b]) {
  return (a.ts ?? 0) - (b.ts ?? 0) || (a.seq ?? 0) - (b.seq ?? 0);
}

let ephemerals = 0;

// A message from the server: a room message, or one in my inbox (a DM to me).
function onServerMsg(m) {
  // Ephemeral messages have no seq (nothing to tell two apart by): each is its own.
  const msgKey = m.ephemeral ? `eph:${++ephemerals}` : `${m.epoch}:${m.seq}`;
  if (m.room === myInbox) {
    conv(dmKeyOf(m)).msgs.delete("sent:" + m.msg_id); // a DM to myself
    addMsg(dmKeyOf(m), msgKey, m);
  } else if (m.room.startsWith("user:")) {
    return; // not ours to show
  } else {
    if (m.from === me) conv(m.room).msgs.delete("local:" + m.msg_id); // our echo arrived
    addMsg(m.room, msgKey, m);
  }
}

function bodyText(body) {
  if (typeof body === "string") return body;
  if (body && typeof body.text === "string") return body.text;
  return JSON.stringify(body);
}

// ---- rendering ------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "class") e.className = v;
    else e[k] = v;
  }
  e.append(...children);
  return e;
}

function timeOf(ts) {
  const d = new Date(ts ?? Date.now());
  return el("time", {
    dateTime: d.toISOString(),
    title: d.toLocaleString(),
    textContent: d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }),
  });
}

function render() {
  renderConvList($("rooms"), "room");
  renderConvList($("dms"), "dm");
  const c = current && convs.get(current);
  $("title").textContent = c ? (c.kind === "dm" ? "Direct: " + c.name : "#" + c.name) : "";
  $("leave").hidden = !c || c.kind !== "room";
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(
    ...(c ? [...c.msgs.entries()].sort(byTime) : []).map(([, m]) => {
      if (m.note) return el("li", { class: "note", textContent: m.note });
      return el(
        "li",
        { class: "msg" + (m.pending ? " pending" : "") + (m.from === me ? " mine" : ""), dataset: { from: m.from, seq: m.seq ?? "", epoch: m.epoch ?? "" } },
        el("span", { class: "from", textContent: m.from }),
        timeOf(m.ts),
        m.pending ? el("span", { class: "state", textContent: m.retrying ? "retrying…" : "sending…" }) : "",
        el("span", { class: "text", textContent: bodyText(m.body) }),
      );
    }),
  );
  if (atBottom) list.scrollTop = list.scrollHeight;
  renderPresence();
}

function renderConvList(ul, kind) {
  const items = [...convs.entries()].filter(([, c]) => c.kind === kind);
  items.sort(([a], [b]) => a.localeCompare(b));
  ul.replaceChildren(
    ...items.map(([key, c]) =>
      el(
        "li",
        {},
        el(
          "button",
          { type: "button", class: key === current ? "active" : "", dataset: { conv: key }, onclick: () => open(key) },
          (kind === "room" ? "#" : "@") + c.name,
          c.unread ? el("span", { class: "badge", textContent: String(c.unread) }) : "",
        ),
      ),
    ),
  );
}

function renderPresence() {
  const users = current && !current.startsWith("dm:") ? [...(presence.get(current) ?? [])].sort() : [];
  $("presence").replaceChildren(
    ...users.map((u) =>
      el(
        "li",
        {},
        el("button", { type: "button", textContent: u + (u === me ? " (you)" : ""), dataset: { user: u }, onclick: () => openDm(u) }),
      ),
    ),
  );
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

// A line in a conversation, placed after what is shown so far: messages that arrive
// later (even refilled ones with older server times) go below it.
function note(key, text) {
  const c = conv(key);
  const last = Math.max(0, ...[...c.msgs.values()].map((m) => m.ts ?? 0));
  c.msgs.set("note:" + Date.now() + Math.random(), { note: text, ts: last + 0.5 });
}

// ---- actions --------------------------------------------------------------------------

function open(key) {
  current = key;
  conv(key).unread = 0;
  render();
  if (!key.startsWith("dm:")) refreshPresence(key);
  $("text").focus();
}

function openDm(user) {
  if (!user) return;
  open("dm:" + user);
}

async function refreshPresence(room) {
  try {
    presence.set(room, new Set(await client.presence(room)));
    render();
  } catch {
    /* not joined (any more): nothing to show */
  }
}

async function joinRoom(room) {
  conv(room);
  render();
  try {
    const ok = await client.join(room);
    conv(room).removed = false;
    saveRooms();
    // Exactly the messages up to the join's seq: later ones arrive live, no overlap.
    if (ok.seq > 0) {
      const page = await client.history(room, { before: ok.seq + 1, limit: 50 });
      for (const m of page.messages ?? []) onServerMsg(m);
    }
    await refreshPresence(room);
  } catch (e) {
    note(room, `could not join: ${e.code ?? ""} ${e.message}`);
  }
  render();
}

async function leaveRoom(room) {
  try {
    await client.leave(room);
  } catch {
    /* left already */
  }
  convs.delete(room);
  presence.delete(room);
  saveRooms();
  current = [...convs.keys()][0] ?? null;
  render();
}

async function sendText(text) {
  const c = current && convs.get(current);
  if (!c || !text) return;
  const msgId = crypto.randomUUID();
  const room = c.kind === "dm" ? inboxOf(c.name) : c.name;
  const echoKey = (c.kind === "dm" ? "sent:" : "local:") + msgId;
  // Shown at once; a room message is replaced by the real one when it comes back, a
  // DM (which lands in the other user's inbox, not ours) stays as our copy.
  const echo = { from: me, ts: Date.now(), body: { text }, pending: true, msg_id: msgId };
  c.msgs.set(echoKey, echo);
  render();
  try {
    const ok = await client.send(room, { text }, { msgId });
    echo.pending = false;
    echo.seq = ok.seq;
  } catch (e) {
    c.msgs.delete(echoKey);
    note(current, `not sent (${e.code}): ${text}`);
  }
  render();
}

function roomsKey() {
  return "chatgw.rooms." + me;
}

function saveRooms() {
  const rooms = [...convs.values()].filter((c) => c.kind === "room" && !c.removed).map((c) => c.name);
  try {
    localStorage.setItem(roomsKey(), JSON.stringify(rooms));
  } catch {
    /* storage disabled: rooms are just not remembered */
  }
}

function savedRooms() {
  try {
    const r = JSON.parse(localStorage.getItem(roomsKey()) ?? "null");
    return Array.isArray(r) && r.length ? r.filter((x) => typeof x === "string") : ["lobby"];
  } catch {
    return ["lobby"];
  }
}

// ---- connection -----------------------------------------------------------------------

function start({ name, token }) {
  client = new ChatClient(token ? { token } : { user: name });
  window.chat = { client, convs }; // for the browser test and for poking around
  let everConnected = false;
  setStatus("connecting", "connecting…");
  client.on("connected", async ({ welcome, resumed }) => {
    me = welcome.user;
    myInbox = inboxOf(me);
    $("me").textContent = "signed in as " + me;
    setStatus("connected", "connected · " + welcome.node);
    if (!everConnected) {
      everConnected = true;
      await loadInbox();
      const rooms = savedRooms();
      await Promise.all(rooms.map(joinRoom));
      if (!current) open(rooms[0]);
    } else if (resumed) {
      // Presence events sent while we were away are gone: ask again.
      for (const c of convs.values()) if (c.kind === "room") refreshPresence(c.name);
    }
    render();
  });
  client.on("reconnecting", ({ delayMs }) => {
    const hint = everConnected ? "" : " (is the gateway up, and in this auth mode?)";
    setStatus("reconnecting", `reconnecting in ${(delayMs / 1000).toFixed(1)} s${hint}`);
  });
  client.on("disconnected", ({ code, reason, permanent }) => {
    if (permanent) setStatus("closed", `disconnected for good: ${reason || "no reason given"} (${code}); log in again`);
    else setStatus("reconnecting", `disconnected (${code})`);
  });
  // The server took us out of a room (its subscription token expired, a key was revoked).
  client.on("unsubscribed", ({ room, reason }) => {
    note(room, `removed from this room: ${reason ?? "no reason given"}`);
    conv(room).removed = true;
    saveRooms();
    render();
  });
  // The server could not tell whether a send was stored (unknown_outcome): the client
  // sends it again with the same msg_id, which stores it at most once.
  client.on("retrying", ({ command }) => {
    for (const c of convs.values()) {
      for (const key of ["local:" + command.msg_id, "sent:" + command.msg_id]) {
        const echo = c.msgs.get(key);
        if (echo) echo.retrying = true;
      }
    }
    render();
  });
  client.on("message", (m) => {
    onServerMsg(m);
    render();
  });
  client.on("reset", ({ room, previous }) => {
    if (previous && !room.startsWith("user:")) note(room, "the server lost this room's history; showing what it has now");
    render();
  });
  // One frame per room and batching window: who joined and who left (each user in one list).
  client.on("presence", ({ room, joined, left }) => {
    const set = presence.get(room) ?? new Set();
    for (const user of joined) set.add(user);
    for (const user of left) set.delete(user);
    presence.set(room, set);
    renderPresence();
  });
  client.connect().catch(() => {
    /* closed before the first welcome (logout, or a permanent disconnect: shown above) */
  });
}

async function loadInbox() {
  try {
    const page = await client.history(myInbox, { limit: 100 });
    for (const m of page.messages ?? []) onServerMsg(m);
  } catch {
    /* the inbox replay still delivers what is new */
  }
}

// ---- wiring ---------------------------------------------------------------------------

function init() {
  try {
    $("name").value = localStorage.getItem("chatgw.name") ?? "";
  } catch {
    /* no storage */
  }
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = $("name").value.trim();
    const token = $("token").value.trim();
    if (!token && !/^[A-Za-z0-9_.@:-]{1,64}$/.test(name)) {
      $("login-error").textContent = "Pick a name of letters, digits and _ . @ : - (or paste a token).";
      return;
    }
    try {
      if (!token) localStorage.setItem("chatgw.name", name);
    } catch {
      /* no storage */
    }
    $("login").hidden = true;
    $("chat").hidden = false;
    $("logout").hidden = false;
    me = name;
    myInbox = inboxOf(me);
    start({ name, token });
  });
  $("logout").addEventListener("click", () => {
    client?.close();
    location.reload();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value.trim();
    $("text").value = "";
    sendText(text);
  });
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = $("join-room").value.trim();
    $("join-room").value = "";
    if (!room) return;
    if (room.startsWith("dm:")) {
      // This page keys its direct-message threads "dm:<user>".
      const input = $("join-room");
      input.value = room;
      input.setCustomValidity("this page keeps dm:<user> for direct messages: pick another name");
      input.reportValidity();
      input.addEventListener("input", () => input.setCustomValidity(""), { once: true });
      return;
    }
    if (convs.has(room) && !convs.get(room).removed) return open(room);
    joinRoom(room).then(() => open(room));
  });
  $("dm-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const user = $("dm-user").value.trim();
    $("dm-user").value = "";
    openDm(user);
  });
  $("leave").addEventListener("click", () => current && leaveRoom(current));
  // Back online after a network change: do not wait out the backoff.
  window.addEventListener("online", () => client?.reconnectNow());
}

init();
