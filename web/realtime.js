// realtime.js: the browser client for a realtime hub (protocol realtime.v1).
// One ES module, no dependencies, no build step. See PROTOCOL.md.
//
// The client negotiates a transport (WebSocket, then Server-Sent Events,
// then long-polling), reconnects with jittered backoff when a connection
// ends, joins its channels again and resumes each from the last message it
// has, dropping anything it has already seen.

const PROTOCOL = 'realtime.v1';

/** Default transport paths below the mount point, in the order to try. */
const DEFAULT_PATHS = { websocket: 'ws', sse: 'sse', longpoll: 'poll' };

/** The transport that last worked on this page, by mount point. */
const preferred = new Map();

/** Close codes after which reconnecting would only repeat the failure. */
const FINAL_CODES = new Set([1008, 1009, 4001]);

// Liveness. The server's own heartbeats (WebSocket pings, SSE comments)
// are invisible to page scripts, so the client pings when it has heard
// nothing for a while. Timers are not trusted: a background tab may run
// them a minute late, so a check that runs late probes again instead of
// declaring the server dead.
const TICK = 5000; // how often liveness is checked
const LATE = 5000; // a check this much overdue ran in a throttled or sleeping page
const IDLE = 30000; // silence after which the client pings
const PONG_TIMEOUT = 10000; // how long a ping may go unanswered

/**
 * RealtimeError is the error a request rejects with, and what 'error'
 * listeners receive. `code` is a protocol error code (PROTOCOL.md, "Error
 * codes"), 'closed' when the connection ended before the reply came, or
 * 'unauthorized' / 'forbidden' when the server refused the connection.
 */
export class RealtimeError extends Error {
  /**
   * @param {string} code machine-readable code, e.g. 'forbidden'
   * @param {string} message human-readable text
   * @param {string} [channel] the channel the failed command named, if any
   */
  constructor(code, message, channel) {
    super(message || code);
    this.name = 'RealtimeError';
    this.code = code;
    this.channel = channel;
  }
}

/**
 * connect opens a connection to a realtime hub and returns its client at
 * once, in state 'connecting'. Commands issued while it is not connected
 * are queued and sent when it is.
 *
 * @param {object} [options]
 * @param {string} [options.url='/realtime/'] where the hub is mounted
 *   (realtime.NewHandler); relative URLs resolve against the page. A URL
 *   ending in /ws stands for its parent.
 * @param {'websocket'|'sse'|'longpoll'} [options.transport] use this
 *   transport only
 * @param {string[]} [options.transports] the order to try transports in;
 *   by default the server's
 * @param {Object<string, string>} [options.params] query parameters added
 *   to every request, e.g. for authentication
 * @param {boolean} [options.reconnect=true] reconnect after the connection
 *   ends unexpectedly
 * @param {number} [options.minBackoff=500] ms, the base of the backoff
 * @param {number} [options.maxBackoff=15000] ms, the cap of the backoff
 * @param {number} [options.connectTimeout=5000] ms a transport has to
 *   deliver the server's welcome before the next one is tried
 * @param {number} [options.requestTimeout=10000] ms publish, send and ping
 *   wait for their reply before they reject with code 'timeout' (the
 *   command may still take effect); 0 waits as long as the connection
 *   lasts
 * @returns {Client}
 */
export function connect(options = {}) {
  return new Client(options);
}

// ---------------------------------------------------------------------------
// Transports.
//
// A transport carries one connection: open(endpoint, cursor, cb) returns
// {send(text), close()}. It reports the server's messages in order with
// cb.messages(array, cursor) (cursor undefined when the transport has
// none), and the end of the connection, once, with cb.end(code, reason,
// status) (status: an HTTP status the server refused the connection with,
// when known). close() ends the connection from the client's side and
// reports nothing. send(text) takes one command as JSON.

