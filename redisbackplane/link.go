package redisbackplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
)

// Reconnect delays of a link grow from minBackoff to maxBackoff, with
// jitter.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// manyGaps is how many channels a link reports lost one by one; past it,
// one gap signal stands for every channel of the node.
const manyGaps = 100

// errSlotMoved ends a cluster shard connection whose Redis refused a
// subscription or dropped one by itself: a slot moved to another master.
var errSlotMoved = errors.New("a shard channel's slot moved to another master")

// A link is one Pub/Sub connection of the node and the Redis channels it
// carries. Its goroutine (run) reads the connection and, when it fails,
// opens a new one and subscribes everything again, so that go-redis's own
// resubscription, which puts every shard channel in one SSUBSCRIBE, never
// meets a cluster that refuses channels of several slots in one command.
type link struct {
	b    *Backplane
	name string // for logs: "main", or the address of a cluster master
	open func(ctx context.Context) *redis.PubSub
	// shardLink is set on a link to one master of a cluster: its channels
	// are subscribed one by one and re-placed when their slot moves.
	shardLink bool
	// gapAll makes a lost connection cost every channel of the node (the
	// link carries them all); otherwise the channels it carries.
	gapAll bool

	// Guarded by b.mu.
	ps    *redis.PubSub
	plain map[string]struct{} // Redis channels subscribed with SUBSCRIBE
	shard map[string]struct{} // Redis channels subscribed with SSUBSCRIBE
	// down says why the link cannot deliver, from a failure until a new
	// connection has every subscription; nil while it can.
	down error
	// connecting is set while an attempt to connect is under way; settled
	// is closed when it ends, either way.
	connecting bool
	settled    chan struct{}
	// lost is closed when the current connection fails.
	lost chan struct{}
}

func (b *Backplane) newLink(name string, open func(context.Context) *redis.PubSub) *link {
	return &link{
		b:          b,
		name:       name,
		open:       open,
		plain:      make(map[string]struct{}),
		shard:      make(map[string]struct{}),
		down:       errors.New("not connected yet"),
		connecting: true,
		settled:    make(chan struct{}),
		lost:       make(chan struct{}),
	}
}

// start runs l's goroutine until b closes. b.mu is held.
func (l *link) start() {
	b := l.b
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		l.run(b.life)
	}()
}

// carries reports whether l has channels, so that its health matters.
// b.mu is held.
func (l *link) carries() bool {
	return len(l.plain)+len(l.shard) > 0
}

// run keeps l connected until ctx ends.
func (l *link) run(ctx context.Context) {
	backoff := minBackoff
	gapDue := false // a connection failed since the node last had one
	for {
		ps, up, err := l.connect(ctx)
		if err == nil {
			err = l.serve(ctx, ps, up, &gapDue)
		}
		if ctx.Err() != nil {
			ps.Close()
			return
		}
		wasUp := l.fail(ps, err)
		if wasUp {
			backoff = minBackoff
			gapDue = true
			l.b.logger.ErrorContext(ctx, "redis pubsub connection failed: messages published meanwhile are lost",
				"link", l.name, "err", err)
		} else {
			l.b.logger.WarnContext(ctx, "redis pubsub connection attempt failed", "link", l.name, "err", err)
		}
		if !sleep(ctx, backoff/2+rand.N(backoff/2+1)) {
			return
		}
		backoff = min(2*backoff, maxBackoff)

		l.b.mu.Lock()
		l.connecting = true
		l.settled = make(chan struct{})
		l.b.mu.Unlock()
	}
}

