package realtime

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"sync"
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
}

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
// message may be lost only together with a signal to the Hub (a later
// revision of this interface carries such signals), never silently. Data
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
// Every method that takes a ctx returns promptly with an error when ctx
// ends. An error from Publish is returned to the publisher; an error from
// Subscribe refuses the join that caused it; an error from Unsubscribe is
// logged; an error from Receive is logged and Receive is called again
// after a pause, unless the error matches [ErrClosed].
//
// Close releases every resource and goroutine of the backplane and makes
// blocked and later calls return an error matching ErrClosed. The Hub
// calls it once, after its last other call has returned.
type Backplane interface {
	Publish(ctx context.Context, channel string, data []byte) (Position, error)
	Subscribe(ctx context.Context, channel string) error
	Unsubscribe(ctx context.Context, channel string) error
	Receive(ctx context.Context) ([]Message, error)
	Close() error
}

// MemoryBroker orders messages for any number of hubs in one process. Each
// hub gets its own [Backplane] from [MemoryBroker.Backplane], as each node
// of a cluster gets its own broker client. It is safe for concurrent use;
// the zero value is not usable: create one with [NewMemoryBroker].
//
// A channel's numbering lives as long as some node follows the channel: a
// channel that nobody follows starts a new epoch when it is followed again.
type MemoryBroker struct {
	mu       sync.Mutex
	channels map[string]*memoryChannel
	// space is closed and replaced whenever a node's queue shrinks, waking
	// publishers that wait for room.
	space chan struct{}
}

type memoryChannel struct {
	pos   Position
	nodes map[*memoryNode]struct{}
}

// memoryQueueLimit bounds how many messages wait for one node's Receive.
const memoryQueueLimit = 1 << 16

// NewMemoryBroker returns a broker with no channels.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{
		channels: make(map[string]*memoryChannel),
		space:    make(chan struct{}),
	}
}

// NewMemoryBackplane returns the in-memory backplane of a single node: the
// default of [Options.Backplane].
func NewMemoryBackplane() Backplane {
	return NewMemoryBroker().Backplane()
}

// Backplane returns a new node's backplane on b. Close it to detach the
// node.
func (b *MemoryBroker) Backplane() Backplane {
	return &memoryNode{
		broker: b,
		subs:   make(map[string]struct{}),
		ready:  make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
}

type memoryNode struct {
	broker *MemoryBroker
	ready  chan struct{} // signalled when queue becomes non-empty
	closed chan struct{}

	// Guarded by broker.mu.
	subs      map[string]struct{}
	queue     []Message
	isClosed  bool
	closeOnce sync.Once
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
		ch := b.channels[channel]
		if ch == nil {
			b.mu.Unlock()
			// Nobody follows the channel: the message reaches no one and
			// its numbering is not kept.
			return Position{Epoch: newEpoch(), Offset: 1}, nil
		}
		if b.roomFor(ch) {
			ch.pos.Offset++
			msg := Message{Channel: channel, Data: data, Position: ch.pos}
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
	ch := b.channels[channel]
	if ch == nil {
		ch = &memoryChannel{
			pos:   Position{Epoch: newEpoch()},
			nodes: make(map[*memoryNode]struct{}),
		}
		b.channels[channel] = ch
	}
	ch.nodes[n] = struct{}{}
	n.subs[channel] = struct{}{}
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
	if ch := b.channels[channel]; ch != nil {
		delete(ch.nodes, n)
		if len(ch.nodes) == 0 {
			delete(b.channels, channel)
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
		for channel := range n.subs {
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