const websocketTransport = {
  open(ep, cursor, cb) {
    const ws = new WebSocket(ep.url('websocket', {}, true), PROTOCOL);
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') cb.messages(parseArray(ev.data));
    };
    ws.onclose = (ev) => cb.end(ev.code, ev.reason);
    return {
      send: (text) => ws.send(text),
      close: () => { ws.onclose = null; ws.close(1000); },
    };
  },
};

const sseTransport = {
  open(ep, cursor, cb) {
    const http = httpConnection(ep, 'sse', cb);
    const es = new EventSource(ep.url('sse', cursor ? { lastEventId: cursor } : {}));
    // The client reconnects by itself, with backoff and its own resume, so
    // EventSource must not: it is closed at its first error.
    es.onmessage = (ev) => http.receive(parseArray(ev.data), ev.lastEventId);
    es.onerror = () => http.end(1006, 'event stream failed');
    http.onend = () => es.close();
    return http;
  },
};

const longpollTransport = {
  open(ep, cursor, cb) {
    const http = httpConnection(ep, 'longpoll', cb);
    const abort = new AbortController();
    http.onend = () => abort.abort();
    (async () => {
      let url = ep.url('longpoll', cursor ? { cursor } : {});
      while (!http.ended) {
        const res = await fetch(url, { cache: 'no-store', signal: abort.signal });
        if (!res.ok) {
          const text = (await res.text()).trim();
          return http.end(1006, res.status === 404 ? 'session ended' : text, res.status);
        }
        const body = await res.json();
        http.receive(Array.isArray(body.messages) ? body.messages : [], body.cursor);
        url = ep.url('longpoll', { session: http.session, ack: body.seq });
      }
    })().catch(() => http.end(1006, 'poll failed'));
    return http;
  },
};

const TRANSPORTS = { websocket: websocketTransport, sse: sseTransport, longpoll: longpollTransport };

// httpConnection is what SSE and long-poll share: the session from the
// welcome, the final close message, and commands sent by POST, one request
// at a time so that they keep their order, each carrying every command
// queued meanwhile.
function httpConnection(ep, name, cb) {
  let queue = [];
  let busy = false;
  const http = {
    session: null,
    ended: false,
    maxBytes: Infinity,
    onend: () => {},

    receive(msgs, cursor) {
      if (http.ended) return;
      const close = msgs.findIndex((m) => m && m.type === 'close');
      const welcome = msgs.find((m) => m && m.type === 'welcome');
      if (welcome) {
        http.session = welcome.session;
        if (welcome.maxMessageSize > 0) http.maxBytes = welcome.maxMessageSize;
      }
      cb.messages(close < 0 ? msgs : msgs.slice(0, close), typeof cursor === 'string' ? cursor : undefined);
      if (close >= 0) http.end(msgs[close].code, msgs[close].reason || '');
    },

    end(code, reason, status) {
      if (http.ended) return;
      http.ended = true;
      http.onend();
      cb.end(code, reason, status);
    },

    send(text) {
      queue.push(text);
      if (queue.length === 1) queueMicrotask(flush);
    },

    close() {
      if (http.ended) return;
      http.ended = true;
      if (!http.session) {
        http.onend();
        return;
      }
      // The DELETE goes first: the server should learn of a clean close
      // (1000) before it sees the stream drop (1006).
      fetch(ep.url(name), { method: 'DELETE', headers: { 'Realtime-Session': http.session }, keepalive: true })
        .catch(() => {})
        .finally(() => http.onend());
    },
  };

  async function flush() {
    if (busy || http.ended || queue.length === 0) return;
    // As many commands as fit in one frame, sent as a JSON array.
    let n = 0;
    let bytes = 2;
    while (n < queue.length && n < 1000) {
      bytes += utf8.encode(queue[n]).length + 1;
      if (n > 0 && bytes > http.maxBytes) break;
      n++;
    }
    const batch = queue.splice(0, n);
    busy = true;
    try {
      const res = await fetch(ep.url(name), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Realtime-Session': http.session },
        body: '[' + batch.join(',') + ']',
      });
      if (res.status === 404) return http.end(1006, 'session ended', 404);
      if (!res.ok) refuse(batch, res.status, (await res.text()).trim());
    } catch {
      return http.end(1006, 'command request failed');
    } finally {
      busy = false;
    }
    flush();
  }

  // refuse answers each command of a refused POST as the server would have
  // on the stream, so that its request rejects.
  function refuse(batch, status, text) {
    const code = { 403: 'forbidden', 413: 'too_large' }[status] || 'bad_request';
    const errors = [];
    for (const t of batch) {
      const cmd = JSON.parse(t);
      errors.push({ type: 'error', code, message: text || `HTTP ${status}`, id: cmd.id, channel: cmd.channel });
    }
    cb.messages(errors);
  }

  return http;
}

