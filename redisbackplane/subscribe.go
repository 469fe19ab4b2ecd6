package redisbackplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
)

// Subscribe makes this node receive the messages of channel. It returns
// once Redis has taken the subscription, so that every message published
// after it returns reaches Receive. While Receive lags behind by a full
// queue (65,536 messages), Subscribe and Unsubscribe wait too, until ctx
// ends.
func (b *Backplane) Subscribe(ctx context.Context, channel string) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()

	b.mu.Lock()
	b.subs[channel] = struct{}{}
	b.mu.Unlock()

	err = b.barrier(ctx, func() error {
		return b.ps.Subscribe(ctx, b.msgPrefix+channel)
	})
	if err != nil {
		// Refused joins leave nothing subscribed.
		b.mu.Lock()
		delete(b.subs, channel)
		b.mu.Unlock()
		if b.life.Err() == nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			b.ps.Unsubscribe(uctx, b.msgPrefix+channel)
			cancel()
		}
		return b.wrap(ctx, "subscribe", err)
	}
	return nil
}

// Unsubscribe stops the messages of channel for this node. Messages of
// the channel that are on their way are dropped.
func (b *Backplane) Unsubscribe(ctx context.Context, channel string) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()

	b.mu.Lock()
	delete(b.subs, channel)
	b.mu.Unlock()

	err = b.barrier(ctx, func() error {
		return b.ps.Unsubscribe(ctx, b.msgPrefix+channel)
	})
	if err != nil {
		return b.wrap(ctx, "unsubscribe", err)
	}
	return nil
}

// barrier runs send, which writes a command on the Pub/Sub connection,
// then pings on that connection and waits for the pong: Redis answers in
// order, so the pong means it has carried out the command.
func (b *Backplane) barrier(ctx context.Context, send func() error) error {
	b.mu.Lock()
	b.nextPing++
	payload := "realtime-barrier-" + strconv.FormatUint(b.nextPing, 10)
	pong := make(chan struct{})
	b.pings[payload] = pong
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pings, payload)
		b.mu.Unlock()
	}()

	if err := send(); err != nil {
		return err
	}
	if err := b.ps.Ping(ctx, payload); err != nil {
		return err
	}
	select {
	case <-pong:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
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

// Close stops the reader goroutine, closes the Pub/Sub connection and
// waits for both. Blocked and later calls return realtime.ErrClosed. It
// does not close the Redis client.
func (b *Backplane) Close() error {
	var err error
	b.closing.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.queue = nil
		b.mu.Unlock()

		b.stop()
		err = b.ps.Close()
		b.wg.Wait()
	})
	if err != nil {
		return fmt.Errorf("redisbackplane: close: %w", err)
	}
	return nil
}

// read runs on the goroutine that New starts: it reads the Pub/Sub
// connection until ctx ends, queueing messages and waking barriers.
func (b *Backplane) read(ctx context.Context) {
	// The node's own channel is subscribed first and kept for good:
	// go-redis records it even if Redis is unreachable now, and subscribes
	// it again on every reconnect.
	b.ps.Subscribe(ctx, b.nodeChannel)
	backoff := 100 * time.Millisecond
	lost := false    // the connection failed since the last message
	healthy := false // b.down is nil
	for {
		msg, err := b.ps.ReceiveTimeout(ctx, healthInterval)
		if ctx.Err() != nil {
			return
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			// Silence: a ping makes a dead connection fail the next read,
			// after which go-redis dials again and resubscribes.
			b.ps.Ping(ctx)
			continue
		case err != nil:
			b.logger.ErrorContext(ctx, "redis pubsub connection failed: messages published meanwhile are lost",
				"err", err)
			lost, healthy = true, false
			b.mu.Lock()
			b.down = err
			b.mu.Unlock()
			if !b.sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			// The ping dials again and resubscribes every channel before
			// it is sent; its pong then ends the outage.
			b.ps.Ping(ctx)
			continue
		}
		backoff = 100 * time.Millisecond
		if !healthy {
			// The first reply on a new connection follows the
			// subscriptions that go-redis sends before anything else.
			healthy = true
			b.mu.Lock()
			b.down = nil
			b.mu.Unlock()
		}
		if lost {
			// Back, and subscribed again: what was published meanwhile is
			// gone, and the hub must tell its clients.
			lost = false
			if !b.enqueue(ctx, realtime.Message{Gap: true}) {
				return
			}
		}

		switch m := msg.(type) {
		case *redis.Message:
			if !b.deliver(ctx, m) {
				return
			}
		case *redis.Pong:
			b.mu.Lock()
			if pong, ok := b.pings[m.Payload]; ok {
				close(pong)
				delete(b.pings, m.Payload)
			}
			b.mu.Unlock()
		}
	}
}

// sleep waits for d or until ctx ends, and reports whether ctx is still
// alive.
func (b *Backplane) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliver queues m for Receive if this node follows its channel, waiting
// while the queue is full. It reports false when ctx ended.
func (b *Backplane) deliver(ctx context.Context, m *redis.Message) bool {
	if m.Channel == b.nodeChannel {
		return b.enqueue(ctx, realtime.Message{Direct: true, Data: []byte(m.Payload)})
	}
	channel, ok := strings.CutPrefix(m.Channel, b.msgPrefix)
	if !ok {
		return true
	}
	msg, err := decode(channel, m.Payload)
	if err != nil {
		b.logger.ErrorContext(ctx, "redis backplane message dropped", "topic", channel, "err", err)
		return true
	}
	return b.enqueue(ctx, msg)
}

// enqueue queues msg for Receive (a gap signal always; a message if this
// node follows its channel), waiting while the queue is full. It reports
// false when ctx ended.
func (b *Backplane) enqueue(ctx context.Context, msg realtime.Message) bool {
	for {
		b.mu.Lock()
		if _, ok := b.subs[msg.Channel]; (!ok && !msg.Gap && !msg.Direct) || b.closed {
			b.mu.Unlock()
			return true
		}
		if len(b.queue) < queueLimit {
			b.queue = append(b.queue, msg)
			if len(b.queue) == 1 {
				select {
				case b.ready <- struct{}{}:
				default:
				}
			}
			b.mu.Unlock()
			return true
		}
		space := b.space
		b.mu.Unlock()

		select {
		case <-space:
		case <-ctx.Done():
			return false
		}
	}
}

// decode parses the envelope "<offset> <epoch> <payload>" that the publish
// script sends.
func decode(channel, envelope string) (realtime.Message, error) {
	offset, rest, ok1 := strings.Cut(envelope, " ")
	epoch, data, ok2 := strings.Cut(rest, " ")
	n, err := strconv.ParseUint(offset, 10, 64)
	if !ok1 || !ok2 || err != nil || n == 0 || epoch == "" {
		return realtime.Message{}, errors.New("malformed envelope")
	}
	return realtime.Message{
		Channel:  channel,
		Data:     []byte(data),
		Position: realtime.Position{Epoch: epoch, Offset: n},
	}, nil
}
