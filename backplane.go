package realtime

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Position is where a message stands in its channel: an epoch, which
// changes when the channel's numbering restarts, and an offset, which
// counts up by one per message from 1 within an epoch. The zero Position
// means "unknown".
type Position struct {
	Epoch  string
	Offset uint64
}

// Message is one message of a channel as a Backplane delivers it.
type Message struct {
	Channel  string
	Data     []byte
	Position Position

	// Gap, when set, makes this a signal rather than a message: the
	// backplane may have lost messages of Channel (of every channel this
	// node follows, when Channel is empty), for example while its
	// connection to the broker was down. The Hub tells each member of the
	// affected channels with a "gap" message, so that clients resync.
	Gap bool

	// Direct marks a node-addressed message: Data was sent to this node
	// with [Backplane.Send]. Only Data is set. The Hub uses these to
	// forward SSE and long-poll requests to the node that holds their
	// connection, so that a cluster needs no sticky sessions.
	Direct bool
}

// MaxDirectSize is the largest Data a Hub gives [Backplane.Send]. Every
// backplane must carry direct messages up to this size.
const MaxDirectSize = 512 << 10

// Backplane orders the messages of every channel and carries them to each
// hub node that follows the channel. A Hub uses one Backplane for its whole
// life and closes it when the Hub shuts down. The in-memory backplane from
// [NewMemoryBackplane] serves one process; brokers serve many.
//
// # For implementers
//
// All methods may be called concurrently. A Hub calls Subscribe and
// Unsubscribe for one channel one at a time, in that alternation: it
// subscribes when the channel gets its first local member and unsubscribes
// after the last one leaves.
//
// Publish gives the message the next Position of its channel and makes it
// reach Receive on every node subscribed to the channel, this node
// included, in Position order per channel. Delivery is at most once: a
// message may be lost only together with a signal to the Hub, a Message
// with Gap set, never silently. Data
// belongs to the caller once Publish returns; an implementation that keeps
// it must copy it.
//
// Receive blocks until at least one message is ready for this node and
// returns them, in order; the Hub owns the returned slice and its
// messages. The Hub calls Receive from one goroutine, again as soon as it
// has handed out the previous batch, so a slow Receive caller is never a
// slow client: buffering between Publish and Receive should be bounded,
// and a full buffer must slow publishers down or be reported, not dropped.
//
// History serves recovery: it returns the messages of channel after
// since, oldest first, and the position of the channel's latest message
// (offset 0 in the current epoch if it has none yet; the zero Position if
// the backplane does not know the channel). With a zero since it returns
// no messages, only the latest position. When it cannot return every
// message after since (the epoch is not the channel's current one, or
// some of them were trimmed) it returns an error matching
// [ErrUnrecoverable], still with the latest position if it knows it. A
// backplane that keeps no history returns ErrUnrecoverable for every
// non-zero since, and recovery then always reports "not recovered".
//
// Every method that takes a ctx returns promptly with an error when ctx
// ends. An error from Publish is returned to the publisher; an error from
// Subscribe refuses the join that caused it; an error from Unsubscribe is
// logged; an error from Receive is logged and Receive is called again
// after a pause, unless the error matches [ErrClosed].
//
// Node names this node: a name no other live node sharing the broker has,
// of 1 to 64 characters of [A-Za-z0-9_-] (so that it fits a broker's
// subject or channel name). It never changes. Send refuses other names
// with ErrUnknownNode; the Hub never sends to them.
//
// Send delivers data to Receive on the node named node, as a Message with
// Direct set, at most once and in no particular order relative to other
// messages. It must carry data up to [MaxDirectSize]. When the backplane
// can tell that no such node is live, it returns an error matching
// [ErrUnknownNode]; otherwise the message is lost quietly, and the Hub's
// own timeouts deal with it. Sending to this node's own name works. A new
// node can be reached once its Health has returned nil.
//
// Health returns nil while the backplane can deliver: it reaches its
// broker and every subscription is in place. While the broker is
// unreachable or subscriptions are being restored it returns an error
// saying so. The Hub's readiness handler ([Hub.ReadyHandler]) reports it
// to load balancers; it may be called often, so it should be cheap.
//
// Close releases every resource and goroutine of the backplane and makes
// blocked and later calls return an error matching ErrClosed. The Hub
// calls it once, after its last other call has returned.
//
// The package backplanetest checks all of this against a live broker;
// run it in the tests of every implementation.
type Backplane interface {
	Publish(ctx context.Context, channel string, data []byte) (Position, error)
	Subscribe(ctx context.Context, channel string) error
	Unsubscribe(ctx context.Context, channel string) error
	Receive(ctx context.Context) ([]Message, error)
	History(ctx context.Context, channel string, since Position) ([]Message, Position, error)
	Node() string
	Send(ctx context.Context, node string, data []byte) error
	Health(ctx context.Context) error
	Close() error
}

