package natsbackplane

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/realtimekit/realtime"
)

// Subscribe makes this node receive the messages of channel. It returns
// once NATS has the subscription and the backplane knows the channel's
// latest position (after two round trips), so that every message stored
// after it returns reaches Receive, in order. It fails at once while the
// connection is down.
func (b *Backplane) Subscribe(ctx context.Context, channel string) error {
	tok, err := channelToken(channel)
	if err != nil {
		return err
	}
	ctx, done, err := b.call(ctx)
	if err != nil {
		return fmt.Errorf("natsbackplane: subscribe: %w", err)
	}
	defer done()
	stream, err := b.ensureStream(ctx)
	if err != nil {
		return b.wrap(ctx, "subscribe", err)
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return realtime.ErrClosed
	}
	if _, ok := b.subs[channel]; ok {
		b.mu.Unlock()
		return nil
	}
	sub, err := b.nc.ChanSubscribe(b.outPrefix+tok, b.msgs)
	if err != nil {
		b.mu.Unlock()
		return b.wrap(ctx, "subscribe", err)
	}
	f := &follow{channel: channel, sub: sub}
	b.subs[channel] = f
	b.bySub[sub] = f
	b.mu.Unlock()

	// Every message stored after the read below comes to sub, which the
	// server has once the flush returns; the read tells which message is
	// the first of those.
	err = b.nc.FlushWithContext(ctx)
	var last stored
	if err == nil {
		last, err = lastMessage(ctx, stream, b.inPrefix+tok)
	}
	if err != nil {
		// Refused joins leave nothing subscribed.
		b.forget(f)
		unsubscribe(sub)
		return b.wrap(ctx, "subscribe", err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	f.ready = true
	f.next = realtime.Position{Epoch: last.pos.Epoch, Offset: last.pos.Offset + 1}
	held := f.held
	f.held = nil
	for _, msg := range held {
		b.accept(f, msg)
	}
	return nil
}

// Unsubscribe stops the messages of channel for this node. Messages of
// the channel that are on their way are dropped. It does no I/O that it
// waits for, so it works while the connection is down.
func (b *Backplane) Unsubscribe(ctx context.Context, channel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return realtime.ErrClosed
	}
	f := b.subs[channel]
	b.mu.Unlock()
	if f == nil {
		return nil
	}
	b.forget(f)
	if err := unsubscribe(f.sub); err != nil {
		return fmt.Errorf("natsbackplane: unsubscribe: %w", err)
	}
	return nil
}

// forget removes f from the subscriptions the reader delivers.
func (b *Backplane) forget(f *follow) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs[f.channel] == f {
		delete(b.subs, f.channel)
	}
	delete(b.bySub, f.sub)
	delete(b.holding, f)
}

// Receive blocks until messages are ready for this node and returns them
// in order; the caller owns the slice.
func (b *Backplane) Receive(ctx context.Context) ([]realtime.Message, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, realtime.ErrClosed
		}
		if len(b.queue) > 0 {
			batch := b.queue
			b.queue = nil
			close(b.space)
			b.space = make(chan struct{})
			b.mu.Unlock()
			return batch, nil
		}
		b.mu.Unlock()

		select {
		case <-b.ready:
		case <-b.life.Done():
			return nil, realtime.ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// reorderWait is how long a message waits for the messages of its
// channel before it: the stream republishes messages that publishers on
// different connections store at once in either order, and one that was
// lost never comes.
const reorderWait = 500 * time.Millisecond

// heldLimit is the most messages of one channel that wait for the ones
// before them.
const heldLimit = 1024

// readBatch is how many messages the reader takes from msgs at a time.
const readBatch = 256

// scanInterval is how often, at most, the reader counts the messages
// that nats.go dropped while msgs stays full.
const scanInterval = 100 * time.Millisecond

// read runs on the goroutine that New starts: it moves messages from
// msgs to the queue until Close, answering direct messages and putting
// gap signals where messages were lost.
func (b *Backplane) read() {
	reconnects := b.baseline
	suspect := false // msgs was full, so nats.go may have dropped messages
	var lastScan time.Time
	batch := make([]*nats.Msg, 0, readBatch)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		batch = batch[:0]
		var deadline <-chan time.Time
		if at, ok := b.nextDeadline(); ok {
			timer.Reset(time.Until(at))
			deadline = timer.C
		}
		select {
		case m := <-b.msgs:
			batch = append(batch, m)
		case <-b.wake:
		case <-deadline:
		case <-b.life.Done():
			return
		}
	drain:
		for len(batch) < readBatch {
			// A message that finds msgs full is dropped, so the next
			// take finds it full too (or one short, if a message came
			// in between).
			if len(b.msgs) >= cap(b.msgs)-1 {
				suspect = true
			}
			select {
			case m := <-b.msgs:
				batch = append(batch, m)
			default:
				break drain
			}
		}

		// Counted after taking the batch: a message read on a new
		// connection was taken after the count went up.
		n := b.nc.Stats().Reconnects
		reconnected := n != reconnects
		reconnects = n
		idle := len(b.msgs) == 0
		scan := suspect && (idle || time.Since(lastScan) >= scanInterval)
		if scan {
			suspect = false
			lastScan = time.Now()
		}
		if !b.deliver(batch, reconnected, scan, idle) {
			return
		}
		for _, m := range batch {
			if m.Sub == b.nodeSub {
				// The sender waits for this answer, which tells it that
				// the node exists; the message is queued by now.
				m.Respond(nil)
			}
		}
	}
}

