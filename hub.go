package realtime

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
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

	// stopSweep ends the sweep goroutine, which outlives the receive loop
	// so that writes stay bounded while Shutdown flushes; swept tracks it.
	stopSweep context.CancelFunc
	swept     sync.WaitGroup
	// clock is the start of the hub's monotonic clock for write times.
	clock time.Time

	// subLocks serialise Subscribe and Unsubscribe per channel, so that a
	// channel's backplane subscription follows its local membership
	// without holding mu during backplane I/O.
	subLocks [64]sync.Mutex
	seed     maphash.Seed

	mu       sync.RWMutex
	conns    map[string]*Conn
	channels map[string]*channel
	// connsPeak and channelsPeak are the largest sizes of conns and
	// channels since they were made (see shrunk).
	connsPeak    int
	channelsPeak int
	closing      bool
	// connsDone is closed when closing is set and conns becomes empty.
	connsDone chan struct{}

	closeOnce sync.Once
	closeErr  error

	stats stats
	fwd   forwarder

	// sweep is closed and replaced every idleSweepInterval: writers that
	// found nothing to write since the last sweep end then.
	sweep atomic.Pointer[chan struct{}]
}

// idleSweepInterval is how often writers of idle connections end, and
// how often writes are checked against Options.WriteTimeout.
const idleSweepInterval = time.Second

// now returns the time on the hub's monotonic clock, in nanoseconds
// since New, never 0.
func (h *Hub) now() int64 { return int64(time.Since(h.clock)) + 1 }

// idleSweep returns the channel that the next idle sweep closes.
func (h *Hub) idleSweep() <-chan struct{} { return *h.sweep.Load() }

// sweepIdle runs the idle sweeps until ctx ends, and then leaves a closed
// channel behind, so that no writer lingers after the hub stops.
func (h *Hub) sweepIdle(ctx context.Context) {
	defer h.swept.Done()
	t := time.NewTicker(idleSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			ch := make(chan struct{})
			close(ch)
			close(*h.sweep.Swap(&ch))
			return
		}
		ch := make(chan struct{})
		close(*h.sweep.Swap(&ch))
		h.expireWrites(h.now())
	}
}

// channel is one channel's local members.
type channel struct {
	// mu orders deliveries and membership changes of the channel, so that
	// a member's "joined" reply comes before every message it receives
	// and "left" after the last.
	mu sync.Mutex
	// members is replaced, never changed in place.
	members []*Conn
	// pending holds the messages for members whose join is still reading
	// history, in order; they are queued once it is read.
	pending map[*Conn][]Message
	// starts holds, for members whose membership starts after the last
	// message delivered here, where it starts: messages up to it are
	// still on their way from the backplane and are not theirs.
	starts map[*Conn]Position
	// pendingPeak and startsPeak are the largest sizes of pending and
	// starts since they were made (see shrunk).
	pendingPeak, startsPeak int
	// last is the position of the last message delivered here.
	last Position
}

// New returns a running Hub. It starts two goroutines, one that receives
// from the backplane and one that sweeps idle writers and late writes
// once a second; Shutdown and Close end them.
func New(opts *Options) (*Hub, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Backplane == nil {
		o.Backplane = NewMemoryBackplane(nil)
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
	h.fwd.init()
	h.sweep.Store(new(chan struct{}))
	*h.sweep.Load() = make(chan struct{})
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	h.stopSweep, h.clock = stopSweep, time.Now()
	h.loops.Add(1)
	go h.receive(ctx)
	h.swept.Add(1)
	go h.sweepIdle(sweepCtx)
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

// MaxMessageSize returns the largest frame a client may send and the
// largest payload anyone may publish (Options.MaxMessageSize).
func (h *Hub) MaxMessageSize() int { return h.opts.MaxMessageSize }

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
// publishes, delivers to local members what the backplane has already
// taken, tells every connection that the server is going away
// (CloseGoingAway) after writing what was queued for it, and waits until
// all of them have ended. Then it stops its goroutines and closes the
// backplane. If ctx ends first, Shutdown closes the remaining connections
// at once and returns ctx.Err() without waiting for them; Close then
// waits. Shutdown may be called more than once and together with Close.
//
// http.Server.Shutdown does not wait for hijacked or streaming
// connections: call Hub.Shutdown first, or from
// http.Server.RegisterOnShutdown.
func (h *Hub) Shutdown(ctx context.Context) error {
	if h.setClosing() {
		h.drain(ctx)
	}
	h.closeConns(true)
	select {
	case <-h.connsDone:
		return h.finish()
	case <-ctx.Done():
		h.closeConns(false)
		return ctx.Err()
	}
}

// Close stops the hub at once: every connection is closed with
// CloseGoingAway without writing what was queued for it. Close waits for
// the hub's goroutines and those of its connections, which transports
// bound in time, and then closes the backplane.
func (h *Hub) Close() error {
	h.setClosing()
	h.closeConns(false)
	<-h.connsDone
	return h.finish()
}

// setClosing refuses new connections and publishes from now on. It
// reports whether this call did it.
func (h *Hub) setClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.closing = true
	h.fwd.shutdown()
	h.log.Info("realtime hub shutting down", slog.Int("conns", len(h.conns)))
	if len(h.conns) == 0 {
		close(h.connsDone)
	}
	return true
}

// drain stops the receive loop and delivers what the backplane still
// holds for this node, so that a message whose publish returned before
// Shutdown reaches the local members before they are told to go. It ends
// after a short quiet spell, or with ctx.
func (h *Hub) drain(ctx context.Context) {
	h.stop()
	h.loops.Wait()
	const quiet = 20 * time.Millisecond
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, quiet)
		msgs, err := h.bp.Receive(rctx)
		cancel()
		if err != nil {
			return
		}
		for _, m := range msgs {
			h.deliver(m)
		}
	}
}

