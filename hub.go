package realtime

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"
)

// Hub routes messages between connections and channels. Transports hand
// it connections; the application publishes through it; a Backplane
// orders every channel's messages and carries them between nodes.
//
// A Hub is safe for concurrent use. Create one with [New] and end it with
// [Hub.Shutdown] or [Hub.Close], which wait for every goroutine it
// started. The zero value is not usable.
type Hub struct {
	opts Options
	bp   Backplane
	log  *slog.Logger

	// stop ends the receive loop; loops tracks it.
	stop  context.CancelFunc
	loops sync.WaitGroup

	// subLocks serialise Subscribe and Unsubscribe per channel, so that a
	// channel's backplane subscription follows its local membership
	// without holding mu during backplane I/O.
	subLocks [64]sync.Mutex
	seed     maphash.Seed

	mu       sync.RWMutex
	conns    map[string]*Conn
	channels map[string]*channel
	closing  bool
	// connsDone is closed when closing is set and conns becomes empty.
	connsDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// channel is one channel's local members.
type channel struct {
	// mu orders deliveries and membership changes of the channel, so that
	// a member's "joined" reply comes before every message it receives
	// and "left" after the last.
	mu sync.Mutex
	// members is replaced, never changed in place.
	members []*Conn
	// last is the position of the last message delivered here.
	last Position
}

// New returns a running Hub. It starts one goroutine that receives from
// the backplane; Shutdown and Close end it.
func New(opts *Options) (*Hub, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Backplane == nil {
		o.Backplane = NewMemoryBackplane()
	}
	ctx, stop := context.WithCancel(context.Background())
	h := &Hub{
		opts:      o,
		bp:        o.Backplane,
		log:       o.Logger,
		stop:      stop,
		seed:      maphash.MakeSeed(),
		conns:     make(map[string]*Conn),
		channels:  make(map[string]*channel),
		connsDone: make(chan struct{}),
	}
	h.loops.Add(1)
	go h.receive(ctx)
	h.log.Info("realtime hub started")
	return h, nil
}

// Publish sends data to every member of channel, on every node, and
// returns the position the backplane gave it. It returns once the
// backplane has taken the message, without waiting for any connection;
// members receive it in position order. data is not retained after
// Publish returns.
func (h *Hub) Publish(ctx context.Context, channel string, data []byte) (Position, error) {
	if err := h.checkChannel(channel); err != nil {
		return Position{}, err
	}
	if len(data) > h.opts.MaxMessageSize {
		return Position{}, ErrTooLarge
	}
	h.mu.RLock()
	closing := h.closing
	h.mu.RUnlock()
	if closing {
		return Position{}, ErrClosed
	}
	pos, err := h.bp.Publish(ctx, channel, data)
	if err != nil {
		return Position{}, fmt.Errorf("realtime: publish: %w", err)
	}
	return pos, nil
}

// Conn returns the connection with the given ID on this node, or nil.
func (h *Hub) Conn(id string) *Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.conns[id]
}

// Conns returns the connections open on this node, in no order.
func (h *Hub) Conns() []*Conn {
	h.mu.RLock()
	defer h.mu.RUnlock()
	conns := make([]*Conn, 0, len(h.conns))
	for _, c := range h.conns {
		conns = append(conns, c)
	}
	return conns
}

// Members returns the connections of this node that are in channel.
func (h *Hub) Members(channel string) []*Conn {
	h.mu.RLock()
	ch := h.channels[channel]
	h.mu.RUnlock()
	if ch == nil {
		return nil
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return append([]*Conn(nil), ch.members...)
}

// Shutdown stops the hub gracefully. It refuses new connections and
// publishes, tells every connection that the server is going away
// (CloseGoingAway) after writing what was queued for it, and waits until
// all of them have ended. Then it stops its goroutines and closes the
// backplane. If ctx ends first, Shutdown closes what remains at once, as
// Close does, and returns ctx.Err(). Shutdown may be called more than
// once and together with Close.
//
// http.Server.Shutdown does not wait for hijacked or streaming
// connections: call Hub.Shutdown first, or from
// http.Server.RegisterOnShutdown.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.closeConns(true)
	select {
	case <-h.connsDone:
		return h.finish()
	case <-ctx.Done():
		h.closeConns(false)
		<-h.connsDone
		h.finish()
		return ctx.Err()
	}
}

// Close stops the hub at once: every connection is closed with
// CloseGoingAway without writing what was queued for it. Close waits for
// the hub's goroutines and those of its connections, which transports
// bound in time, and then closes the backplane.
func (h *Hub) Close() error {
	h.closeConns(false)
	<-h.connsDone
	return h.finish()
}

