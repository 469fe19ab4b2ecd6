package realtime

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
)

// Transport carries frames between the Hub and one client connection. A
// transport accepts a client its own way, then hands the Hub a Transport
// for it with [Hub.Connect], feeds it every frame the client sends with
// [Conn.Receive], and reports the end of the connection with [Conn.Close].
// The built-in WebSocket transport is written this way, with nothing but
// the exported API; a third party's transport can be too.
//
// The Hub calls Write from one goroutine at a time, the connection's
// writer. A Write that starts during or after Close must fail promptly.
type Transport interface {
	// Name names the kind of transport, such as "websocket". It is used in
	// logs and reported by Conn.Transport.
	Name() string

	// Write sends one server frame (see [Frame]). The frame is valid only
	// during the call. Write returns when ctx ends, with an error. An
	// error closes the connection, with the code of a CloseError in its
	// chain, or CloseAbnormal.
	Write(ctx context.Context, f Frame) error

	// Close ends the connection, telling the client code and reason where
	// the transport has a way to. It may be called while a Write is in
	// progress, and must make that Write return. It may be called more
	// than once, and must return within a few seconds even when the peer
	// is gone.
	Close(code CloseCode, reason string) error
}

// Conn is one client connection to a Hub, over any transport. The Hub
// creates it in [Hub.Connect]; the application gets it in hooks and from
// [Hub.Conn].
//
// A Conn is safe for concurrent use. It owns a bounded outbound queue and
// a writer goroutine, the only one that writes to its transport, which
// runs while the queue holds something; both end when the connection
// closes, after which [Conn.Done] is closed.
type Conn struct {
	hub      *Hub
	t        Transport
	id       string
	identity Identity

	// ctx ends when the connection starts closing. writeCtx ends when
	// writing must stop: at once for an immediate close, after the flush
	// for a graceful one.
	ctx         context.Context
	cancel      context.CancelFunc
	writeCtx    context.Context
	writeCancel context.CancelCauseFunc
	// writeSince is when the write in progress began (Hub.now), 0 while
	// none is, and -1 once the hub's sweep has ended it for outlasting
	// Options.WriteTimeout.
	writeSince atomic.Int64

	// memberMu serialises this connection's joins and leaves, including
	// backplane I/O, so that membership cannot change while the
	// connection is being taken out of its channels.
	memberMu sync.Mutex

	// mu guards the membership set, the queue and the close state.
	mu       sync.Mutex
	channels map[string]struct{}
	queue    []item
	spare    []item
	queued   int
	lagged   map[string]struct{}
	closing  bool
	graceful bool
	reason   CloseError

	// writing is set while a writer goroutine runs; writerIdle, if set,
	// is closed when it stops. writerStopped forbids new writers once the
	// connection is finishing. cursor is the writer's resume state, used
	// by one writer at a time; nil when the transport takes none.
	wake          chan struct{} // signalled when work arrives for a lingering writer
	writing       bool
	writerStopped bool
	writerIdle    chan struct{}
	cursor        map[string]Position

	done chan struct{}
}

// maxFrame bounds how many bytes of queued messages one frame coalesces.
const maxFrame = 64 << 10

// ConnInfo describes a connection a transport hands to [Hub.Connect].
type ConnInfo struct {
	// Identity is who the connection belongs to, usually from
	// [Hub.Admit].
	Identity Identity

	// Session, if not empty, is the secret with which the client addresses
	// this connection in later requests (the SSE and long-poll transports
	// take commands by separate POSTs). It is sent to the client in the
	// welcome message only.
	Session string

	// Cursor, if not empty, is the resume state a reconnecting client
	// handed back (see [Frame.Cursor]). Connect joins every channel in it
	// again, as the client's own joins would be (Options.AuthorizeJoin
	// applies), recovering what was missed: the client gets "joined" with
	// "recovered" true and the missed messages, "recovered" false when
	// they are gone, or an error per channel. Until those arrive, frames
	// carry the cursor as it was, so a client that drops again in between
	// loses nothing. A malformed cursor gets a "bad_request" error and
	// joins nothing.
	Cursor string

	// NoCursor says that the transport never calls [Frame.Cursor], because
	// its clients resume by joining again with their positions (as
	// WebSocket clients do). The connection then keeps no resume cursor,
	// which saves memory and work for every message; Frame.Cursor returns
	// "".
	NoCursor bool
}