function parseArray(text) {
  try {
    const v = JSON.parse(text);
    return Array.isArray(v) ? v : [v];
  } catch {
    return [{ type: 'error', code: 'bad_frame', message: 'server sent invalid JSON' }];
  }
}

// endpoint resolves the mount point and builds the URL of each transport.
function endpoint(url, params) {
  const base = new URL(url, typeof location !== 'undefined' ? location.href : undefined);
  const query = {};
  for (const [k, v] of base.searchParams) query[k] = v;
  for (const [k, v] of Object.entries(params)) query[k] = String(v);
  base.search = '';
  base.hash = '';
  if (base.pathname.endsWith('/ws')) base.pathname = base.pathname.slice(0, -2);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const ep = {
    base: base.href,
    paths: { ...DEFAULT_PATHS },
    url(transport, extra = {}, ws = false) {
      const path = transport === 'negotiate' ? 'negotiate' : ep.paths[transport];
      const u = new URL(path, base);
      for (const [k, v] of Object.entries({ ...query, ...extra })) u.searchParams.set(k, v);
      if (ws) u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
      return u.href;
    },
  };
  return ep;
}

// ---------------------------------------------------------------------------

/**
 * Client is one logical connection to a hub, made by {@link connect}. It
 * lives across reconnects: its subscriptions, listeners and queued
 * commands survive them. Nothing is shared between clients.
 */
class Client {
  constructor(options) {
    /** @type {'connecting'|'connected'|'reconnecting'|'closed'} */
    this.state = 'connecting';
    /** @type {string|null} the transport in use, or being tried */
    this.transport = null;
    /** @type {string|null} the connection id from the welcome message */
    this.id = null;

    this._opts = {
      reconnect: true, minBackoff: 500, maxBackoff: 15000, connectTimeout: 5000, requestTimeout: 10000, ...options,
    };
    for (const name of [this._opts.transport, ...(this._opts.transports || [])]) {
      if (name != null && !TRANSPORTS[name]) throw new TypeError(`realtime: unknown transport ${name}`);
    }
    this._ep = endpoint(this._opts.url || '/realtime/', this._opts.params || {});
    this._offered = null; // transport names from negotiate, in order
    this._listeners = new Map(); // event name -> Set of functions
    this._channels = new Map(); // channel -> {subs: Set, joined, position}
    this._leaving = new Set(); // channels left that a resume may join again
    this._pending = new Map(); // request id -> {resolve, reject, channel}
    this._outbox = []; // frames waiting for a connection: {text, id}
    this._nextId = 1;
    this._maxMessageSize = Infinity;

    this._conn = null; // the transport connection
    this._gen = 0; // counts transport connections; stale callbacks are ignored
    this._welcomed = false;
    this._cursor = ''; // the last SSE event id or long-poll cursor
    this._tries = []; // transports left to try in this attempt
    this._refusal = { status: 0, text: '' }; // an HTTP refusal seen in this attempt
    this._attempt = 0; // reconnect attempts in a row
    this._connectedAt = 0; // when the last welcome came
    this._waiting = false; // waiting to reconnect (backoff or offline)
    this._timer = 0; // connect timeout, backoff or liveness timer
    this._heard = 0; // when the server last said anything (ms, wall clock)
    this._probe = null; // {at, retried}: an unanswered liveness ping
    this._checkAt = 0; // when the liveness check is due

    this._onEnv = (ev) => this._environment(ev.type);
    if (typeof addEventListener === 'function') {
      addEventListener('online', this._onEnv);
      addEventListener('offline', this._onEnv);
    }
    if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this._onEnv);