// connect opens a new connection and writes every subscription on it,
// then a ping whose pong (payload up) proves that Redis has carried them
// out.
func (l *link) connect(ctx context.Context) (ps *redis.PubSub, up string, err error) {
	b := l.b
	if l.shardLink {
		b.replace(ctx, l)
	}
	ps = l.open(ctx)

	b.mu.Lock()
	if b.closed {
		// Close has closed the connections it knew of; this one is
		// closed by run.
		b.mu.Unlock()
		return ps, "", realtime.ErrClosed
	}
	l.ps = ps
	l.lost = make(chan struct{})
	plain := keys(l.plain)
	shard := keys(l.shard)
	b.nextPing++
	up = "realtime-up-" + strconv.FormatUint(b.nextPing, 10)
	b.mu.Unlock()

	if len(plain) > 0 {
		if err := ps.Subscribe(ctx, plain...); err != nil {
			return ps, "", err
		}
	}
	if l.shardLink {
		// A cluster takes the shard channels of one slot per command.
		for _, ch := range shard {
			if err := ps.SSubscribe(ctx, ch); err != nil {
				return ps, "", err
			}
		}
	} else if len(shard) > 0 {
		if err := ps.SSubscribe(ctx, shard...); err != nil {
			return ps, "", err
		}
	}
	if err := ps.Ping(ctx, up); err != nil {
		return ps, "", err
	}
	return ps, up, nil
}

// serve reads ps until it fails: messages go to the queue, the pong of
// connect's ping makes l healthy, and the first reply after a failure
// queues the gap signal ahead of everything the new connection carries.
func (l *link) serve(ctx context.Context, ps *redis.PubSub, up string, gapDue *bool) error {
	for {
		msg, err := ps.ReceiveTimeout(ctx, healthInterval)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ne net.Error
		var re redis.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			// Silence: a ping makes a dead connection fail the next read.
			ps.Ping(ctx)
			continue
		case errors.As(err, &re) && l.shardLink:
			// MOVED or CROSSSLOT: the cluster changed under the link.
			return fmt.Errorf("%w: %w", errSlotMoved, err)
		case err != nil:
			return err
		}
		if *gapDue {
			*gapDue = false
			if !l.b.enqueueGaps(ctx, l) {
				return ctx.Err()
			}
		}

		switch m := msg.(type) {
		case *redis.Message:
			if !l.b.deliver(ctx, m) {
				return ctx.Err()
			}
		case *redis.Pong:
			if m.Payload == up {
				l.settle(nil)
			} else {
				l.b.pong(m.Payload)
			}
		case *redis.Subscription:
			if m.Kind == "sunsubscribe" && l.shardLink && l.holds(m.Channel) {
				// Redis drops the subscriptions of a slot that leaves
				// the master.
				return fmt.Errorf("%w: %s dropped by Redis", errSlotMoved, m.Channel)
			}
		}
	}
}

// holds reports whether l still carries the shard channel ch.
func (l *link) holds(ch string) bool {
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	_, ok := l.shard[ch]
	return ok
}

// settle ends a connect attempt: l can deliver when down is nil.
func (l *link) settle(down error) {
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	l.down = down
	if l.connecting {
		l.connecting = false
		close(l.settled)
	}
}

// fail records that ps failed with err and closes it. It reports whether
// the link was up: only then could messages have been lost.
func (l *link) fail(ps *redis.PubSub, err error) (wasUp bool) {
	b := l.b
	b.mu.Lock()
	wasUp = l.down == nil
	l.down = err
	if l.ps == ps {
		l.ps = nil
	}
	close(l.lost)
	if l.connecting {
		l.connecting = false
		close(l.settled)
	}
	b.mu.Unlock()
	if ps != nil {
		ps.Close()
	}
	return wasUp
}

// await waits until l can deliver, and returns its connection and the
// channel closed when that connection fails. While l is down and no
// attempt to connect is under way it returns the reason at once: joins
// are refused while Redis is unreachable. b.mu is held, and released
// while waiting.
func (l *link) await(ctx context.Context) (*redis.PubSub, chan struct{}, error) {
	b := l.b
	for l.down != nil {
		if !l.connecting {
			return nil, nil, fmt.Errorf("pubsub connection %s is down: %w", l.name, l.down)
		}
		settled := l.settled
		b.mu.Unlock()
		select {
		case <-settled:
		case <-ctx.Done():
			b.mu.Lock()
			return nil, nil, context.Cause(ctx)
		}
		b.mu.Lock()
		if b.closed {
			return nil, nil, realtime.ErrClosed
		}
	}
	return l.ps, l.lost, nil
}

func keys(m map[string]struct{}) []string {
	s := make([]string, 0, len(m))
	for k := range m {
		s = append(s, k)
	}
	return s
}

// sleep waits for d or until ctx ends, and reports whether ctx is still
// alive.
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