// MemoryOptions configures the in-memory backplane. The zero value of
// every field means its default; nil means all defaults.
type MemoryOptions struct {
	// HistorySize is how many recent messages each channel keeps for
	// recovery. The default, 0, is 1000; a negative value keeps none.
	HistorySize int

	// HistoryTTL is how long a message stays in history. A channel that
	// nobody follows is forgotten, with its numbering, once it has been
	// idle this long. The default, 0, is 5 minutes.
	HistoryTTL time.Duration
}

// MemoryBroker orders messages for any number of hubs in one process. Each
// hub gets its own [Backplane] from [MemoryBroker.Backplane], as each node
// of a cluster gets its own broker client. It is safe for concurrent use;
// the zero value is not usable: create one with [NewMemoryBroker].
//
// A channel keeps its numbering while some node follows it, and for the
// history TTL after its last message or subscriber; after that it starts a
// new epoch. Without history, a channel nobody follows is forgotten at
// once.
type MemoryBroker struct {
	historySize int
	historyTTL  time.Duration
	now         func() time.Time

	mu       sync.Mutex
	channels map[string]*memoryChannel
	// channelsPeak is the largest size of channels since it was made (see
	// shrunk).
	channelsPeak int
	nodes        map[string]*memoryNode
	lastSweep    time.Time
	// space is closed and replaced whenever a node's queue shrinks, waking
	// publishers that wait for room.
	space chan struct{}
}

type memoryChannel struct {
	pos   Position
	nodes map[*memoryNode]struct{}
	// touched is when the channel last had a message or a subscriber: an
	// idle channel keeps its numbering for the history TTL after it.
	touched time.Time
	// history holds the newest messages, oldest first.
	history []memoryEntry
}

type memoryEntry struct {
	msg Message
	at  time.Time
}

// memoryQueueLimit bounds how many messages wait for one node's Receive.
const memoryQueueLimit = 1 << 16

// NewMemoryBroker returns a broker with no channels.
func NewMemoryBroker(opts *MemoryOptions) *MemoryBroker {
	var o MemoryOptions
	if opts != nil {
		o = *opts
	}
	switch {
	case o.HistorySize == 0:
		o.HistorySize = 1000
	case o.HistorySize < 0:
		o.HistorySize = 0
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 5 * time.Minute
	}
	return &MemoryBroker{
		historySize: o.HistorySize,
		historyTTL:  o.HistoryTTL,
		now:         time.Now,
		channels:    make(map[string]*memoryChannel),
		nodes:       make(map[string]*memoryNode),
		space:       make(chan struct{}),
	}
}

// NewMemoryBackplane returns the in-memory backplane of a single node: the
// default of [Options.Backplane].
func NewMemoryBackplane(opts *MemoryOptions) Backplane {
	return NewMemoryBroker(opts).Backplane()
}

