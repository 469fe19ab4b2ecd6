// realtime.js: the browser client for a realtime hub (protocol realtime.v1).
// One ES module, no dependencies, no build step. See PROTOCOL.md.

const PROTOCOL = 'realtime.v1';

/**
 * RealtimeError is the error a request rejects with, and what 'error'
 * listeners receive. `code` is a protocol error code (PROTOCOL.md, "Error
 * codes") or 'closed' when the connection ended before the reply came.
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
 * once, in state 'connecting'. Commands issued before the server's welcome
 * are queued and sent when it arrives.
 *
 * @param {object} [options]
 * @param {string} [options.url='/realtime/ws'] the endpoint; relative URLs
 *   resolve against the page, and http(s) becomes ws(s)
 * @returns {Client}
 */
export function connect(options = {}) {
  return new Client(options);
}

// A transport carries text frames: open(url, callbacks) returns {send,
// close} and reports through onframe(text) and onclose(code, reason).
// Later transports (SSE, long-poll) take the same shape, so the client
// above them, and its public API, do not change with them.
const websocketTransport = {
  name: 'websocket',
  open(url, cb) {
    const ws = new WebSocket(toWebSocketURL(url), PROTOCOL);
    ws.onmessage = (ev) => { if (typeof ev.data === 'string') cb.onframe(ev.data); };
    ws.onclose = (ev) => cb.onclose(ev.code, ev.reason);
    return {
      send: (text) => ws.send(text),
      close: (code, reason) => ws.close(code, reason),
    };
  },
};

/**
 * Client is one connection to a hub, made by {@link connect}. Its
 * subscriptions and listeners are plain in-page state; nothing is shared
 * between clients.
 */
class Client {
  constructor(options) {
    /** @type {'connecting'|'connected'|'closed'} */
    this.state = 'connecting';
    /** @type {string} name of the transport in use */
    this.transport = websocketTransport.name;
    /** @type {string|null} the connection id from the welcome message */
    this.id = null;

    this._url = options.url || '/realtime/ws';
    this._listeners = new Map(); // event name -> Set of functions
    this._channels = new Map(); // channel -> {subs: Set, joined, position}
    this._pending = new Map(); // request id -> {resolve, reject, channel}
    this._outbox = []; // frames waiting for the welcome: {text, id}
    this._nextId = 1;
    this._maxMessageSize = Infinity;

    this._conn = websocketTransport.open(this._url, {
      onframe: (text) => this._onFrame(text),
      onclose: (code, reason) => this._onClose(code, reason),
    });
  }

  /**
   * on adds a listener. Events and what listeners receive:
   * 'state' {state, transport, code, reason} (code and reason when closed);
   * 'error' a RealtimeError no pending request took (and refused joins);
   * 'direct' a payload sent to this connection alone;
   * 'gap' {channel} when messages of channel were lost;
   * 'message' {channel, data, epoch, offset} for every channel message.
   * @param {'state'|'error'|'direct'|'gap'|'message'} event
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
   * share a single membership.
   * @param {string} channel
   * @param {(msg: object) => void} handler
   * @param {object} [hooks]
   * @param {(info: {channel, epoch, offset}) => void} [hooks.onJoined]
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
      if (entry.joined) queueMicrotask(() => call(hooks.onJoined, entry.position));
    } else {
      entry = { subs: new Set([sub]), joined: false, position: null };
      this._channels.set(channel, entry);
      if (this.state === 'connected') this._join(channel, entry);
    }
    return () => {
      if (!entry.subs.delete(sub) || entry.subs.size > 0) return;
      if (this._channels.get(channel) !== entry) return;
      this._channels.delete(channel);
      if (this.state === 'connected') {
        this._request({ type: 'leave', channel }).catch(() => {});
      }
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
    return this._request({ type: 'publish', channel, ...payload(value) })
      .then((ack) => ({ epoch: ack.epoch, offset: ack.offset }));
  }

  /**
   * send hands a payload to the application's message hook on the server.
   * @param {*} value as for publish
   * @returns {Promise<void>} resolves on the ack; rejects with a RealtimeError
   */
  send(value) {
    return this._request({ type: 'send', ...payload(value) }).then(() => {});
  }