// Connect registers a new connection whose frames travel over t. It
// queues the welcome message (which starts the connection's writer),
// calls Options.OnConnect and resumes info.Cursor; it blocks while the
// resumed joins read history. The transport must then pass every client
// frame to [Conn.Receive] and call [Conn.Close] or [Conn.CloseNow] when the
// client goes away; the writer ends when the connection closes.
//
// Connect returns ErrClosed when the hub is shutting down.
func (h *Hub) Connect(t Transport, info ConnInfo) (*Conn, error) {
	ctx, cancel := context.WithCancel(context.Background())
	writeCtx, writeCancel := context.WithCancelCause(context.Background())
	c := &Conn{
		hub:         h,
		t:           t,
		id:          newConnID(),
		identity:    info.Identity,
		ctx:         ctx,
		cancel:      cancel,
		writeCtx:    writeCtx,
		writeCancel: writeCancel,
		channels:    make(map[string]struct{}),
		wake:        make(chan struct{}, 1),
		done:        make(chan struct{}),
	}
	if err := h.addConn(c); err != nil {
		cancel()
		writeCancel(nil)
		return nil, err
	}
	welcome := newMessage("welcome", 0).
		str("conn", c.id).
		uint("protocol", protocolVersion).
		uint("maxMessageSize", uint64(h.opts.MaxMessageSize))
	if info.Session != "" {
		welcome = welcome.str("session", info.Session)
	}
	resume, cursorErr := parseCursor(info.Cursor, h.opts.MaxChannels)
	if !info.NoCursor {
		c.cursor = maps.Clone(resume) // the writer's own copy
		if c.cursor == nil {
			c.cursor = make(map[string]Position)
		}
	}
	c.enqueue(welcome.end())
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		c.logger().Debug("realtime conn opened", slog.String("user", info.Identity.UserID))
	}
	if h.opts.OnConnect != nil {
		h.opts.OnConnect(c)
	}
	if cursorErr != nil {
		c.replyError(0, "", &protocolError{codeBadRequest, "bad cursor: " + cursorErr.Error()})
	} else {
		c.resume(resume)
	}
	return c, nil
}

// logger returns the hub's logger with the connection's attributes. It
// is built when needed: connections log rarely, and an idle one should
// not hold it.
func (c *Conn) logger() *slog.Logger {
	return c.hub.log.With(slog.String("conn", c.id), slog.String("transport", c.t.Name()))
}

// ID returns the connection's unique, unguessable ID.
func (c *Conn) ID() string { return c.id }

// Identity returns who the connection belongs to.
func (c *Conn) Identity() Identity { return c.identity }

// Transport returns the name of the connection's transport.
func (c *Conn) Transport() string { return c.t.Name() }

// Context returns a context that ends when the connection starts
// closing. Work done for the connection, such as a hook's, can stop then.
func (c *Conn) Context() context.Context { return c.ctx }

// Done returns a channel that is closed once the connection has ended:
// its writer has stopped, it has left every channel, OnDisconnect has
// returned and the hub no longer lists it.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Reason returns why the connection ended, once Done is closed, or the
// zero CloseError before.
func (c *Conn) Reason() CloseError {
	select {
	case <-c.done:
		return c.reason
	default:
		return CloseError{}
	}
}

// Channels returns the channels the connection is in, sorted.
func (c *Conn) Channels() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.channels))
	for name := range c.channels {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Send queues data for this connection alone, as a "direct" message. It
// does not wait for the client. It returns ErrClosed if the connection is
// closed, including when data did not fit its queue and the slow-consumer
// policy closed it; under DropMessages, data that does not fit its queue
// closes the connection too, since no channel can report its loss.
func (c *Conn) Send(data []byte) error {
	if !c.enqueue(newMessage("direct", 0).payload(data).end()) {
		return ErrClosed
	}
	return nil
}

// Join makes the connection a member of channel at the application's
// request, without asking Options.AuthorizeJoin. The client gets a
// "joined" message. Joining a channel the connection is in already only
// repeats that message.
func (c *Conn) Join(ctx context.Context, channel string) error {
	return c.join(ctx, channel, 0, nil)
}

// Leave takes the connection out of channel at the application's request.
// The client gets a "left" message. It returns ErrNotJoined if the
// connection was not in channel.
func (c *Conn) Leave(channel string) error {
	return c.leave(channel, 0)
}

// Close closes the connection gracefully: it stops taking commands and
// queueing messages, writes what is queued already (each write bounded by
// Options.WriteTimeout), and then has the transport end the connection
// with code and reason. Close does not wait for that; use Done.
// Applications normally pass CloseDisconnected or CloseNormal. Only the
// first close's code and reason count.
func (c *Conn) Close(code CloseCode, reason string) error {
	c.close(CloseError{code, reason}, true)
	return nil
}

// CloseNow closes the connection at once, dropping what is queued: for a
// peer that is gone or cannot keep up. Transports call it with the code
// they observed (CloseAbnormal for a broken connection, ClosePingTimeout
// for a silent one). A graceful close in progress is cut short.
func (c *Conn) CloseNow(code CloseCode, reason string) error {
	c.close(CloseError{code, reason}, false)
	return nil
}

// writeAborter is a transport that does not watch the context of a write
// itself: cancelWrites aborts its write in progress instead.
type writeAborter interface {
	abortWrite()
}

// cancelWrites ends writeCtx, with cause, and the write in progress.
func (c *Conn) cancelWrites(cause error) {
	c.writeCancel(cause)
	if a, ok := c.t.(writeAborter); ok {
		a.abortWrite()
	}
}

// close starts closing the connection. A graceful close flushes the queue
// first; a second, immediate close cuts a graceful one short. It never
// blocks, so it may be called with channel locks held.
func (c *Conn) close(reason CloseError, graceful bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		if c.graceful && !graceful {
			c.graceful = false
			c.cancelWrites(nil)
			c.signal()
		}
		return
	}
	c.closing = true
	c.graceful = graceful
	c.reason = reason
	c.cancel()
	if !graceful {
		// finish has the transport close, which ends a write in progress
		// while still telling the client why where it can.
		c.queue, c.queued = nil, 0
	}
	c.signal()
	go c.finish()
}

