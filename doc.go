// Package realtime is realtime messaging for Go programs: a [Hub] that an
// application mounts into its own http.ServeMux, through which clients
// join channels and every member of a channel receives what is published
// there, in one order, with nothing silently lost.
//
// A minimal server:
//
//	hub, err := realtime.New(nil)
//	if err != nil { ... }
//	mux := http.NewServeMux()
//	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
//	// ... serve mux; publish from anywhere in the app:
//	hub.Publish(ctx, "news", []byte(`{"headline":"..."}`))
//
// [NewHandler] serves the WebSocket, Server-Sent Events and long-poll
// transports, a negotiation endpoint and the browser client script under
// one prefix. Browsers import the served script; Go programs use the
// package [github.com/realtimekit/realtime/client]. PROTOCOL.md in the
// repository describes the wire protocol for clients in other languages.
//
// # The path of a message
//
// Every message takes one path, whoever publishes it:
//
//  1. A client's frame arrives on its transport, which hands it to
//     [Conn.Receive]; or the application calls [Hub.Publish].
//  2. The Hub checks the channel name and, for clients, the
//     [Options.AuthorizePublish] hook, and passes the payload to the
//     [Backplane].
//  3. The backplane orders the channel's messages, gives each a
//     [Position], and carries it to every hub node that follows the
//     channel, this one included.
//  4. Each node's Hub encodes the message once and appends it to the
//     bounded outbound queue of every local member of the channel.
//  5. Each connection's writer takes what is queued, coalesces it into
//     one frame, and writes it to its transport. The writer is a
//     goroutine that runs only while the queue holds something, so an
//     idle connection costs no writer.
//
// No transport and no backplane has a shortcut around this path, so the
// semantics are the same on all of them.
//
// # Who owns what
//
// The Hub owns channel membership and the node's backplane subscriptions:
// it subscribes a channel when its first local member joins and
// unsubscribes after the last one leaves. It runs one goroutine that
// receives from the backplane, and one that ends idle writers and writes
// that outlast Options.WriteTimeout.
//
// A [Conn] owns its outbound queue and its writer, the only code that
// writes to its transport. When a queue is full, the
// [Options.SlowConsumer] policy applies; a publish never waits for a
// connection.
//
// A transport owns the reading side of its connections and their network
// details. [Hub.Shutdown] and [Hub.Close] wait for every goroutine the
// Hub and its connections started.
//
// # Transports
//
// A transport turns a network connection into a [Conn]. Writing one takes
// the exported API alone, as the built-in ones ([NewWebSocketHandler],
// [NewSSEHandler], [NewLongPollHandler]) and examples/tcptransport do:
//
//  1. Admit the client. HTTP transports call [Hub.Admit] for the origin
//     policy and [Options.Authenticate]; others check identity their own
//     way.
//  2. Call [Hub.Connect] with a [Transport] value for the connection:
//     Write sends one [Frame], Close ends the connection with a code.
//     [ConnInfo.Session] gives clients a secret to address the connection
//     in separate requests; if the client came back with a cursor, pass
//     it as [ConnInfo.Cursor].
//  3. Feed every frame the client sends to [Conn.Receive] (frames longer
//     than [Hub.MaxMessageSize] close the connection); answer frames of
//     the wrong kind with [Conn.RejectFrame].
//  4. When the client goes away, call [Conn.Close] for a clean end or
//     [Conn.CloseNow] for a broken one, and return after [Conn.Done].
//
// # Recovery
//
// The backplane gives each channel's messages positions and keeps a
// bounded history. [Frame.Cursor] holds a connection's position in each of
// its channels; a client that reconnects hands it back (SSE as
// Last-Event-ID, long-poll as its cursor) or joins with a position
// (WebSocket), and receives exactly what it missed, or a "joined" message
// with recovered false for a channel whose history no longer reaches back.
//
// # Backplanes
//
// A [Backplane] orders messages per channel and carries them between hub
// nodes. The default, [NewMemoryBackplane], serves one process; a
// [MemoryBroker] links several hubs in one process. The Backplane
// documentation states the contract for implementers.
//
// # Shutdown
//
// [Hub.Shutdown] refuses new connections and publishes, closes every
// connection with [CloseGoingAway] after writing what was queued for it,
// and returns once all of them have ended. http.Server.Shutdown does not
// wait for WebSocket connections, so shut the Hub down first.
//
// # Logging
//
// The Hub is silent unless [Options.Logger] is set. Connection lifecycle
// logs at Debug, start and stop at Info, slow consumers at Warn, and a
// failing backplane at Error, with the attributes conn, transport,
// channel and err.
package realtime
