package redisbackplane

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
)

// Subscribe makes this node receive the messages of channel. It returns
// once Redis has taken the subscription, so that every message published
// after it returns reaches Receive. While the Pub/Sub connection that
// would carry the channel is down it returns an error at once, and while
// that connection is being opened it waits for it. While Receive lags
// behind by a full queue, Subscribe and Unsubscribe wait too, until ctx
// ends.
func (b *Backplane) Subscribe(ctx context.Context, channel string) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()

	name := b.redisChannel(channel)
	l, err := b.linkFor(ctx, name)
	if err != nil {
		return b.wrap(ctx, "subscribe", err)
	}
	b.mu.Lock()
	b.subs[channel] = struct{}{}
	l.add(name, b.sharded)
	ps, lost, err := l.await(ctx)
	b.mu.Unlock()
	if err == nil {
		err = b.barrier(ctx, ps, lost, func() error {
			if b.sharded {
				return ps.SSubscribe(ctx, name)
			}
			return ps.Subscribe(ctx, name)
		})
	}
	if err != nil {
		// Refused joins leave nothing subscribed.
		b.mu.Lock()
		delete(b.subs, channel)
		delete(l.plain, name)
		delete(l.shard, name)
		b.mu.Unlock()
		if ps != nil && b.life.Err() == nil {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			b.unsubscribeOn(uctx, ps, name)
			cancel()
		}
		return b.wrap(ctx, "subscribe", err)
	}
	return nil
}

// add records that l carries the Redis channel name. b.mu is held.
func (l *link) add(name string, shard bool) {
	if shard {
		l.shard[name] = struct{}{}
	} else {
		l.plain[name] = struct{}{}
	}
}

// Unsubscribe stops the messages of channel for this node. Messages of
// the channel that are on their way are dropped. While the Pub/Sub
// connection that carries the channel is down, the channel is left out of
// the next one.
func (b *Backplane) Unsubscribe(ctx context.Context, channel string) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()

	name := b.redisChannel(channel)
	b.mu.Lock()
	delete(b.subs, channel)
	var ps *redis.PubSub
	var lost chan struct{}
	for _, l := range b.links() {
		_, plain := l.plain[name]
		_, shard := l.shard[name]
		if !plain && !shard {
			continue
		}
		delete(l.plain, name)
		delete(l.shard, name)
		if l.down == nil {
			ps, lost = l.ps, l.lost
		}
	}
	b.mu.Unlock()
	if ps == nil {
		return nil
	}

	err = b.barrier(ctx, ps, lost, func() error {
		return b.unsubscribeOn(ctx, ps, name)
	})
	if err != nil {
		return b.wrap(ctx, "unsubscribe", err)
	}
	return nil
}

func (b *Backplane) unsubscribeOn(ctx context.Context, ps *redis.PubSub, name string) error {
	if b.sharded {
		return ps.SUnsubscribe(ctx, name)
	}
	return ps.Unsubscribe(ctx, name)
}

// barrier runs send, which writes a command on ps, then pings on that
// connection and waits for the pong: Redis answers in order, so the pong
// means it has carried out the command. It fails when the connection
// does (lost is closed) before the pong.
func (b *Backplane) barrier(ctx context.Context, ps *redis.PubSub, lost chan struct{}, send func() error) error {
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
	if err := ps.Ping(ctx, payload); err != nil {
		return err
	}
	select {
	case <-pong:
		return nil
	case <-lost:
		return errors.New("pubsub connection lost")
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// pong wakes the barrier waiting for payload.
func (b *Backplane) pong(payload string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if pong, ok := b.pings[payload]; ok {
		close(pong)
		delete(b.pings, payload)
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

// Close stops the reader goroutines, closes the Pub/Sub connections and
// waits for both. Blocked and later calls return realtime.ErrClosed. It
// does not close the Redis client.
func (b *Backplane) Close() error {
	b.closing.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.queue = nil
		var open []*redis.PubSub
		for _, l := range b.links() {
			if l.ps != nil {
				open = append(open, l.ps)
			}
		}
		b.mu.Unlock()

		b.stop()
		// Closing a connection ends the read blocked on it; the readers
		// close the ones they open from now on themselves.
		for _, ps := range open {
			ps.Close()
		}
		b.wg.Wait()
	})
	return nil
}

// deliver queues m for Receive if this node follows its channel, waiting
// while the queue is full. It reports false when ctx ended.
func (b *Backplane) deliver(ctx context.Context, m *redis.Message) bool {
	if m.Channel == b.nodeChannel {
		return b.enqueue(ctx, realtime.Message{Direct: true, Data: []byte(m.Payload)})
	}
	channel, ok := b.channelOf(m.Channel)
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

// enqueueGaps queues the gap signals for what l lost: one for every
// channel of the node, or one per channel l carries.
func (b *Backplane) enqueueGaps(ctx context.Context, l *link) bool {
	b.mu.Lock()
	var lost []string
	if !l.gapAll && len(l.shard) <= manyGaps {
		for name := range l.shard {
			if ch, ok := b.channelOf(name); ok {
				lost = append(lost, ch)
			}
		}
	}
	all := l.gapAll || len(l.shard) > manyGaps
	b.mu.Unlock()

	if all {
		return b.enqueue(ctx, realtime.Message{Gap: true})
	}
	for _, ch := range lost {
		if !b.enqueue(ctx, realtime.Message{Gap: true, Channel: ch}) {
			return false
		}
	}
	return true
}

// enqueue queues msg for Receive (a gap signal for the whole node or a
// direct message always; otherwise if this node follows its channel),
// waiting while the queue is full. It reports false when ctx ended.
func (b *Backplane) enqueue(ctx context.Context, msg realtime.Message) bool {
	for {
		b.mu.Lock()
		_, follows := b.subs[msg.Channel]
		if b.closed || !follows && !msg.Direct && !(msg.Gap && msg.Channel == "") {
			b.mu.Unlock()
			return true
		}
		if len(b.queue) < b.queueLimit {
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

// redisChannel returns the Pub/Sub channel of channel: a shard channel in
// the slot of the channel's keys when sharded.
func (b *Backplane) redisChannel(channel string) string {
	if b.sharded {
		return b.prefix + ":{" + channel + "}:msg"
	}
	return b.msgPrefix + channel
}

// channelOf is the inverse of redisChannel.
func (b *Backplane) channelOf(name string) (string, bool) {
	if b.sharded {
		rest, ok := strings.CutPrefix(name, b.prefix+":{")
		if !ok {
			return "", false
		}
		return strings.CutSuffix(rest, "}:msg")
	}
	return strings.CutPrefix(name, b.msgPrefix)
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