// Backplane returns a new node's backplane on b. Close it to detach the
// node.
func (b *MemoryBroker) Backplane() Backplane {
	n := &memoryNode{
		broker: b,
		name:   randomToken(9),
		subs:   make(map[string]struct{}),
		ready:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	b.mu.Lock()
	b.nodes[n.name] = n
	b.mu.Unlock()
	return n
}

type memoryNode struct {
	broker *MemoryBroker
	name   string
	ready  chan struct{} // signalled when queue becomes non-empty
	closed chan struct{}

	// Guarded by broker.mu.
	subs      map[string]struct{}
	subsPeak  int // the largest size of subs since it was made (see shrunk)
	queue     []Message
	isClosed  bool
	closeOnce sync.Once
}

// channel returns the state of name, creating it if create is set. b.mu
// is held.
func (b *MemoryBroker) channel(name string, create bool) *memoryChannel {
	now := b.now()
	if now.Sub(b.lastSweep) > b.historyTTL/4 {
		b.sweep(now)
	}
	ch := b.channels[name]
	if ch != nil && b.expired(ch, now) {
		b.forget(name)
		ch = nil
	}
	if ch == nil && create {
		ch = &memoryChannel{
			pos:   Position{Epoch: newEpoch()},
			nodes: make(map[*memoryNode]struct{}),
		}
		b.channels[name] = ch
		grown(&b.channelsPeak, len(b.channels))
	}
	if ch != nil && create {
		ch.touched = now
	}
	return ch
}

// expired trims ch's history and reports whether the channel, followed by
// nobody and idle for the history TTL, is to be forgotten. b.mu is held.
func (b *MemoryBroker) expired(ch *memoryChannel, now time.Time) bool {
	cutoff := now.Add(-b.historyTTL)
	ch.trim(cutoff)
	return len(ch.nodes) == 0 && len(ch.history) == 0 &&
		(b.historySize == 0 || ch.touched.Before(cutoff))
}

// sweep trims expired history everywhere and forgets idle channels. b.mu
// is held.
func (b *MemoryBroker) sweep(now time.Time) {
	b.lastSweep = now
	for name, ch := range b.channels {
		if b.expired(ch, now) {
			delete(b.channels, name)
		}
	}
	b.channels = shrunk(b.channels, &b.channelsPeak)
}

// forget drops the channel name. b.mu is held.
func (b *MemoryBroker) forget(name string) {
	delete(b.channels, name)
	b.channels = shrunk(b.channels, &b.channelsPeak)
}

// trim drops history entries older than cutoff.
func (ch *memoryChannel) trim(cutoff time.Time) {
	n := 0
	for n < len(ch.history) && ch.history[n].at.Before(cutoff) {
		n++
	}
	if n > 0 {
		ch.history = append(ch.history[:0], ch.history[n:]...)
	}
}

func (n *memoryNode) Publish(ctx context.Context, channel string, data []byte) (Position, error) {
	b := n.broker
	data = append([]byte(nil), data...)
	for {
		b.mu.Lock()
		if n.isClosed {
			b.mu.Unlock()
			return Position{}, ErrClosed
		}
		ch := b.channel(channel, b.historySize > 0)
		if ch == nil {
			b.mu.Unlock()
			// Nobody follows the channel and no history keeps it: the
			// message reaches no one and its numbering is not kept.
			return Position{Epoch: newEpoch(), Offset: 1}, nil
		}
		if b.roomFor(ch) {
			ch.pos.Offset++
			msg := Message{Channel: channel, Data: data, Position: ch.pos}
			b.remember(ch, msg)
			for node := range ch.nodes {
				node.push(msg)
			}
			pos := ch.pos
			b.mu.Unlock()
			return pos, nil
		}
		space := b.space
		b.mu.Unlock()

		select {
		case <-space:
		case <-n.closed:
			return Position{}, ErrClosed
		case <-ctx.Done():
			return Position{}, ctx.Err()
		}
	}
}

// remember adds msg to ch's history. b.mu is held.
func (b *MemoryBroker) remember(ch *memoryChannel, msg Message) {
	if b.historySize == 0 {
		return
	}
	if len(ch.history) == b.historySize {
		copy(ch.history, ch.history[1:])
		ch.history = ch.history[:len(ch.history)-1]
	}
	ch.history = append(ch.history, memoryEntry{msg, b.now()})
}

func (n *memoryNode) History(ctx context.Context, channel string, since Position) ([]Message, Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, Position{}, err
	}
	b := n.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.isClosed {
		return nil, Position{}, ErrClosed
	}
	ch := b.channel(channel, false)
	if ch == nil {
		if since == (Position{}) {
			return nil, Position{}, nil
		}
		return nil, Position{}, ErrUnrecoverable
	}
	latest := ch.pos
	if since == (Position{}) {
		return nil, latest, nil
	}
	if since.Epoch != ch.pos.Epoch || since.Offset > ch.pos.Offset {
		return nil, latest, ErrUnrecoverable
	}
	missing := ch.pos.Offset - since.Offset
	if missing == 0 {
		return nil, latest, nil
	}
	if missing > uint64(len(ch.history)) {
		return nil, latest, ErrUnrecoverable
	}
	msgs := make([]Message, 0, missing)
	for _, e := range ch.history[uint64(len(ch.history))-missing:] {
		msgs = append(msgs, e.msg)
	}
	return msgs, latest, nil
}