    this._start();
  }

  /**
   * on adds a listener. Events and what listeners receive:
   * 'state' {state, transport, code, reason, attempt, delay};
   * 'resync' {channel} after a reconnect that could not recover every
   *   message of channel: reload its state;
   * 'error' a RealtimeError no pending request took (and refused joins);
   * 'direct' a payload sent to this connection alone;
   * 'gap' {channel} when messages of channel were lost;
   * 'message' {channel, data, epoch, offset} for every channel message.
   * @param {'state'|'resync'|'error'|'direct'|'gap'|'message'} event
   * @param {Function} fn
   * @returns {() => void} a function that removes the listener
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /**
   * subscribe joins a channel and calls handler with each of its messages
   * as {channel, data, epoch, offset}; data is the JSON value, or a
   * Uint8Array for a b64 payload. Several subscriptions to one channel
   * share a single membership, which is joined again after reconnects.
   * @param {string} channel
   * @param {(msg: object) => void} handler
   * @param {object} [hooks]
   * @param {(info: {channel, epoch, offset, recovered}) => void} [hooks.onJoined]
   *   the channel was joined, or joined again after a reconnect
   * @param {(info: {channel, reason}) => void} [hooks.onLeft] the server
   *   removed the connection from the channel; the subscription ends
   * @param {(err: RealtimeError) => void} [hooks.onError] the join was
   *   refused; the subscription ends
   * @returns {() => void} unsubscribe: stops delivery, and leaves the
   *   channel when no other subscription needs it
   */
  subscribe(channel, handler, hooks = {}) {
    const sub = { handler, hooks };
    let entry = this._channels.get(channel);
    if (entry) {
      entry.subs.add(sub);
      // Already a member: report it after subscribe returns, as a join would.
      if (entry.joined) queueMicrotask(() => call(hooks.onJoined, { ...entry.position }));
    } else {
      entry = { subs: new Set([sub]), joined: false, position: null };
      this._channels.set(channel, entry);
      this._leaving.delete(channel);
      if (this.state === 'connected') this._join(channel, entry);
    }
    return () => {
      if (!entry.subs.delete(sub) || entry.subs.size > 0) return;
      if (this._channels.get(channel) !== entry) return;
      this._channels.delete(channel);
      this._leaving.add(channel);
      if (this.state === 'connected') this._leave(channel);
    };
  }

  /**
   * publish sends a payload to a channel.
   * @param {string} channel
   * @param {*} value a JSON-serialisable value, or a Uint8Array or
   *   ArrayBuffer sent as bytes
   * @returns {Promise<{epoch: string, offset: number}>} the position the
   *   message got; rejects with a RealtimeError
   */
  publish(channel, value) {
    return this._request({ type: 'publish', channel, ...payload(value) }, undefined, true)
      .then((ack) => ({ epoch: ack.epoch, offset: ack.offset }));
  }

  /**
   * send hands a payload to the application's message hook on the server.
   * @param {*} value as for publish
   * @returns {Promise<void>} resolves on the ack; rejects with a RealtimeError
   */
  send(value) {
    return this._request({ type: 'send', ...payload(value) }, undefined, true).then(() => {});
  }

  /**
   * ping asks the server for a pong.
   * @returns {Promise<void>} resolves when the pong arrives
   */
  ping() {
    return this._request({ type: 'ping' }, undefined, true).then(() => {});
  }

  /**
   * close ends the connection (WebSocket close 1000; DELETE of the session
   * over SSE and long-poll) and stops reconnecting. The state becomes
   * 'closed' at once and pending requests reject with code 'closed'.
   */
  close() {
    if (this.state === 'closed') return;
    this._drop();
    this._finish(1000, '');
  }

  // --- Connecting ---------------------------------------------------------

  // _start begins an attempt: every transport in order until one works.
  async _start() {
    this._waiting = false;
    if (!this._offered) await this._negotiate();
    if (this.state === 'closed' || this._conn) return;
    const o = this._opts;
    let order = o.transport ? [o.transport] : (o.transports || this._offered || Object.keys(DEFAULT_PATHS));
    if (!o.transport && this._offered) {
      const offered = order.filter((n) => this._offered.includes(n));
      if (offered.length) order = offered;
    }
    order = order.filter((n) => TRANSPORTS[n]);
    const worked = preferred.get(this._ep.base);
    if (!o.transport && order.includes(worked)) order = [worked, ...order.filter((n) => n !== worked)];
    this._tries = order;
    this._refusal = { status: 0, text: '' };
    this._next();
  }

  async _negotiate() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this._opts.connectTimeout);
    try {
      const res = await fetch(this._ep.url('negotiate'), { cache: 'no-store', signal: abort.signal });
      const body = await res.json();
      if (!res.ok || !Array.isArray(body.transports)) return;
      for (const t of body.transports) if (t.name in DEFAULT_PATHS) this._ep.paths[t.name] = t.path;
      this._offered = body.transports.map((t) => t.name).filter((n) => n in DEFAULT_PATHS);
    } catch {
      // The default paths, and negotiation again at the next attempt.
    } finally {
      clearTimeout(timer);
    }
  }

  // _next opens the next transport of the attempt.
  _next() {
    const name = this._tries.shift();
    if (!name) return this._attemptFailed();
    const gen = ++this._gen;
    this.transport = name;
    this._welcomed = false;
    const cb = {
      messages: (msgs, cursor) => { if (gen === this._gen) this._receive(msgs, cursor); },
      end: (code, reason, status) => { if (gen === this._gen) this._ended(code, reason, status); },
    };
    try {
      this._conn = TRANSPORTS[name].open(this._ep, name === 'websocket' ? '' : this._cursor, cb);
    } catch (e) {
      this._conn = { send() {}, close() {} };
      queueMicrotask(() => cb.end(1006, e.message));
    }
    // A transport that yields no welcome in time (a proxy buffering the
    // event stream, for example) counts as failed.
    this._setTimer(() => {
      if (gen === this._gen && !this._welcomed) this._ended(1006, 'no welcome within connectTimeout');
    }, this._opts.connectTimeout);
  }

  // _ended handles the end of the transport connection.
  _ended(code, reason, status) {
    this._drop();
    if (!this._welcomed) {
      if (status) this._refusal = { status, text: reason };
      return this._next(); // fall back
    }
    this._welcomed = false;
    this.id = null;
    for (const entry of this._channels.values()) entry.joined = false;
    this._rejectPending(`connection lost (${code})`);
    if (FINAL_CODES.has(code) || !this._opts.reconnect) return this._finish(code, reason);
    // A connection that lasted a while starts the backoff afresh; one that
    // ends as soon as it opens does not, so it cannot make a busy loop.
    if (Date.now() - this._connectedAt > 10000) this._attempt = 0;
    this._retry(code, reason);
  }

  // _attemptFailed handles an attempt in which no transport worked.
  async _attemptFailed() {
    const refused = await this._diagnose();
    if (this.state === 'closed') return;
    if (refused) {
      this._emit('error', refused);
      return this._finish(1008, refused.message);
    }
    if (!this._opts.reconnect) return this._finish(1006, 'could not connect');
    this._retry(1006, 'could not connect');
  }

  // _diagnose tells a refused connection (401, 403) from an unreachable
  // server. A browser hides why a WebSocket or an EventSource failed; a
  // plain GET of the WebSocket path goes through the same authentication
  // and answers 426 when it passes, without opening a connection.
  async _diagnose() {
    let { status, text } = this._refusal;
    if (!status && this._offered?.includes('websocket') !== false && online()) {
      try {
        const res = await fetch(this._ep.url('websocket'), { cache: 'no-store' });
        status = res.status;
        text = (await res.text()).trim();
      } catch { /* unreachable */ }
    }
    if (status !== 401 && status !== 403) return null;
    return new RealtimeError(status === 401 ? 'unauthorized' : 'forbidden',
      text || `the server refused the connection (HTTP ${status})`);
  }

  // _retry waits the backoff, or for the network, then starts an attempt.
  _retry(code, reason) {
    this._conn = null;
    this.transport = null;
    this._waiting = true;
    if (!online()) {
      // Attempts made offline would fail; wait for 'online'.
      this._setState('reconnecting', { code, reason, attempt: this._attempt + 1, delay: null });
      return;
    }
    const attempt = ++this._attempt;
    const o = this._opts;
    // Full jitter: a restarted server does not see every client at once.
    const delay = Math.round(Math.random() * Math.min(o.maxBackoff, o.minBackoff * 2 ** attempt));
    this._setTimer(() => this._start(), delay);
    this._setState('reconnecting', { code, reason, attempt, delay });
  }

  // _drop forgets the transport connection, closing it.
  _drop() {
    this._gen++;
    clearTimeout(this._timer);
    if (this._conn) this._conn.close();
    this._conn = null;
  }

  _finish(code, reason) {
    this._waiting = false;
    this._drop();
    this.transport = null;
    this.id = null;
    if (typeof removeEventListener === 'function') {
      removeEventListener('online', this._onEnv);
      removeEventListener('offline', this._onEnv);
    }
    if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', this._onEnv);
    this._outbox = [];
    this._setState('closed', { code, reason });
    this._rejectPending(`connection closed (${code})`);
  }

  // _rejectPending fails every request waiting for a reply.
  _rejectPending(message) {
    const pending = this._pending;
    this._pending = new Map();
    for (const p of pending.values()) {
      clearTimeout(p.timer);
      p.reject(new RealtimeError('closed', message, p.channel));
    }
  }

  // _environment reacts to the network and the page's visibility.
  _environment(type) {
    if (this.state === 'closed') return;
    if (type === 'offline') {
      if (this._waiting) {
        clearTimeout(this._timer);
        this._setState('reconnecting', { attempt: this._attempt + 1, delay: null });
      } else if (this._welcomed) {
        this._ping();
      }
      return;
    }
    if (type === 'visibilitychange' && document.visibilityState !== 'visible') return;
    if (this._waiting && online()) {
      // Back online, or visible again: no reason to wait any longer.
      clearTimeout(this._timer);
      this._start();
    } else if (this._welcomed) {
      const now = Date.now();
      if (this._probe && now - this._probe.at >= PONG_TIMEOUT) this._dead();
      else if (!this._probe && (type === 'online' || now - this._heard >= IDLE)) this._ping();
    }
  }

  // --- Liveness -----------------------------------------------------------

  _check() {
    const now = Date.now();
    const late = now - this._checkAt > LATE;
    if (this._probe && now - this._probe.at >= PONG_TIMEOUT) {
      // A check that ran late may run before the pong that came meanwhile
      // is handled: probe once more before giving up.
      if (!late || this._probe.retried) return this._dead();
      this._ping(true);
    } else if (!this._probe && (late || now - this._heard >= IDLE)) {
      this._ping();
    }
    this._schedule();
  }

  _schedule() {
    this._checkAt = Date.now() + TICK;
    this._setTimer(() => this._check(), TICK);
  }

  _ping(retried = false) {
    this._probe = { at: Date.now(), retried };
    this._request({ type: 'ping' }).catch(() => {});
  }

  _dead() {
    this._ended(1006, 'the server did not answer a ping');
  }

  _setTimer(fn, ms) {
    clearTimeout(this._timer);
    this._timer = setTimeout(fn, ms);
  }

  // --- Commands -----------------------------------------------------------

  _join(channel, entry) {
    const since = entry.position ? { epoch: entry.position.epoch, offset: entry.position.offset } : undefined;
    // The reply is handled as it arrives, before the messages that follow it.
    const onReply = (m) => { if (this._channels.get(channel) === entry) this._joined(channel, entry, m); };
    this._request({ type: 'join', channel, since }, onReply).catch((err) => {
      if (err.code === 'closed' || this._channels.get(channel) !== entry) return;
      this._channels.delete(channel);
      for (const s of entry.subs) call(s.hooks.onError, err);
      this._emit('error', err);
    });
  }

  _leave(channel) {
    this._request({ type: 'leave', channel }).then(() => this._leaving.delete(channel), () => {});
  }

  _joined(channel, entry, m) {
    entry.joined = true;
    advance(entry, channel, m.epoch, m.offset);
    const info = { ...entry.position, recovered: m.recovered };
    if (m.recovered === false) this._emit('resync', { channel });
    for (const s of entry.subs) call(s.hooks.onJoined, info);
  }

  // _request sends a command with a fresh id and settles with its reply;
  // onReply, if given, sees the reply at once. A timed request rejects
  // with 'timeout' after requestTimeout ms without a reply.
  _request(cmd, onReply, timed) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new RealtimeError('closed', 'connection is closed', cmd.channel));
        return;
      }
      const id = this._nextId++;
      let text;
      try {
        text = JSON.stringify({ ...cmd, id });
      } catch (e) {
        reject(new RealtimeError('bad_request', e.message, cmd.channel));
        return;
      }
      const ms = this._opts.requestTimeout;
      const timer = timed && ms > 0 ? setTimeout(() => this._settle(id, null,
        new RealtimeError('timeout', `no reply within ${ms} ms; the command may still take effect`)), ms) : 0;
      this._pending.set(id, { resolve, reject, onReply, channel: cmd.channel, timer });
      if (this._welcomed) this._transmit({ text, id });
      else this._outbox.push({ text, id });
    });
  }

  _transmit(frame) {
    // A frame over the limit would make the server close the connection
    // (1009); refuse it here so only this request fails.
    if (frame.text.length > this._maxMessageSize / 3 &&
        utf8.encode(frame.text).length > this._maxMessageSize) {
      this._settle(frame.id, null, new RealtimeError('too_large', 'frame exceeds maxMessageSize'));
      return;
    }
    this._conn.send(frame.text);
  }

  _settle(id, value, err) {
    const p = this._pending.get(id);
    if (!p) return false;
    this._pending.delete(id);
    clearTimeout(p.timer);
    if (err) {
      if (err.channel === undefined) err.channel = p.channel;
      p.reject(err);
    } else {
      if (p.onReply) p.onReply(value);
      p.resolve(value);
    }
    return true;
  }

  // --- Server messages ----------------------------------------------------

  _receive(msgs, cursor) {
    // Anything from the server shows that it is alive.
    this._heard = Date.now();
    this._probe = null;
    if (cursor !== undefined) this._cursor = cursor;
    for (const m of msgs) if (m && typeof m === 'object') this._onMessage(m);
  }

  _onMessage(m) {
    switch (m.type) {
      case 'welcome': return this._onWelcome(m);
      case 'message': return this._onChannelMessage(m);
      case 'joined': return this._onJoined(m);
      case 'left': return this._onLeft(m);
      case 'ack':
      case 'pong': return void this._settle(m.id, m, null);
      case 'direct': return this._emit('direct', decode(m));
      case 'gap': return this._emit('gap', { channel: m.channel });
      case 'error': {
        const err = new RealtimeError(m.code, m.message, m.channel);
        if (m.id == null || !this._settle(m.id, null, err)) this._emit('error', err);
      }
    }
  }

  _onWelcome(m) {
    if (this._welcomed) return;
    this._welcomed = true;
    if (!this._opts.transport) preferred.set(this._ep.base, this.transport);
    if (this.transport === 'websocket') {
      // No cursor: nothing joins again unless asked.
      this._cursor = '';
      this._leaving.clear();
    }
    this._connectedAt = Date.now();
    this.id = m.conn ?? null;
    if (m.maxMessageSize > 0) this._maxMessageSize = m.maxMessageSize;
    this._heard = Date.now();
    this._probe = null;
    this._schedule();
    // Joins first, so messages published next reach this connection too.
    // Each resumes from the last message seen; over SSE and long-poll the
    // cursor has resumed them already and these joins only confirm.
    for (const [channel, entry] of this._channels) this._join(channel, entry);
    const queued = this._outbox;
    this._outbox = [];
    for (const frame of queued) this._transmit(frame);
    this._setState('connected', {});
  }

  _onChannelMessage(m) {
    const entry = this._channels.get(m.channel);
    // A message at or before the last one seen came again on a resume.
    if (entry && !advance(entry, m.channel, m.epoch, m.offset)) return;
    const msg = { channel: m.channel, data: decode(m), epoch: m.epoch, offset: m.offset };
    this._emit('message', msg);
    if (entry) for (const s of [...entry.subs]) call(s.handler, msg);
  }

  _onJoined(m) {
    if (m.id != null) return void this._settle(m.id, m, null);
    // The server joined this connection to a channel, or resumed it.
    const entry = this._channels.get(m.channel);
    if (entry) this._joined(m.channel, entry, m);
    else if (this._leaving.has(m.channel)) this._leave(m.channel); // left while away
  }

  _onLeft(m) {
    if (m.id != null) return void this._settle(m.id, m, null);
    // The server removed this connection from a channel.
    this._leaving.delete(m.channel);
    const entry = this._channels.get(m.channel);
    if (!entry) return;
    this._channels.delete(m.channel);
    for (const s of entry.subs) call(s.hooks.onLeft, { channel: m.channel, reason: m.reason });
  }

  _setState(state, { code, reason, attempt, delay }) {
    this.state = state;
    const ev = { state, transport: this.transport, code, reason, attempt, delay };
    this._emit('state', ev);
  }

  _emit(event, value) {
    const set = this._listeners.get(event);
    if (set) for (const fn of [...set]) call(fn, value);
  }
}