func (h *Hub) closeConns(graceful bool) {
	h.mu.Lock()
	conns := make([]*Conn, 0, len(h.conns))
	for _, c := range h.conns {
		conns = append(conns, c)
	}
	h.mu.Unlock()

	for _, c := range conns {
		c.close(CloseError{CloseGoingAway, "server shutting down"}, graceful)
	}
}

// finish stops the receive loop and the sweep and closes the backplane,
// once.
func (h *Hub) finish() error {
	h.closeOnce.Do(func() {
		h.stop()
		h.loops.Wait()
		h.stopSweep()
		h.swept.Wait()
		h.fwd.stop()
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
	if m.Direct {
		h.direct(m.Data)
		return
	}
	if m.Gap {
		h.stats.gaps.Add(1)
		h.deliverGap(m.Channel)
		return
	}
	h.mu.RLock()
	ch := h.channels[m.Channel]
	h.mu.RUnlock()
	if ch == nil {
		return
	}
	it := item{data: encodePublication(m), ref: &itemRef{kind: itemMessage, channel: m.Channel, pos: m.Position}}

	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.last = m.Position
	for _, c := range ch.members {
		if len(ch.starts) > 0 {
			if start, ok := ch.starts[c]; ok {
				if !after(m.Position, start) {
					continue
				}
				ch.dropStart(c)
			}
		}
		if buf, joining := ch.pending[c]; joining {
			if len(buf) >= h.opts.QueueMessages {
				c.close(CloseError{CloseSlowConsumer, "slow consumer: backlog while joining"}, false)
				continue
			}
			ch.pending[c] = append(buf, m)
			continue
		}
		c.push(it)
	}
}

// deliverGap tells the members of name (of every channel, when name is
// empty) that the backplane may have lost messages of it.
func (h *Hub) deliverGap(name string) {
	h.mu.RLock()
	affected := make(map[string]*channel)
	if name != "" {
		if ch := h.channels[name]; ch != nil {
			affected[name] = ch
		}
	} else {
		for n, ch := range h.channels {
			affected[n] = ch
		}
	}
	h.mu.RUnlock()
	if len(affected) > 0 {
		h.log.Warn("realtime backplane reported lost messages", slog.String("channel", name))
	}
	for n, ch := range affected {
		gap := newMessage("gap", 0).str("channel", n).end()
		ch.mu.Lock()
		for _, c := range ch.members {
			c.enqueue(gap)
		}
		ch.mu.Unlock()
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
	grown(&h.connsPeak, len(h.conns))
	return nil
}

// removeConn forgets c once it has left every channel.
func (h *Hub) removeConn(c *Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.conns, c.id)
	h.conns = shrunk(h.conns, &h.connsPeak)
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
// the channel's first local member, and queues its "joined" reply. With
// since, the messages after it follow the reply if the backplane still
// has them all; the reply says whether it did. Messages published while
// the history is read are held and queued after it, each exactly once.
func (h *Hub) addMember(ctx context.Context, c *Conn, name string, id uint64, since *Position) error {
	ch, err := h.follow(ctx, c, name)
	if err != nil {
		return err
	}

	var from Position
	if since != nil {
		from = *since
	}
	history, latest, herr := h.bp.History(ctx, name, from)
	if since != nil && since.Epoch == "" {
		// A client that never learnt the channel's epoch cannot tell what
		// it missed.
		herr = ErrUnrecoverable
	}
	if herr != nil && !errors.Is(herr, ErrUnrecoverable) {
		h.log.Warn("realtime backplane history failed",
			slog.String("channel", name), slog.Any("err", herr))
	}

	ch.mu.Lock()
	defer ch.mu.Unlock()
	held, joining := ch.pending[c]
	if !joining {
		return ErrClosed // removed while reading history
	}
	ch.dropPending(c)
	if latest == (Position{}) {
		latest = ch.last
	}

	reply := newMessage("joined", id).str("channel", name)
	start := latest
	switch {
	case since == nil:
		reply = reply.position(start)
	case herr == nil:
		start = *since
		reply = reply.position(start).boolean("recovered", true)
	default:
		reply = reply.position(start).boolean("recovered", false)
	}
	c.push(item{data: reply.end(), ref: &itemRef{kind: itemJoined, channel: name, pos: start}})
	for _, m := range history {
		if after(m.Position, start) {
			c.push(item{data: encodePublication(m), ref: &itemRef{kind: itemMessage, channel: name, pos: m.Position}})
			start = m.Position
		}
	}
	for _, m := range held {
		if after(m.Position, start) {
			c.push(item{data: encodePublication(m), ref: &itemRef{kind: itemMessage, channel: name, pos: m.Position}})
			start = m.Position
		}
	}
	if start != ch.last && after(start, ch.last) {
		ch.starts[c] = start
		grown(&ch.startsPeak, len(ch.starts))
	}
	return nil
}

// confirmMember repeats the "joined" reply for a connection that is a
// member of name already.
func (h *Hub) confirmMember(c *Conn, name string, id uint64) {
	h.mu.RLock()
	ch := h.channels[name]
	h.mu.RUnlock()
	if ch == nil {
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	pos := ch.last
	if start, ok := ch.starts[c]; ok {
		pos = start
	}
	c.push(item{
		data: newMessage("joined", id).str("channel", name).position(pos).end(),
		ref:  &itemRef{kind: itemJoined, channel: name, pos: pos},
	})
}

// follow adds c to name's members, with deliveries held for it, and
// subscribes the backplane for the channel's first local member.
func (h *Hub) follow(ctx context.Context, c *Conn, name string) (*channel, error) {
	l := h.subLock(name)
	l.Lock()
	defer l.Unlock()

	h.mu.RLock()
	ch := h.channels[name]
	h.mu.RUnlock()
	if ch == nil {
		if err := h.bp.Subscribe(ctx, name); err != nil {
			return nil, fmt.Errorf("realtime: subscribe: %w", err)
		}
		ch = &channel{
			pending: make(map[*Conn][]Message),
			starts:  make(map[*Conn]Position),
		}
		h.mu.Lock()
		h.channels[name] = ch
		grown(&h.channelsPeak, len(h.channels))
		h.mu.Unlock()
	}

	ch.mu.Lock()
	defer ch.mu.Unlock()
	if !slices.Contains(ch.members, c) {
		members := make([]*Conn, len(ch.members), len(ch.members)+1)
		copy(members, ch.members)
		ch.members = append(members, c)
	}
	ch.pending[c] = nil
	grown(&ch.pendingPeak, len(ch.pending))
	return ch, nil
}

// dropPending forgets the messages held for c while it joins. ch.mu is
// held.
func (ch *channel) dropPending(c *Conn) {
	delete(ch.pending, c)
	ch.pending = shrunk(ch.pending, &ch.pendingPeak)
}

// dropStart forgets where c's membership starts. ch.mu is held.
func (ch *channel) dropStart(c *Conn) {
	delete(ch.starts, c)
	ch.starts = shrunk(ch.starts, &ch.startsPeak)
}

// after reports whether p comes after q in a channel: a later offset of
// the same epoch, or another epoch (the numbering restarted), or q unknown.
func after(p, q Position) bool {
	return p.Epoch != q.Epoch || p.Offset > q.Offset
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
	ch.dropPending(c)
	ch.dropStart(c)
	if reply != nil {
		c.push(item{data: reply, ref: &itemRef{kind: itemLeft, channel: name}})
	}
	ch.mu.Unlock()

	if len(members) > 0 {
		return
	}
	h.mu.Lock()
	delete(h.channels, name)
	h.channels = shrunk(h.channels, &h.channelsPeak)
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
