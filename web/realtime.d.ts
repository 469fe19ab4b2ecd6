// Type declarations for realtime.js, the browser client of a realtime hub
// (protocol realtime.v1). See PROTOCOL.md.

/** The transports a hub may offer, in the order they are tried by default. */
export type TransportName = 'websocket' | 'sse' | 'longpoll';

/** The states of a client; 'closed' is final. */
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** A JSON value, as published and received in the `data` form. */
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/**
 * A payload as received: the JSON value that was published, or its bytes
 * when it was not compact JSON (published as `b64`).
 */
export type Payload = JSONValue | Uint8Array;

/** Where a message sits in its channel's numbering. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface ConnectOptions {
  /**
   * Where the hub is mounted (realtime.NewHandler), relative to the page or
   * absolute http(s). Default '/realtime/'. A URL ending in '/ws' stands for
   * its parent; query parameters in it are added to every request.
   */
  url?: string;
  /** Use this transport only, with no fallback. */
  transport?: TransportName;
  /** The order to try transports in. Default: the server's (negotiate). */
  transports?: TransportName[];
  /** Query parameters added to every request, e.g. `{name: 'alice'}`. */
  params?: Record<string, string | number | boolean>;
  /** Reconnect after an unexpected end. Default true. */
  reconnect?: boolean;
  /**
   * Backoff bounds in ms. Before reconnect attempt n (from 1) the client
   * waits random(0, min(maxBackoff, minBackoff * 2^n)). Defaults 500, 15000.
   */
  minBackoff?: number;
  maxBackoff?: number;
  /**
   * ms a transport has to deliver the server's welcome before it counts as
   * failed and the next one is tried. Default 5000.
   */
  connectTimeout?: number;
  /**
   * ms publish, send and ping wait for their reply before they reject with
   * a RealtimeError of code 'timeout'; the command may still take effect.
   * 0 waits as long as the connection lasts. Default 10000.
   */
  requestTimeout?: number;
}

export interface StateEvent {
  state: ConnectionState;
  /** The transport in use; null while waiting to reconnect and when closed. */
  transport: TransportName | null;
  /** Close code, when the connection ended ('reconnecting', 'closed'). */
  code?: number;
  reason?: string;
  /** 'reconnecting': the number of the attempt to come, from 1. */
  attempt?: number;
  /**
   * 'reconnecting': ms until the attempt; null while the browser is offline
   * (the attempt comes when it is online again).
   */
  delay?: number | null;
}

/** A message of a channel. */
export interface ChannelMessage<T = Payload> extends Position {
  channel: string;
  data: T;
}

export interface JoinedInfo extends Position {
  channel: string;
  /**
   * After a reconnect: true if every message since the last one seen was
   * recovered, false if some were lost ('resync' fires too).
   */
  recovered?: boolean;
}

export interface SubscribeHooks {
  /** The channel was joined, or joined again after a reconnect. */
  onJoined?: (info: JoinedInfo) => void;
  /** The server removed the connection from the channel; the subscription ends. */
  onLeft?: (info: { channel: string; reason?: string }) => void;
  /** The join was refused; the subscription ends. */
  onError?: (err: RealtimeError) => void;
}

export interface ClientEvents {
  state: StateEvent;
  /** After a reconnect, messages of channel could not be recovered: reload its state. */
  resync: { channel: string };
  /** A server error no request was waiting for (including refused joins and connections). */
  error: RealtimeError;
  /** A payload the application sent to this connection alone. */
  direct: Payload;
  /** Messages of channel were lost on the way (the server's queue was full). */
  gap: { channel: string };
  /** Every channel message, before the subscription handlers get it. */
  message: ChannelMessage;
}

/**
 * The error requests reject with and 'error' listeners receive.
 * `code` is a protocol error code ('forbidden', 'bad_channel',
 * 'too_many_channels', 'too_large', ...), 'closed' when the connection
 * ended before the reply came, 'timeout' when no reply came within
 * requestTimeout, or 'unauthorized' / 'forbidden' when the server refused
 * the connection itself.
 */
export class RealtimeError extends Error {
  constructor(code: string, message?: string, channel?: string);
  readonly name: 'RealtimeError';
  code: string;
  /** The channel the failed command named, if any. */
  channel?: string;
}

export interface Client {
  readonly state: ConnectionState;
  /** The transport in use (or being tried), or null. */
  readonly transport: TransportName | null;
  /** The server's id for the current connection, or null. */
  readonly id: string | null;

  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof ClientEvents>(event: E, fn: (value: ClientEvents[E]) => void): () => void;

  /**
   * Joins channel (again after every reconnect, resuming from the last
   * message seen) and calls handler with each of its messages, once each,
   * in order. Returns unsubscribe.
   */
  subscribe<T = Payload>(
    channel: string,
    handler: (msg: ChannelMessage<T>) => void,
    hooks?: SubscribeHooks,
  ): () => void;

  /** Publishes a JSON value, or bytes; resolves with the message's position. */
  publish(channel: string, value: unknown | ArrayBuffer | ArrayBufferView): Promise<Position>;

  /** Hands a payload to the application's message hook on the server. */
  send(value: unknown | ArrayBuffer | ArrayBufferView): Promise<void>;

  /** Resolves when the server answers. */
  ping(): Promise<void>;

  /** Ends the connection for good; the state becomes 'closed' at once. */
  close(): void;
}

/** Opens a connection; the client is returned at once, in state 'connecting'. */
export function connect(options?: ConnectOptions): Client;
