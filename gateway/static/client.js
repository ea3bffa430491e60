// chatgateway browser client (protocol v1): a plain ES module, no build step, no
// dependencies. Served by the gateway at /client.js; copy it into your product as is.
// API: docs/client.md. Wire protocol: docs/protocol.md.

const SUBPROTOCOL = "chatgw.v1";
const CONNECT_TIMEOUT_MS = 10000;
// A connection must stay up this long before the backoff starts over: one that keeps
// failing soon after its welcome (a resume refused, a frame the server closes on) backs off.
const STABLE_MS = 10000;
// History errors a gap refill waits out and retries instead of skipping the gap.
const REFILL_RETRY = new Set(["rate_limited", "unavailable", "timeout"]);

/** A command refused by the server (`error` frame) or by the client (`code` below). */
export class ChatError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = "ChatError";
    this.code = code; // protocol error code, or timeout/closed/too_big/unauthorized (client)
    this.frame = frame;
  }
}

/**
 * Reconnect delay with exponential backoff and full jitter: a uniform random delay in
 * [0, min(max, initial * 2^attempt)]. Full jitter spreads a crowd of clients that lost
 * the same gateway, so they do not all come back in the same millisecond.
 */
export function backoffDelay(attempt, initialMs = 1000, maxMs = 30000, random = Math.random) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

const byteLength = (cmd) => new TextEncoder().encode(JSON.stringify(cmd)).length;

/**
 * The inbox room of user `id` (where its direct messages go): `user:` and the id, each
 * UTF-8 byte that is no room-name character (A-Z a-z 0-9 _ - . : @ | +), `%` included,
 * written as `%XX`. `inboxOf("zoë a")` is `"user:zo%C3%AB%20a"`; most ids stay as they are.
 */
export function inboxOf(id) {
  let name = "user:";
  for (const b of new TextEncoder().encode(id)) {
    const c = String.fromCharCode(b);
    name += /^[A-Za-z0-9_.:@|+-]$/.test(c) ? c : "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return name;
}

function randomId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("ChatClient: no `url` given and no page location to derive it from");
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
}

// `url`, `token` and `user` may be values or (async) functions: a function is called on
// every connect, so a product can refresh an expiring token or pick another gateway.
async function resolve(v) {
  return typeof v === "function" ? await v() : v;
}