// finish takes a closing connection out of the hub. It is started once,
// by close, and is the last goroutine of the connection to end.
func (c *Conn) finish() {
	c.leaveAll()

	c.mu.Lock()
	graceful, reason := c.graceful, c.reason
	c.mu.Unlock()
	if !graceful {
		c.closeTransport(reason) // unblocks a write in progress
	}
	c.mu.Lock()
	for c.writing {
		idle := make(chan struct{})
		c.writerIdle = idle
		c.mu.Unlock()
		<-idle
		c.mu.Lock()
	}
	c.writerStopped = true
	c.mu.Unlock()
	c.closeTransport(reason)
	c.cancelWrites(nil)

	level := slog.LevelDebug
	if reason.Code == CloseSlowConsumer {
		c.hub.stats.slow.Add(1)
		level = slog.LevelWarn
	}
	c.logger().Log(context.Background(), level, "realtime conn closed",
		slog.Int("code", int(reason.Code)), slog.String("reason", reason.Reason))
	if c.hub.opts.OnDisconnect != nil {
		c.hub.opts.OnDisconnect(c, reason)
	}
	// The hub forgets the connection first, so that Hub.Conns never lists
	// one whose Done is closed.
	c.hub.removeConn(c)
	close(c.done)
}

func (c *Conn) closeTransport(reason CloseError) {
	if err := c.t.Close(reason.Code, reason.Reason); err != nil {
		c.logger().Debug("realtime transport close", slog.Any("err", err))
	}
}

// leaveAll takes the connection out of every channel, for good. The
// OnLeave hooks run after, outside memberMu, so that they may call Join
// or Leave (which then fail with ErrClosed).
func (c *Conn) leaveAll() {
	c.memberMu.Lock()
	c.mu.Lock()
	names := make([]string, 0, len(c.channels))
	for name := range c.channels {
		names = append(names, name)
	}
	clear(c.channels)
	c.mu.Unlock()
	for _, name := range names {
		c.hub.removeMember(c, name, nil)
	}
	c.memberMu.Unlock()

	if c.hub.opts.OnLeave != nil {
		for _, name := range names {
			c.hub.opts.OnLeave(c, name)
		}
	}
}

// join makes the connection a member of name. With since, it recovers
// the messages after it (see Hub.addMember).
func (c *Conn) join(ctx context.Context, name string, id uint64, since *Position) error {
	joined, err := c.joinLocked(ctx, name, id, since)
	if joined && c.hub.opts.OnJoin != nil {
		c.hub.opts.OnJoin(c, name)
	}
	return err
}

// joinLocked does the work of join under memberMu, reporting whether the
// connection became a member.
func (c *Conn) joinLocked(ctx context.Context, name string, id uint64, since *Position) (bool, error) {
	if err := c.hub.checkChannel(name); err != nil {
		return false, err
	}
	c.memberMu.Lock()
	defer c.memberMu.Unlock()

	c.mu.Lock()
	closing := c.closing
	_, member := c.channels[name]
	count := len(c.channels)
	c.mu.Unlock()
	switch {
	case closing:
		return false, ErrClosed
	case member:
		c.hub.confirmMember(c, name, id)
		return false, nil
	case count >= c.hub.opts.MaxChannels:
		return false, ErrTooManyChannels
	}

	if err := c.hub.addMember(ctx, c, name, id, since); err != nil {
		return false, err
	}
	c.mu.Lock()
	c.channels[name] = struct{}{}
	c.mu.Unlock()
	return true, nil
}

func (c *Conn) leave(name string, id uint64) error {
	c.memberMu.Lock()
	c.mu.Lock()
	_, member := c.channels[name]
	delete(c.channels, name)
	c.mu.Unlock()
	if member {
		c.hub.removeMember(c, name, newMessage("left", id).str("channel", name).end())
	}
	c.memberMu.Unlock()

	if !member {
		return ErrNotJoined
	}
	if c.hub.opts.OnLeave != nil {
		c.hub.opts.OnLeave(c, name)
	}
	return nil
}

// isMember reports whether the connection is in channel.
func (c *Conn) isMember(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.channels[name]
	return ok
}

// newConnID returns a random, unguessable connection ID.
func newConnID() string {
	return randomToken(12)
}

// randomToken returns n random bytes, base64url-encoded.
func randomToken(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
