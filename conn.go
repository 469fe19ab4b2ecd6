package realtime

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"sort"
	"sync"
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

	// Write sends one server frame: a JSON array of messages (see
	// PROTOCOL.md). frame is valid only during the call. Write returns
	// when ctx ends, with an error. An error closes the connection.
	Write(ctx context.Context, frame []byte) error

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
// one writer goroutine, the only one that writes to its transport; both
// end when the connection closes, after which [Conn.Done] is closed.
type Conn struct {
	hub      *Hub
	t        Transport
	id       string
	identity Identity
	log      *slog.Logger

	// ctx lives as long as the connection; cancel aborts a write in
	// progress when the connection closes at once.
	ctx    context.Context
	cancel context.CancelFunc

	// memberMu serialises this connection's joins and leaves, including
	// backplane I/O, so that membership cannot change while the
	// connection is being taken out of its channels.
	memberMu sync.Mutex

	// mu guards the membership set, the queue and the close state.
	mu       sync.Mutex
	channels map[string]struct{}
	queue    [][]byte
	spare    [][]byte
	queued   int
	lagged   map[string]struct{}
	closing  bool
	graceful bool
	reason   CloseError

	wake       chan struct{} // signalled when there is work for the writer
	writerDone chan struct{}
	done       chan struct{}
}

// maxFrame bounds how many bytes of queued messages one frame coalesces.
const maxFrame = 64 << 10

// Connect registers a new connection whose frames travel over t, on
// behalf of id. It queues the welcome message, starts the connection's
// writer goroutine and calls Options.OnConnect. The transport must then
// pass every client frame to [Conn.Receive] and call [Conn.Close] when the
// client goes away; the writer ends when the connection closes.
//
// Connect returns ErrClosed when the hub is shutting down.
func (h *Hub) Connect(t Transport, id Identity) (*Conn, error) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{
		hub:        h,
		t:          t,
		id:         newConnID(),
		identity:   id,
		ctx:        ctx,
		cancel:     cancel,
		channels:   make(map[string]struct{}),
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	c.log = h.log.With(slog.String("conn", c.id), slog.String("transport", t.Name()))
	if err := h.addConn(c); err != nil {
		cancel()
		return nil, err
	}
	c.enqueue(newMessage("welcome", 0).
		str("conn", c.id).
		uint("protocol", protocolVersion).
		uint("maxMessageSize", uint64(h.opts.MaxMessageSize)).
		end())
	go c.write()
	c.log.Debug("realtime conn opened", slog.String("user", id.UserID))
	if h.opts.OnConnect != nil {
		h.opts.OnConnect(c)
	}
	return c, nil
}

// ID returns the connection's unique, unguessable ID.
func (c *Conn) ID() string { return c.id }

// Identity returns who the connection belongs to.
func (c *Conn) Identity() Identity { return c.identity }

// Transport returns the name of the connection's transport.
func (c *Conn) Transport() string { return c.t.Name() }

// Context returns a context that ends when the connection starts
// closing. Transports read under it.
func (c *Conn) Context() context.Context { return c.ctx }

// Done returns a channel that is closed once the connection has ended:
// its writer has stopped, it has left every channel and OnDisconnect has
// returned.
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
	return c.join(ctx, channel, 0)
}

// Leave takes the connection out of channel at the application's request.
// The client gets a "left" message. It returns ErrNotJoined if the
// connection was not in channel.
func (c *Conn) Leave(channel string) error {
	return c.leave(channel, 0)
}

// Close closes the connection: it stops queueing, writes what is queued
// already (within Options.WriteTimeout), and then has the transport end
// the connection with code and reason. Close does not wait for that; use
// Done. Applications normally pass CloseDisconnected or CloseNormal.
// Transports call Close with the code they observed when the client goes
// away. Only the first call's code and reason count.
func (c *Conn) Close(code CloseCode, reason string) error {
	c.close(CloseError{code, reason}, true)
	return nil
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
			c.cancel()
			c.signal()
		}
		return
	}
	c.closing = true
	c.graceful = graceful
	c.reason = reason
	if !graceful {
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
		c.closeTransport(reason)
		c.cancel()
	}
	<-c.writerDone
	c.closeTransport(reason)
	c.cancel()

	level := slog.LevelDebug
	if reason.Code == CloseSlowConsumer {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "realtime conn closed",
		slog.Int("code", int(reason.Code)), slog.String("reason", reason.Reason))
	if c.hub.opts.OnDisconnect != nil {
		c.hub.opts.OnDisconnect(c, reason)
	}
	close(c.done)
	c.hub.removeConn(c)
}

func (c *Conn) closeTransport(reason CloseError) {
	if err := c.t.Close(reason.Code, reason.Reason); err != nil {
		c.log.Debug("realtime transport close", slog.Any("err", err))
	}
}