// deliver queues the batch for Receive, after a gap signal for every
// channel if the connection came back and with gap signals for the
// channels that lost messages, waiting while the queue is full. It
// reports false when Close began.
func (b *Backplane) deliver(batch []*nats.Msg, reconnected, scan, idle bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if reconnected {
		b.logger.Error("nats connection came back: messages published while it was down are lost")
		for _, f := range b.subs {
			f.covered, f.lost = true, false
			f.dropped, _ = f.sub.Dropped()
		}
		if !b.enqueue(realtime.Message{Gap: true}) {
			return false
		}
	}
	if scan {
		b.countDropped()
	}
	for _, m := range batch {
		if !b.take(m) {
			return false
		}
	}
	now := time.Now()
	for f := range b.holding {
		if now.Sub(f.heldSince) >= reorderWait || (idle && f.lost) {
			b.flush(f, "messages missing")
		}
	}
	if idle {
		// Whatever the reader had is queued: a drop that no later
		// message has shown is due now.
		for _, f := range b.subs {
			if f.lost {
				b.gap(f, "nats subscription dropped messages")
			}
		}
	}
	return !b.closed
}

// nextDeadline returns when the oldest held message stops waiting for
// the ones before it, and false if none is held.
func (b *Backplane) nextDeadline() (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var first time.Time
	for f := range b.holding {
		if first.IsZero() || f.heldSince.Before(first) {
			first = f.heldSince
		}
	}
	return first.Add(reorderWait), !first.IsZero()
}

// countDropped marks the channels whose subscriptions nats.go has
// dropped messages of since the last count. b.mu is held.
func (b *Backplane) countDropped() {
	for _, f := range b.subs {
		n, err := f.sub.Dropped()
		if err != nil || n <= f.dropped {
			continue
		}
		b.logger.Error("nats subscription dropped messages: this node could not keep up",
			"topic", f.channel, "dropped", n-f.dropped)
		f.dropped, f.lost = n, true
	}
	if n, _ := b.nodeSub.Dropped(); n > b.nodeDropped {
		b.logger.Warn("nats subscription dropped direct messages: this node could not keep up",
			"dropped", n-b.nodeDropped)
		b.nodeDropped = n
	}
}

// take queues one message, waiting while the queue is full unless it is
// a direct message. b.mu is held. It reports false when Close began.
func (b *Backplane) take(m *nats.Msg) bool {
	if m.Sub == b.nodeSub {
		return b.enqueue(realtime.Message{Direct: true, Data: m.Data})
	}
	for len(b.queue) >= b.queueLimit && !b.closed {
		space := b.space
		b.mu.Unlock()
		select {
		case <-space:
		case <-b.life.Done():
		}
		b.mu.Lock()
	}
	f := b.bySub[m.Sub]
	if f == nil {
		// The channel was unsubscribed since.
		return !b.closed
	}
	msgs, ok := appendUnpacked(b.unpacked[:0], f.channel, m.Header, m.Data)
	defer func() {
		// Reused for the next message, holding no data meanwhile.
		clear(msgs)
		b.unpacked = msgs[:0]
	}()
	if !ok {
		b.logger.Error("nats backplane message without a valid position dropped", "topic", f.channel)
		return true
	}
	if !f.ready {
		// Subscribe has yet to learn where the channel stands.
		f.held = append(f.held, msgs...)
		return true
	}
	for _, msg := range msgs {
		b.accept(f, msg)
	}
	return !b.closed
}