export class ChatClient {
  /**
   * @param {object} opts
   * @param {string|function} [opts.url]   ws(s)://host/ws; defaults to /ws on this page's host
   * @param {string|function} [opts.token] a JWT, offered as `bearer.<jwt>` subprotocol
   * @param {function} [opts.getToken]    async () => a fresh connection JWT: called when the
   *   server says the token is `expiring` (then sent in `refresh`, no reconnect) and on
   *   every connect; defaults to `opts.token` when that is a function
   * @param {function} [opts.getRoomToken] async (room) => a fresh subscription token for a
   *   room joined with one, when the server says it is `expiring`
   * @param {string|function} [opts.user]  insecure dev mode: connect as `?user=`
   * @param {function} [opts.WebSocket]    constructor to use (default: globalThis.WebSocket)
   * @param {number} [opts.initialDelayMs=1000] first backoff ceiling
   * @param {number} [opts.maxDelayMs=30000]    backoff ceiling
   * @param {number} [opts.timeoutMs=15000]     a command's deadline, reconnects included
   * @param {boolean} [opts.autoAck=true]       acknowledge direct messages once delivered
   *                                            to the app (false: call ackInbox yourself)
   * @param {number} [opts.maxFrameBytes]       the gateway's limits.maxFrameBytes: bigger
   *                                            commands are refused (too_big) unsent
   * @param {number} [opts.connectTimeoutMs=10000] from the start of a connect (the token
   *                                            function included) to its welcome
   */
  constructor(opts = {}) {
    this.opts = {
      url: opts.url ?? defaultUrl,
      token: opts.getToken ?? opts.token,
      user: opts.user,
      getRoomToken: opts.getRoomToken,
      initialDelayMs: opts.initialDelayMs ?? 1000,
      maxDelayMs: opts.maxDelayMs ?? 30000,
      timeoutMs: opts.timeoutMs ?? 15000,
      autoAck: opts.autoAck ?? true,
      connectTimeoutMs: opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
    };
    // Longer commands (bytes) are refused unsent: from the option, or learned from a 1009.
    this._maxFrame = opts.maxFrameBytes ?? Infinity;
    this.WebSocketImpl = opts.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocketImpl !== "function") {
      throw new Error("ChatClient: no WebSocket (Node 20: run with --experimental-websocket)");
    }
    this.state = "idle"; // idle | connecting | resuming | connected | waiting | closed
    this.welcome = null; // the last welcome frame
    this._inbox = null; // inboxOf(welcome.user), named once per welcome
    this.lastResume = null; // the last resume reply (rooms and their recovered flags)
    this._listeners = new Map();
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {cmd, resolve, reject, timer, sent}
    this._queue = []; // pending entries not yet written to the current socket
    this._rooms = new Set(); // joined rooms (confirmed by `ok`)
    this._pos = new Map(); // room (and own inbox) -> {seq, epoch}: the last seq delivered
    this._filling = new Map(); // room -> buffered live msgs while a gap is refilled
    this._fillChain = Promise.resolve(); // refills run one after another
    this._resumeFrom = null; // the welcome whose session the next resume restores
    this._gen = 0; // bumped by every _open and close(): an older _open gives up
    this._attempt = 0;
    this._goawayDelay = null;
    this._timers = new Set();
    this._lastFrameAt = 0;
    this._pingSentAt = 0; // the last keep-alive ping that went out
    this._ackTimer = null;
    this._connectTimer = null;
    this._onClosed = new Set(); // connect() promises waiting for their welcome
    // Set while the own inbox could not be resumed (see _applyResume): {from, seen}.
    this._inboxGap = null;
  }

  // ---- events -----------------------------------------------------------------------

  /** Subscribes to an event; returns a function that unsubscribes. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  _emit(event, detail) {
    for (const fn of this._listeners.get(event) ?? []) {
      // A listener's bug must not break the client's bookkeeping.
      try {
        fn(detail);
      } catch (e) {
        console.error(`chatgateway client: ${event} listener failed`, e);
      }
    }
  }

  // ---- connection -------------------------------------------------------------------

  /** Connects (and keeps reconnecting until close()). Resolves on the first welcome;
   * rejects with code `closed` if the client is closed first (close(), or a permanent
   * disconnect). */
  connect() {
    if (this.state === "connected") return Promise.resolve(this.welcome);
    if (this.state === "closed") this.state = "idle";
    const first = new Promise((resolve, reject) => {
      const closed = (err) => {
        off();
        reject(err);
      };
      const off = this.on("connected", (d) => {
        off();
        this._onClosed.delete(closed);
        resolve(d.welcome);
      });
      this._onClosed.add(closed);
    });
    if (this.state === "idle") this._open();
    return first;
  }

  /** Closes for good: no reconnect; pending commands fail with code "closed". */
  close() {
    this.state = "closed";
    this._gen += 1;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    clearInterval(this._pinger);
    clearTimeout(this._ackTimer);
    for (const closed of this._onClosed) closed(new ChatError("closed", "client closed"));
    this._onClosed.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      try {
        ws.close(1000, "bye");
      } catch {
        /* already closing */
      }
    }
    for (const [id, p] of this._pending) this._fail(id, p, new ChatError("closed", "client closed"));
    this._queue = [];
    // Held messages were not delivered: positions stay before them, a resume replays them.
    this._filling.clear();
    this._fillChain = Promise.resolve();
  }

  get connected() {
    return this.state === "connected";
  }

  /** Rooms this client is in (resumed automatically after a reconnect). */
  get rooms() {
    return [...this._rooms];
  }

  /** The last seq (and epoch) delivered per room, own inbox included. */
  positions() {
    return Object.fromEntries([...this._pos].map(([r, p]) => [r, { ...p }]));
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _clear(t) {
    clearTimeout(t);
    this._timers.delete(t);
  }

  async _open() {
    const gen = ++this._gen;
    this.state = "connecting";
    let ws;
    let opened = false;
    let gone;
    // One deadline from here to the welcome: a token or URL function that never settles,
    // a SYN into a black hole (which can take minutes to fail on its own), an upgrade
    // that never sends its welcome.
    this._clear(this._connectTimer);
    this._connectTimer = this._later(this.opts.connectTimeoutMs, () => {
      if (gen !== this._gen) return;
      if (!ws) {
        // Still resolving url/token/user: this attempt is given up (its result ignored).
        this._gen += 1;
        this._emit("error", { error: new Error("connect timeout (url, token or user did not resolve)") });
        this._scheduleReconnect({ code: 4002, reason: "connect timeout" });
      } else if (!opened) {
        gone(4002, "connect timeout");
        try {
          ws.close();
        } catch {
          /* never opened */
        }
      } else {
        this._abandon(ws, 4002, "no welcome");
      }
    });
    try {
      const base = await resolve(this.opts.url);
      const token = await resolve(this.opts.token);
      const user = await resolve(this.opts.user);
      if (gen !== this._gen) return; // closed (or connected anew) meanwhile
      const url = new URL(base);
      const protocols = [SUBPROTOCOL];
      // Browsers cannot set Authorization on a WebSocket: the token rides in the
      // subprotocol list and the server answers with plain chatgw.v1.
      if (token) protocols.push("bearer." + token);
      else if (user) url.searchParams.set("user", user);
      ws = new this.WebSocketImpl(url.toString(), protocols);
    } catch (e) {
      if (gen !== this._gen) return;
      this._emit("error", { error: e });
      this._scheduleReconnect({ code: 0, reason: String(e?.message ?? e) });
      return;
    }
    this._ws = ws;
    // Runs once per socket, whichever of close, error-before-open or timeout comes first.
    gone = (code, reason) => {
      if (this._ws !== ws) return;
      this._clear(this._connectTimer);
      this._ws = null;
      this._onClose({ code, reason, opened });
    };
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev) => {
      if (this._ws === ws) this._onText(ev.data);
    };
    ws.onerror = () => {
      // Details are not exposed to scripts (a refused upgrade looks like a network
      // error). Browsers follow with a close event; Node 20's WebSocket may not when
      // the connection was refused, so a failed connect counts as closed right here.
      if (this._ws === ws) this._emit("error", { error: new Error("websocket error"), opened });
      if (!opened) gone(1006, "connect failed");
    };
    ws.onclose = (ev) => gone(ev.code, ev.reason);
  }

  // Drops a socket that is still open as if it had closed (the close event is ignored).
  _abandon(ws, code, reason) {
    if (this._ws !== ws) return;
    this._ws = null;
    try {
      ws.close(code, reason);
    } catch {
      /* closing already */
    }
    this._onClose({ code, reason, opened: true });
  }

  _onClose({ code, reason, opened }) {
    clearInterval(this._pinger);
    this._clear(this._connectTimer);
    const wasConnected = this.state === "connected" || this.state === "resuming";
    if (code === 1009) this._refuseTooBig();
    // Commands on the dead socket may or may not have reached the server. All of them
    // are safe to repeat (send keeps its msg_id, which the server dedups), so they go
    // back to the queue and are sent again after the resume.
    const resend = [...this._pending.entries()]
      .filter(([, p]) => p.sent && p.cmd.type !== "resume")
      .map(([id]) => id);
    for (const [id, p] of this._pending) {
      if (p.cmd.type === "resume") this._fail(id, p, new ChatError("closed", "connection lost"));
    }
    this._queue = [...resend, ...this._queue.filter((id) => !resend.includes(id))];
    for (const id of resend) {
      const p = this._pending.get(id);
      if (p) p.sent = false;
    }
    if (this.state === "closed") return;
    // Token expired (4401) or its key was revoked (4403): reconnect soon with a fresh
    // token from `token`/`getToken` rather than backing off, within the first backoff
    // ceiling: a revoked key closes every client of it at once, and they must not all ask
    // the token service and the gateway in the same millisecond. A fixed token would only
    // be refused again. 4101: the backend disconnected this user and asked it not to
    // come back.
    const auth = code === 4401 || code === 4403;
    if (auth && typeof this.opts.token === "function") {
      this._goawayDelay = backoffDelay(0, this.opts.initialDelayMs, this.opts.maxDelayMs);
    }
    else if (auth || code === 4101) {
      this.close();
      const why = `${reason || "token refused"} (close ${code}) and no token function for a new one`;
      if (auth) this._emit("error", { error: new ChatError("unauthorized", why) });
      this._emit("disconnected", { code, reason, reconnectInMs: null, permanent: true });
      return;
    }
    const delay = this._scheduleReconnect({ code, reason });
    if (wasConnected || opened) this._emit("disconnected", { code, reason, reconnectInMs: delay });
  }

  // The server closed on a frame over its limit (1009). The biggest command written to
  // that socket and not answered is over it (the refused one, or bigger): it fails with
  // too_big instead of being sent again, and commands that big are refused from now on.
  _refuseTooBig() {
    let worst = null;
    for (const [id, p] of this._pending) {
      const n = p.sent ? byteLength(p.cmd) : 0;
      if (n > (worst?.n ?? 0)) worst = { id, p, n };
    }
    if (!worst) return;
    this._maxFrame = Math.min(this._maxFrame, worst.n - 1);
    const why = `${worst.p.cmd.type} of ${worst.n} bytes is over the gateway's frame limit (close 1009)`;
    this._fail(worst.id, worst.p, new ChatError("too_big", why));
  }

  _scheduleReconnect({ code, reason }) {
    if (this.state === "closed") return null;
    let delay;
    if (this._goawayDelay != null) {
      // The server asked for this delay (drain/rebalance); it already spread clients.
      delay = this._goawayDelay;
      this._goawayDelay = null;
    } else {
      delay = backoffDelay(this._attempt, this.opts.initialDelayMs, this.opts.maxDelayMs);
      this._attempt += 1;
    }
    this.state = "waiting";
    this.reconnectAt = Date.now() + delay;
    this._emit("reconnecting", { delayMs: delay, attempt: this._attempt, code, reason });
    this._reconnectTimer = this._later(delay, () => {
      if (this.state === "waiting") this._open();
    });
    return delay;
  }

  /** Drops the socket now and reconnects at once (e.g. on the browser's `online`). */
  reconnectNow() {
    if (this.state === "waiting") {
      this._clear(this._reconnectTimer);
      this._open();
    } else if (this._ws) {
      // Not close() and wait: on a dead path the close event may not come for minutes.
      this._abandon(this._ws, 4000, "reconnect");
    }
  }

  _onText(data) {
    this._lastFrameAt = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this._emit("error", { error: new Error("server sent a frame that is not JSON") });
      return;
    }
    if (!f || typeof f !== "object") return;
    switch (f.type) {
      case "welcome":
        return this._onWelcome(f);
      case "ok":
      case "error":
        return this._onReply(f);
      case "msg":
        return this._onMsg(f);
      case "presence":
        // `{room, joined, left}`: the room's changes of one batching window.
        return this._emit("presence", f);
      case "goaway":
        return this._onGoaway(f);
      case "expiring":
        return this._onExpiring(f);
      case "unsubscribed":
        // The server took us out of a room (its subscription token expired).
        this._rooms.delete(f.room);
        this._pos.delete(f.room);
        this._filling.delete(f.room);
        return this._emit("unsubscribed", f);
      default:
        return; // newer server frames are ignored, not fatal
    }
  }

  async _onWelcome(w) {
    const ws = this._ws;
    const previous = this._resumeFrom;
    this._clear(this._connectTimer);
    this.welcome = w;
    this._inbox = inboxOf(w.user);
    this._startPinger(w.heartbeat_ms);
    const inbox = this._inbox;
    if (previous && previous.user !== w.user) {
      // Another identity (e.g. a new token for another user): nothing to resume, and
      // nothing the old user queued may go out as the new one.
      this._pos.clear();
      this._rooms.clear();
      this._inboxGap = null;
      const err = new ChatError("closed", `signed in as ${w.user}, no longer as ${previous.user}`);
      for (const [id, p] of this._pending) this._fail(id, p, err);
    }
    // Rooms the backend's connect hook joined: ours like any other (a repeated join of
    // one resolves `already`).
    for (const room of Array.isArray(w.rooms) ? w.rooms : []) {
      if (typeof room === "string") this._rooms.add(room);
    }
    let resumed = null;
    if (previous && previous.user === w.user) {
      // resume must be the FIRST command: the server holds the inbox replay for it.
      this.state = "resuming";
      const gap = this._inboxGap;
      if (gap && !gap.resumed) {
        // The last connection's inbox was not resumed: ask again from before its live
        // DMs (delivered, never acknowledged), so the ones missed before them come now.
        if (gap.from) this._pos.set(inbox, gap.from);
        else this._pos.delete(inbox);
      }
      const positions = {};
      for (const room of [...this._rooms, inbox]) {
        const p = this._pos.get(room);
        if (p) positions[room] = p.epoch ? { seq: p.seq, epoch: p.epoch } : { seq: p.seq };
      }
      try {
        resumed = await this._command({ type: "resume", resume_token: previous.resume_token, positions }, { now: true });
      } catch (e) {
        if (this._ws !== ws) return; // lost during the resume: the close reconnects
        if (e.code !== "session_not_found") {
          // Nothing was restored (`unavailable`: the store stalled; a timeout): a failed
          // connection. Rooms, positions and the token to resume stay for the next one.
          this._emit("error", { error: e });
          this._abandon(ws, 4000, "resume failed");
          return;
        }
        // No session and no positions: rooms joined without a position are gone.
        for (const room of this._rooms) this._emit("error", { room, error: e });
        this._rooms.clear();
      }
      if (this._ws !== ws) return;
      this._applyResume(resumed);
    }
    this._resumeFrom = w;
    this.state = "connected";
    this._later(STABLE_MS, () => {
      if (this._ws === ws) this._attempt = 0;
    });
    this.lastResume = resumed;
    this._emit("connected", { welcome: w, resumed: previous != null, rooms: resumed?.rooms ?? {} });
    this._flush();
  }

  _applyResume(reply) {
    const rooms = reply?.rooms ?? {};
    for (const [room, st] of Object.entries(rooms)) {
      if (!st || typeof st !== "object") continue;
      const isInbox = room.startsWith("user:");
      if (st.error) {
        // Could not be resumed on this node (e.g. unavailable): the room is dropped;
        // the app hears about it and may join again.
        if (!isInbox) this._rooms.delete(room);
        else if (room === this._inbox) this._inboxNotResumed();
        this._emit("error", { room, error: new ChatError(st.error, st.message) });
        continue;
      }
      if (room === this._inbox && this._inboxGap) {
        this._inboxGap.resumed = true;
        // Nothing was shown while it was not resumed: nothing to tell apart in the replay.
        if (this._inboxGap.seen.size === 0) this._inboxGap = null;
      }
      if (!isInbox) this._rooms.add(room);
      // A room without a position of ours keeps none: the next resume then leaves it to
      // the server's saved position. (A made-up `seq: 0` asked for the whole history
      // again, replaying acknowledged DMs as new.)
      if (st.recovered === false) this._refill(room, st);
    }
  }

  // History did not cover our position (new epoch after a gateway lost its memory, or
  // retention): fetch what we can of the gap ourselves, hold live messages meanwhile,
  // and deliver everything in seq order, so the app sees one ordered stream per room.
  _refill(room, st) {
    const old = this._pos.get(room);
    this._emit("reset", { room, epoch: st.epoch, seq: st.seq, previous: old ?? null, reason: st.reason });
    // No epoch: a late resume, whose inbox the server replayed from the acknowledged
    // cursor already. The position stays: moved back, the next resume would replay (and
    // this client deliver) every retained direct message again.
    if (typeof st.epoch !== "string") return;
    const since = old && old.epoch === st.epoch ? old.seq : 0;
    this._pos.set(room, { seq: since, epoch: st.epoch });
    if (room.startsWith("user:") && this.welcome && room !== this._inbox) return;
    if (typeof st.seq !== "number" || st.seq <= since) return;
    // A refill still running from an earlier reconnect hands its held messages over.
    const fill = { room, from: since, until: st.seq, held: this._filling.get(room)?.held ?? [] };
    this._filling.set(room, fill);
    // One room, one page at a time: a burst of history commands (a room each after a
    // gateway lost its memory) would hit the rate limit, and refusals in a row close (1008).
    this._fillChain = this._fillChain.then(() => this._fillRoom(fill)).catch(() => {});
  }

  // Pages are capped by bytes as well as count: page on while the server says `more`. A
  // page refused for the moment (rate, store) is asked again later; the gap is not skipped.
  async _fillRoom(fill) {
    const { room, until } = fill;
    const current = () => this._filling.get(room) === fill;
    for (let from = fill.from, failures = 0; current(); ) {
      let ok;
      try {
        ok = await this._command({ type: "history", room, since: from, limit: 500 });
      } catch (e) {
        if (!current()) return;
        if (!REFILL_RETRY.has(e.code)) {
          this._emit("error", { room, error: e });
          break;
        }
        const ms = Math.min(4000, 250 * 2 ** failures++) * (0.5 + Math.random() / 2);
        await new Promise((r) => this._later(ms, r));
        continue;
      }
      if (!current()) return;
      failures = 0;
      let last = from;
      for (const m of ok.messages ?? []) {
        if (m.seq <= until) this._deliver(m, true);
        last = Math.max(last, m.seq);
      }
      if (!ok.more || last <= from || last >= until) break;
      from = last;
    }
    if (!current()) return;
    this._filling.delete(room);
    for (const m of fill.held) this._deliver(m, false);
  }

  _onMsg(m) {
    if (typeof m.room !== "string") return;
    // Ephemeral messages (typing, cursors) have no seq: nothing to order or deduplicate.
    if (m.ephemeral === true) return this._emit("message", m);
    if (typeof m.seq !== "number") return;
    const fill = this._filling.get(m.room);
    if (fill) fill.held.push(m);
    else this._deliver(m, false);
  }

  // Drops duplicates by (room, seq): delivery is at-least-once across reconnects, and
  // a room's messages arrive in seq order, so anything at or below the last delivered
  // seq of the same epoch was seen already.
  _deliver(m, replayed) {
    if (this._inboxGap && this.welcome && m.room === this._inbox) return this._deliverInGap(m, replayed);
    const p = this._pos.get(m.room);
    if (p && p.epoch === m.epoch && m.seq <= p.seq) {
      this._emit("duplicate", m);
      return;
    }
    this._pos.set(m.room, { seq: m.seq, epoch: m.epoch });
    this._emit("message", replayed ? { ...m, replayed: true } : m);
    if (this.opts.autoAck && this.welcome && m.room === this._inbox) this._scheduleAck();
  }

  // A resume could not restore the own inbox (`error` in its reply): its live DMs flow at
  // once, but those missed before them come only on a later connection, and only if
  // nothing past them is acknowledged. So until then nothing is, and the next resume asks
  // from the position before them (`from`); the DMs shown meanwhile (`seen`) are not
  // shown again when that replay brings them.
  _inboxNotResumed() {
    const gap = this._inboxGap;
    if (!gap) this._inboxGap = { from: this._pos.get(this._inbox) ?? null, seen: new Set(), top: 0 };
    else if (gap.resumed) Object.assign(gap, { resumed: false, from: this._pos.get(this._inbox) ?? null });
  }

  _deliverInGap(m, replayed) {
    const gap = this._inboxGap;
    const p = this._pos.get(m.room);
    const key = `${m.epoch}:${m.seq}`;
    if ((p && p.epoch === m.epoch && m.seq <= p.seq) || gap.seen.has(key)) {
      this._emit("duplicate", m);
    } else {
      if (!gap.resumed) {
        gap.seen.add(key);
        gap.top = m.epoch === gap.epoch ? Math.max(gap.top, m.seq) : m.seq;
        gap.epoch = m.epoch;
      }
      this._pos.set(m.room, { seq: m.seq, epoch: m.epoch });
      this._emit("message", replayed ? { ...m, replayed: true } : m);
    }
    // Resumed, the replay has reached the last DM shown while it was not (or another
    // epoch began): positions and acknowledgements are as usual again.
    if (gap.resumed && (m.epoch !== gap.epoch || m.seq >= gap.top)) {
      this._inboxGap = null;
      const at = this._pos.get(m.room);
      if (!at || at.epoch !== m.epoch || at.seq < m.seq) this._pos.set(m.room, { seq: m.seq, epoch: m.epoch });
      if (this.opts.autoAck) this._scheduleAck();
    }
  }

  // Direct messages are replayed to this device until it acknowledges them: one `ack` for
  // a burst of them, shortly after they reached the app.
  _scheduleAck() {
    if (this._ackTimer) return;
    this._ackTimer = setTimeout(() => {
      this._ackTimer = null;
      this.ackInbox().catch(() => {
        /* retried with the next DM, and implied by the next resume */
      });
    }, 200);
  }

  // A token expires soon: get a new one from the app and `refresh` it in place. Without
  // a callback the connection closes at the expiry (4401), and a fixed token ends there.
  // A refresh belongs to the connection that was warned: after a reconnect the new one
  // connected (and resumed its rooms) with a fresh token already, and nothing may go
  // before a resume. One refused for the moment (`unavailable`: the backend's refresh hook
  // did not decide; `timeout`) is asked again until the expiry.
  async _onExpiring(f) {
    this._emit("expiring", f);
    const source = f.room ? this.opts.getRoomToken : this.opts.token;
    if (typeof source !== "function") return;
    const ws = this._ws;
    const current = () => ws && this._ws === ws && this.state === "connected";
    for (let attempt = 0; ; attempt++) {
      try {
        const token = f.room ? await source(f.room) : await source();
        if (!token || !current()) return;
        const cmd = f.room ? { type: "refresh", room: f.room, token } : { type: "refresh", token };
        await this._command(cmd, { now: true });
        return;
      } catch (e) {
        if (!current()) return;
        const left = Number(f.expires_at) - Date.now();
        if (!(e?.code === "unavailable" || e?.code === "timeout") || !(left > 0)) {
          this._emit("error", { room: f.room, error: e });
          return;
        }
        await new Promise((r) => this._later(Math.min(left, 250 + backoffDelay(attempt, 1000, 8000)), r));
      }
    }
  }

  _onGoaway(f) {
    const ms = Number(f.reconnect_after_ms);
    this._goawayDelay = Number.isFinite(ms) && ms >= 0 ? Math.min(ms, 5 * 60_000) : 0;
    this._emit("goaway", f);
    // The server closes with 1012 right after; if that close never comes, drop it here.
    const ws = this._ws;
    this._later(5000, () => {
      if (ws) this._abandon(ws, 4000, "goaway");
    });
  }

  // Browsers answer the server's WebSocket pings, but a page cannot see a dead TCP
  // connection (laptop lid, NAT timeout) for minutes. An app-level ping every half
  // heartbeat keeps middleboxes awake and notices silence: a ping of ours that nothing
  // at all followed for two periods means a dead socket, dropped at once (its close
  // event may not come for minutes on a dead path). Silence is counted from the ping,
  // not from the last frame: a background tab's timers may run once a minute, and a
  // quiet room is not a dead socket.
  _startPinger(heartbeatMs) {
    clearInterval(this._pinger);
    const every = Math.max(500, Math.floor((Number(heartbeatMs) || 25000) / 2));
    this._lastFrameAt = Date.now();
    this._pingSentAt = 0;
    this._pinger = setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      const now = Date.now();
      const waiting = this._pingSentAt > this._lastFrameAt;
      if (waiting && now - this._pingSentAt > 2 * every + 1000) {
        this._abandon(ws, 4001, "no traffic");
        return;
      }
      if (this.state === "connected" && !waiting) {
        this._pingSentAt = now;
        this.ping().catch(() => {});
      }
    }, every);
  }

  // ---- commands ---------------------------------------------------------------------

  _command(cmd, { now = false, timeoutMs = this.opts.timeoutMs } = {}) {
    if (this.state === "closed") return Promise.reject(new ChatError("closed", "client closed"));
    const n = this._maxFrame < Infinity ? byteLength({ ...cmd, id: this._nextId }) : 0;
    if (n > this._maxFrame) {
      return Promise.reject(new ChatError("too_big", `${cmd.type} of ${n} bytes is over the frame limit`));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const p = { cmd: { ...cmd, id }, resolve, reject, sent: false, deadline: Date.now() + timeoutMs };
      p.timer = setTimeout(() => this._fail(id, p, new ChatError("timeout", `${cmd.type} timed out`)), timeoutMs);
      this._pending.set(id, p);
      if (now) this._write(id, p);
      else {
        this._queue.push(id);
        if (this.state === "connected") this._flush();
      }
    });
  }

  _write(id, p) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(p.cmd));
      p.sent = true;
      return true;
    } catch {
      return false;
    }
  }

  _flush() {
    while (this._queue.length && this.state === "connected") {
      const id = this._queue[0];
      const p = this._pending.get(id);
      if (p && !this._write(id, p)) return;
      this._queue.shift();
    }
  }

  _fail(id, p, err) {
    clearTimeout(p.timer);
    this._pending.delete(id);
    this._queue = this._queue.filter((q) => q !== id);
    p.reject(err);
  }

  _onReply(f) {
    if (f.ref === undefined || f.ref === null) {
      // A connection-level error (e.g. inbox unavailable): no command to settle.
      this._emit("error", { error: new ChatError(f.code, f.message, f) });
      return;
    }
    const p = this._pending.get(f.ref);
    if (!p) return; // timed out already, or answered before a reconnect
    clearTimeout(p.timer);
    this._pending.delete(f.ref);
    if (f.type === "ok") {
      this._bookkeep(p.cmd, f);
      p.resolve(f);
      return;
    }
    // A repeated command after a reconnect may find its work done already.
    if (p.cmd.type === "join" && f.code === "bad_request" && this._rooms.has(p.cmd.room)) {
      const pos = this._pos.get(p.cmd.room);
      p.resolve({ type: "ok", ref: f.ref, room: p.cmd.room, epoch: pos?.epoch, seq: pos?.seq, already: true });
      return;
    }
    if (p.cmd.type === "leave" && f.code === "not_joined") {
      this._rooms.delete(p.cmd.room);
      p.resolve({ type: "ok", ref: f.ref, room: p.cmd.room });
      return;
    }
    if (p.cmd.type === "send" && f.code === "unknown_outcome") {
      // The server could not tell whether it stored the message: send it again with the
      // same msg_id (the server answers a stored one with its original seq) until the
      // command's deadline.
      this._pending.set(f.ref, p);
      p.sent = false;
      p.retries = (p.retries ?? 0) + 1;
      const left = Math.max(0, p.deadline - Date.now());
      p.timer = setTimeout(() => this._fail(f.ref, p, new ChatError("timeout", "send timed out")), left);
      this._emit("retrying", { command: p.cmd, code: f.code, attempt: p.retries });
      this._later(Math.min(4000, 250 * 2 ** (p.retries - 1)), () => {
        if (this._pending.get(f.ref) !== p) return; // timed out or settled meanwhile
        this._queue.push(f.ref);
        if (this.state === "connected") this._flush();
      });
      return;
    }
    p.reject(new ChatError(f.code, f.message, f));
  }

  // Keeps the joined rooms and positions that the next resume will send.
  _bookkeep(cmd, ok) {
    if (cmd.type === "join") {
      this._rooms.add(cmd.room);
      const pos = this._pos.get(cmd.room);
      if (cmd.since !== undefined && ok.recovered === false) {
        // Nothing is replayed: refill from `since` (in the room's epoch when none was
        // given and `since` is not past its top), as after a resume.
        const epoch = cmd.epoch ?? (cmd.since <= ok.seq ? ok.epoch : undefined);
        if (!pos) this._pos.set(cmd.room, { seq: cmd.since, epoch });
        this._refill(cmd.room, ok);
      } else if (cmd.since !== undefined && ok.recovered) {
        if (!pos || pos.epoch !== ok.epoch) this._pos.set(cmd.room, { seq: cmd.since, epoch: ok.epoch });
      } else if (!pos || pos.epoch !== ok.epoch || pos.seq < ok.seq) {
        // Live messages start after `seq`; older ones come from history().
        this._pos.set(cmd.room, { seq: ok.seq, epoch: ok.epoch });
      }
    } else if (cmd.type === "leave") {
      this._rooms.delete(cmd.room);
      this._pos.delete(cmd.room);
      this._filling.delete(cmd.room);
    }
  }

  /** Joins a room; `since`/`epoch` also replay what came after `since`; `token` is a
   * subscription token for a room that needs one. */
  join(room, { since, epoch, token } = {}) {
    const cmd = { type: "join", room };
    if (since !== undefined) cmd.since = since;
    if (epoch !== undefined) cmd.epoch = epoch;
    if (token !== undefined) cmd.token = token;
    return this._command(cmd);
  }

  leave(room) {
    return this._command({ type: "leave", room });
  }

  /**
   * Sends `body` (any JSON) to a room or to `user:<id>` (a direct message). The msg_id
   * (random unless given) makes a repeat after a reconnect deliver only once.
   */
  send(room, body, { msgId } = {}) {
    return this._command({ type: "send", room, msg_id: msgId ?? randomId(), body });
  }

  /** Sends a direct message to user `to`. */
  sendDirect(to, body, opts) {
    return this.send(inboxOf(to), body, opts);
  }

  /** Reads history: newest `limit`, or before/since a seq. Resolves to the ok frame. */
  history(room, { before, since, limit } = {}) {
    const cmd = { type: "history", room };
    if (before !== undefined) cmd.before = before;
    if (since !== undefined) cmd.since = since;
    if (limit !== undefined) cmd.limit = limit;
    return this._command(cmd);
  }

  /**
   * Acknowledges your inbox up to `seq` (default: the last direct message delivered):
   * this device is not sent those again. Done automatically unless `autoAck: false`.
   */
  ackInbox(seq, epoch) {
    if (!this.welcome) return Promise.reject(new ChatError("closed", "not connected yet"));
    // Not past DMs a failed inbox resume may still owe (see _inboxNotResumed): resolves
    // with null, unsent; the inbox is acknowledged once a resume has restored it.
    if (seq === undefined && this._inboxGap) return Promise.resolve(null);
    const pos = this._pos.get(this._inbox);
    const cmd = { type: "ack", seq: seq ?? pos?.seq ?? 0 };
    const e = epoch ?? (seq === undefined ? pos?.epoch : undefined);
    if (e) cmd.epoch = e;
    return this._command(cmd);
  }

  /** Who is in a joined room: resolves to an array of user ids (of a room bigger than
   *  the gateway's `limits.presenceUsers`, 1000 by default, that many of them). */
  async presence(room) {
    const ok = await this._command({ type: "presence", room });
    return Array.isArray(ok.users) ? ok.users : [];
  }

  ping() {
    return this._command({ type: "ping" }, { timeoutMs: 10000 });
  }
}