// leaveAll takes the connection out of every channel, for good.
func (c *Conn) leaveAll() {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()
	c.mu.Lock()
	names := make([]string, 0, len(c.channels))
	for name := range c.channels {
		names = append(names, name)
	}
	clear(c.channels)
	c.mu.Unlock()

	for _, name := range names {
		c.hub.removeMember(c, name, nil)
		if c.hub.opts.OnLeave != nil {
			c.hub.opts.OnLeave(c, name)
		}
	}
}

func (c *Conn) join(ctx context.Context, name string, id uint64) error {
	if err := c.hub.checkChannel(name); err != nil {
		return err
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
		return ErrClosed
	case !member && count >= c.hub.opts.MaxChannels:
		return ErrTooManyChannels
	}

	err := c.hub.addMember(ctx, c, name, func(last Position) []byte {
		return newMessage("joined", id).str("channel", name).position(last).end()
	})
	if err != nil {
		return err
	}
	if member {
		return nil
	}
	c.mu.Lock()
	c.channels[name] = struct{}{}
	c.mu.Unlock()
	if c.hub.opts.OnJoin != nil {
		c.hub.opts.OnJoin(c, name)
	}
	return nil
}

func (c *Conn) leave(name string, id uint64) error {
	c.memberMu.Lock()
	defer c.memberMu.Unlock()

	c.mu.Lock()
	_, member := c.channels[name]
	delete(c.channels, name)
	c.mu.Unlock()
	if !member {
		return ErrNotJoined
	}
	c.hub.removeMember(c, name, newMessage("left", id).str("channel", name).end())
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

// enqueue queues a message that is not a channel message (a reply, a
// direct message). Under every policy, one that does not fit closes the
// connection: such messages answer the client and cannot be dropped.
func (c *Conn) enqueue(m []byte) bool {
	return c.push(m, "")
}

// enqueueMessage queues a message of channel. It never blocks.
func (c *Conn) enqueueMessage(channel string, m []byte) {
	c.push(m, channel)
}

func (c *Conn) push(m []byte, channel string) bool {
	ok, slow := c.tryPush(m, channel)
	if slow {
		c.close(CloseError{CloseSlowConsumer, "slow consumer: outbound queue full"}, false)
	}
	return ok
}

// tryPush queues m, reporting whether it did and whether the queue
// overflowed under a policy that disconnects.
func (c *Conn) tryPush(m []byte, channel string) (ok, slow bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false, false
	}
	if _, lagged := c.lagged[channel]; lagged && channel != "" {
		gap := newMessage("gap", 0).str("channel", channel).end()
		if !c.fits(len(gap) + len(m)) {
			return false, false
		}
		delete(c.lagged, channel)
		c.append(gap)
	}
	if c.fits(len(m)) {
		c.append(m)
		return true, false
	}
	if channel == "" || c.hub.opts.SlowConsumer != DropMessages {
		return false, true
	}
	if c.lagged == nil {
		c.lagged = make(map[string]struct{})
	}
	c.lagged[channel] = struct{}{}
	return false, false
}

func (c *Conn) fits(n int) bool {
	o := &c.hub.opts
	return len(c.queue) < o.QueueMessages && c.queued+n <= o.QueueBytes
}

func (c *Conn) append(m []byte) {
	c.queue = append(c.queue, m)
	c.queued += len(m)
	if len(c.queue) == 1 {
		c.signal()
	}
}

// signal wakes the writer. c.mu is held.
func (c *Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// write is the connection's writer goroutine: the only caller of the
// transport's Write. It coalesces what is queued into frames.
func (c *Conn) write() {
	defer close(c.writerDone)
	var frame []byte
	for {
		batch, ok := c.next()
		if !ok {
			return
		}
		frame = appendFrame(frame[:0], batch)
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()

		ctx, cancel := context.WithTimeout(c.ctx, c.hub.opts.WriteTimeout)
		err := c.t.Write(ctx, frame)
		cancel()
		if err != nil {
			c.close(CloseError{CloseAbnormal, "write failed: " + err.Error()}, false)
			return
		}
		if cap(frame) > 4*maxFrame {
			frame = nil // do not keep a rare huge buffer
		}
	}
}

// next waits for queued messages and takes up to a frame's worth. It
// reports false when the writer should stop.
func (c *Conn) next() ([][]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue) == 0 && len(c.lagged) == 0 {
		if c.closing {
			return nil, false
		}
		c.mu.Unlock()
		<-c.wake
		c.mu.Lock()
	}
	if c.closing && !c.graceful {
		return nil, false
	}

	n, size := 0, 0
	for n < len(c.queue) && (n == 0 || size+len(c.queue[n]) <= maxFrame) {
		size += len(c.queue[n])
		n++
	}
	batch := append(c.spare[:0], c.queue[:n]...)
	c.spare = nil
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	c.queued -= size
	if len(c.queue) == 0 {
		// Channels that lost messages and got none since hear of it now.
		for name := range c.lagged {
			batch = append(batch, newMessage("gap", 0).str("channel", name).end())
		}
		clear(c.lagged)
	}
	return batch, true
}

// newConnID returns a random, unguessable connection ID.
func newConnID() string {
	var b [12]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