// accept queues msg if it is the next of its channel, followed by the
// held messages that follow it; holds it if some before it are missing;
// and drops it if it is older. b.mu is held.
func (b *Backplane) accept(f *follow, msg realtime.Message) {
	pos := msg.Position
	switch {
	case pos.Epoch == f.next.Epoch && pos.Offset < f.next.Offset:
		return
	case pos.Offset == 1 || pos == f.next:
		b.push(f, msg)
		b.release(f)
		return
	}
	if len(f.held) == 0 {
		f.heldSince = time.Now()
		b.holding[f] = struct{}{}
	}
	f.held = append(f.held, msg)
	if len(f.held) >= heldLimit || f.lost {
		b.flush(f, "messages missing")
	}
}

// push queues the next message of f. b.mu is held.
func (b *Backplane) push(f *follow, msg realtime.Message) {
	b.enqueue(msg)
	f.next = realtime.Position{Epoch: msg.Position.Epoch, Offset: msg.Position.Offset + 1}
	f.covered = false
}

// release queues the held messages of f that now follow on, and drops
// the ones that have become old. b.mu is held.
func (b *Backplane) release(f *follow) {
	for progress := true; progress && len(f.held) > 0; {
		progress = false
		kept := f.held[:0]
		for _, msg := range f.held {
			switch pos := msg.Position; {
			case pos.Epoch == f.next.Epoch && pos.Offset < f.next.Offset:
				progress = true
			case pos == f.next:
				b.push(f, msg)
				progress = true
			default:
				kept = append(kept, msg)
			}
		}
		clear(f.held[len(kept):])
		f.held = kept
	}
	if len(f.held) == 0 {
		f.held = nil
		delete(b.holding, f)
	}
}

// flush gives up waiting for the messages that the held ones of f follow:
// it signals a gap unless one covers it already, then queues the held
// messages in order. b.mu is held.
func (b *Backplane) flush(f *follow, why string) {
	if !f.covered {
		b.gap(f, why)
	}
	slices.SortStableFunc(f.held, func(x, y realtime.Message) int {
		return cmp.Compare(x.Position.Offset, y.Position.Offset)
	})
	for _, msg := range f.held {
		if msg.Position.Epoch != f.next.Epoch || msg.Position.Offset >= f.next.Offset {
			b.push(f, msg)
		}
	}
	f.held = nil
	f.lost = false
	delete(b.holding, f)
}

// gap queues a gap signal for f's channel. b.mu is held.
func (b *Backplane) gap(f *follow, why string) {
	b.logger.Error("nats backplane lost messages", "topic", f.channel, "why", why)
	b.enqueue(realtime.Message{Channel: f.channel, Gap: true})
	f.covered, f.lost = true, false
}

// enqueue queues msg for Receive. b.mu is held. It reports false when
// Close began.
func (b *Backplane) enqueue(msg realtime.Message) bool {
	if b.closed {
		return false
	}
	b.queue = append(b.queue, msg)
	if len(b.queue) == 1 {
		select {
		case b.ready <- struct{}{}:
		default:
		}
	}
	return true
}

// watch runs on the goroutine that New starts: it follows the state of
// the connection until Close, failing the calls in flight when it is
// lost and waking the reader when it comes back.
func (b *Backplane) watch() {
	for {
		var s nats.Status
		select {
		case s = <-b.status:
		case <-b.life.Done():
			return
		}
		switch s {
		case nats.CONNECTED:
			b.logger.Warn("nats connection restored")
			select {
			case b.wake <- struct{}{}:
			default:
			}
		case nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED:
			b.logger.Warn("nats connection lost: reconnecting", "status", s.String())
			b.mu.Lock()
			b.connLost(errNotConnected{s})
			b.mu.Unlock()
		}
	}
}