  /**
   * ping asks the server for a pong.
   * @returns {Promise<void>} resolves when the pong arrives
   */
  ping() {
    return this._request({ type: 'ping' }).then(() => {});
  }

  /**
   * close ends the connection with code 1000. The state becomes 'closed'
   * at once and pending requests reject with code 'closed'.
   */
  close() {
    if (this.state === 'closed') return;
    this._conn.close(1000, '');
    this._onClose(1000, '');
  }

  _join(channel, entry) {
    this._request({ type: 'join', channel }).then((m) => {
      if (this._channels.get(channel) !== entry) return;
      entry.joined = true;
      entry.position = { channel, epoch: m.epoch, offset: m.offset };
      for (const s of entry.subs) call(s.hooks.onJoined, entry.position);
    }, (err) => {
      if (err.code === 'closed' || this._channels.get(channel) !== entry) return;
      this._channels.delete(channel);
      for (const s of entry.subs) call(s.hooks.onError, err);
      this._emit('error', err);
    });
  }

  // _request sends a command with a fresh id and settles with its reply.
  _request(cmd) {
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
      this._pending.set(id, { resolve, reject, channel: cmd.channel });
      if (this.state === 'connected') this._transmit({ text, id });
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
    if (err) {
      if (err.channel === undefined) err.channel = p.channel;
      p.reject(err);
    } else {
      p.resolve(value);
    }
    return true;
  }

  _onFrame(text) {
    let msgs;
    try {
      msgs = JSON.parse(text);
    } catch {
      this._emit('error', new RealtimeError('bad_frame', 'server sent invalid JSON'));
      return;
    }
    for (const m of Array.isArray(msgs) ? msgs : [msgs]) {
      if (m && typeof m === 'object') this._onMessage(m);
    }
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
    if (this.state !== 'connecting') return;
    this.id = m.conn ?? null;
    if (m.maxMessageSize > 0) this._maxMessageSize = m.maxMessageSize;
    this._setState('connected', {});
    // Joins first, so messages published next reach this connection too.
    for (const [channel, entry] of this._channels) this._join(channel, entry);
    const queued = this._outbox;
    this._outbox = [];
    for (const frame of queued) this._transmit(frame);
  }

  _onChannelMessage(m) {
    const msg = { channel: m.channel, data: decode(m), epoch: m.epoch, offset: m.offset };
    this._emit('message', msg);
    const entry = this._channels.get(m.channel);
    if (entry) for (const s of [...entry.subs]) call(s.handler, msg);
  }

  _onJoined(m) {
    if (m.id != null) return void this._settle(m.id, m, null);
    // The server joined this connection to a channel.
    const entry = this._channels.get(m.channel);
    if (!entry) return;
    entry.joined = true;
    entry.position = { channel: m.channel, epoch: m.epoch, offset: m.offset };
    for (const s of entry.subs) call(s.hooks.onJoined, entry.position);
  }

  _onLeft(m) {
    if (m.id != null) return void this._settle(m.id, m, null);
    // The server removed this connection from a channel.
    const entry = this._channels.get(m.channel);
    if (!entry) return;
    this._channels.delete(m.channel);
    for (const s of entry.subs) call(s.hooks.onLeft, { channel: m.channel, reason: m.reason });
  }

  _onClose(code, reason) {
    if (this.state === 'closed') return;
    this._setState('closed', { code, reason });
    const pending = this._pending;
    this._pending = new Map();
    this._outbox = [];
    for (const p of pending.values()) {
      p.reject(new RealtimeError('closed', `connection closed (${code})`, p.channel));
    }
  }

  _setState(state, { code, reason }) {
    this.state = state;
    this._emit('state', { state, transport: this.transport, code, reason });
  }

  _emit(event, value) {
    const set = this._listeners.get(event);
    if (set) for (const fn of [...set]) call(fn, value);
  }
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

function toWebSocketURL(url) {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  const u = new URL(url, base);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  return u.href;
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