// advance moves a channel's position to (epoch, offset) unless that is not
// after it, and reports whether it moved. A new epoch always moves it: the
// channel's numbering restarted.
function advance(entry, channel, epoch, offset) {
  const p = entry.position;
  if (p && p.epoch === epoch && !(offset > p.offset)) return false;
  entry.position = { channel, epoch, offset };
  return true;
}

function online() {
  return typeof navigator === 'undefined' || navigator.onLine !== false;
}

// call runs a listener; one that throws is reported to the page without
// stopping delivery to the others.
function call(fn, arg) {
  if (typeof fn !== 'function') return;
  try {
    fn(arg);
  } catch (err) {
    setTimeout(() => { throw err; });
  }
}

// payload returns the wire fields for a value: b64 for bytes, data otherwise.
function payload(value) {
  if (value instanceof ArrayBuffer) return { b64: base64.encode(new Uint8Array(value)) };
  if (ArrayBuffer.isView(value)) {
    return { b64: base64.encode(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  }
  return { data: value };
}

// decode returns a message's payload: the JSON value, or bytes.
function decode(m) {
  return typeof m.b64 === 'string' ? base64.decode(m.b64) : m.data;
}

const utf8 = new TextEncoder();

// base64 converts between bytes and standard padded base64 (RFC 4648 §4).
// btoa and atob work on "binary strings", one char per byte (0-255), so every
// byte value round-trips; text never passes through them.
const base64 = {
  encode(bytes) {
    let bin = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(bin);
  },
  decode(str) {
    const bin = atob(str);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return bytes;
  },
};