// roomFor reports whether every node following ch can queue one more
// message. b.mu is held.
func (b *MemoryBroker) roomFor(ch *memoryChannel) bool {
	for node := range ch.nodes {
		if len(node.queue) >= memoryQueueLimit {
			return false
		}
	}
	return true
}

// push queues msg for the node. broker.mu is held.
func (n *memoryNode) push(msg Message) {
	n.queue = append(n.queue, msg)
	if len(n.queue) == 1 {
		select {
		case n.ready <- struct{}{}:
		default:
		}
	}
}

func (n *memoryNode) Subscribe(ctx context.Context, channel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := n.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.isClosed {
		return ErrClosed
	}
	ch := b.channel(channel, true)
	ch.nodes[n] = struct{}{}
	n.subs[channel] = struct{}{}
	grown(&n.subsPeak, len(n.subs))
	return nil
}

func (n *memoryNode) Unsubscribe(ctx context.Context, channel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := n.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.isClosed {
		return ErrClosed
	}
	n.unsubscribeLocked(channel)
	return nil
}

func (n *memoryNode) unsubscribeLocked(channel string) {
	b := n.broker
	delete(n.subs, channel)
	n.subs = shrunk(n.subs, &n.subsPeak)
	if ch := b.channels[channel]; ch != nil {
		delete(ch.nodes, n)
		ch.touched = b.now()
		if b.expired(ch, ch.touched) {
			b.forget(channel)
		}
	}
}

func (n *memoryNode) Receive(ctx context.Context) ([]Message, error) {
	b := n.broker
	for {
		b.mu.Lock()
		if n.isClosed {
			b.mu.Unlock()
			return nil, ErrClosed
		}
		if len(n.queue) > 0 {
			batch := n.queue
			n.queue = nil
			b.wakePublishers()
			b.mu.Unlock()
			return batch, nil
		}
		b.mu.Unlock()

		select {
		case <-n.ready:
		case <-n.closed:
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (n *memoryNode) Node() string { return n.name }

// Send queues data for the node named node. Direct messages do not count
// against the queue limit: the Hub bounds them by its requests in flight.
func (n *memoryNode) Send(ctx context.Context, node string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(data) > MaxDirectSize {
		return fmt.Errorf("realtime: direct message of %d bytes exceeds MaxDirectSize", len(data))
	}
	b := n.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.isClosed {
		return ErrClosed
	}
	to := b.nodes[node]
	if to == nil || !validNode(node) {
		return fmt.Errorf("%w: %q", ErrUnknownNode, node)
	}
	to.push(Message{Direct: true, Data: append([]byte(nil), data...)})
	return nil
}

func (n *memoryNode) Health(ctx context.Context) error {
	b := n.broker
	b.mu.Lock()
	defer b.mu.Unlock()
	if n.isClosed {
		return ErrClosed
	}
	return nil
}

// wakePublishers wakes every publisher waiting for room. b.mu is held.
func (b *MemoryBroker) wakePublishers() {
	close(b.space)
	b.space = make(chan struct{})
}

func (n *memoryNode) Close() error {
	n.closeOnce.Do(func() {
		b := n.broker
		b.mu.Lock()
		n.isClosed = true
		delete(b.nodes, n.name)
		// unsubscribeLocked may replace n.subs with a smaller copy.
		for _, channel := range slices.Collect(maps.Keys(n.subs)) {
			n.unsubscribeLocked(channel)
		}
		n.queue = nil
		b.wakePublishers()
		b.mu.Unlock()
		close(n.closed)
	})
	return nil
}

// newEpoch returns a random epoch name.
func newEpoch() string {
	var b [6]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