func (h *Hub) closeConns(graceful bool) {
	h.mu.Lock()
	if !h.closing {
		h.closing = true
		h.log.Info("realtime hub shutting down", slog.Int("conns", len(h.conns)))
		if len(h.conns) == 0 {
			close(h.connsDone)
		}
	}
	conns := make([]*Conn, 0, len(h.conns))
	for _, c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()

	for _, c := range conns {
		c.close(CloseError{CloseGoingAway, "server shutting down"}, graceful)
	}
}

// finish stops the receive loop and closes the backplane, once.
func (h *Hub) finish() error {
	h.closeOnce.Do(func() {
		h.stop()
		h.loops.Wait()
		if err := h.bp.Close(); err != nil {
			h.closeErr = fmt.Errorf("realtime: close backplane: %w", err)
		}
		h.log.Info("realtime hub stopped")
	})
	return h.closeErr
}

// receive hands the backplane's messages to local members until ctx ends.
func (h *Hub) receive(ctx context.Context) {
	defer h.loops.Done()
	pause := 10 * time.Millisecond
	for {
		msgs, err := h.bp.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return
			}
			h.log.Error("realtime backplane receive failed", slog.Any("err", err))
			if !sleep(ctx, pause) {
				return
			}
			pause = min(2*pause, 2*time.Second)
			continue
		}
		pause = 10 * time.Millisecond
		for _, m := range msgs {
			h.deliver(m)
		}
	}
}

// deliver queues m for every local member of its channel. It never
// blocks on a connection: a full queue triggers the slow-consumer policy.
func (h *Hub) deliver(m Message) {
	h.mu.RLock()
	ch := h.channels[m.Channel]
	h.mu.RUnlock()
	if ch == nil {
		return
	}
	frame := encodePublication(m)

	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.last = m.Position
	for _, c := range ch.members {
		c.enqueueMessage(m.Channel, frame)
	}
}

// addConn registers c, unless the hub is closing.
func (h *Hub) addConn(c *Conn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return ErrClosed
	}
	h.conns[c.id] = c
	return nil
}

// removeConn forgets c once it has left every channel.
func (h *Hub) removeConn(c *Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.conns, c.id)
	if h.closing && len(h.conns) == 0 {
		select {
		case <-h.connsDone:
		default:
			close(h.connsDone)
		}
	}
}

func (h *Hub) subLock(channel string) *sync.Mutex {
	return &h.subLocks[maphash.String(h.seed, channel)%uint64(len(h.subLocks))]
}

// addMember makes c a member of name, subscribing the backplane if c is
// the channel's first local member. reply, built with the channel's last
// position, is queued for c in order with the channel's messages.
func (h *Hub) addMember(ctx context.Context, c *Conn, name string, reply func(Position) []byte) error {
	l := h.subLock(name)
	l.Lock()
	defer l.Unlock()

	h.mu.RLock()
	ch := h.channels[name]
	h.mu.RUnlock()
	if ch == nil {
		if err := h.bp.Subscribe(ctx, name); err != nil {
			return fmt.Errorf("realtime: subscribe: %w", err)
		}
		ch = &channel{}
		h.mu.Lock()
		h.channels[name] = ch
		h.mu.Unlock()
	}

	ch.mu.Lock()
	defer ch.mu.Unlock()
	members := make([]*Conn, len(ch.members), len(ch.members)+1)
	copy(members, ch.members)
	ch.members = append(members, c)
	c.enqueue(reply(ch.last))
	return nil
}

// removeMember takes c out of name, unsubscribing the backplane after the
// last local member. reply, if not nil, is queued for c after the last
// message of the channel it gets.
func (h *Hub) removeMember(c *Conn, name string, reply []byte) {
	l := h.subLock(name)
	l.Lock()
	defer l.Unlock()

	h.mu.RLock()
	ch := h.channels[name]
	h.mu.RUnlock()
	if ch == nil {
		return
	}

	ch.mu.Lock()
	members := make([]*Conn, 0, len(ch.members))
	for _, m := range ch.members {
		if m != c {
			members = append(members, m)
		}
	}
	ch.members = members
	if reply != nil {
		c.enqueue(reply)
	}
	ch.mu.Unlock()

	if len(members) > 0 {
		return
	}
	h.mu.Lock()
	delete(h.channels, name)
	h.mu.Unlock()
	// The backplane call is bounded: a hub that cannot reach its broker
	// must still let connections go.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.bp.Unsubscribe(ctx, name); err != nil {
		h.log.Warn("realtime backplane unsubscribe failed",
			slog.String("channel", name), slog.Any("err", err))
	}
}

func (h *Hub) checkChannel(name string) error {
	if err := h.opts.CheckChannel(name); err != nil {
		if errors.Is(err, ErrBadChannel) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrBadChannel, err)
	}
	return nil
}

// sleep waits for d or until ctx ends, reporting whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
