package natsbackplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realtimekit/realtime"
)

// maxAttempts bounds how often Publish numbers a message again after
// another node published to the channel first.
const maxAttempts = 100

// walkLimit is the most messages History fetches one by one; past it, a
// consumer fetches them in batches.
const walkLimit = 16

// idlePublishers is how many channels keep their last position in
// memory while nobody publishes to them.
const idlePublishers = 4096

// publishers lines up this node's publishers per channel and remembers
// where each channel stands, so that a node publishing alone needs one
// round trip per message.
type publishers struct {
	mu sync.Mutex
	m  map[string]*publisher
}

// publisher is the turn and the last known state of one channel.
type publisher struct {
	turn chan struct{} // holds a value while someone publishes
	refs int           // guarded by publishers.mu

	// Guarded by turn. known says whether seq and pos are worth trying:
	// seq is the stream sequence of the channel's last message (0 for
	// none) and pos its position (zero when the channel has no
	// numbering to continue).
	known bool
	seq   uint64
	pos   realtime.Position
}

func (p *publishers) init() { p.m = make(map[string]*publisher) }

// acquire waits for the turn of channel.
func (p *publishers) acquire(ctx context.Context, channel string) (*publisher, error) {
	p.mu.Lock()
	pb := p.m[channel]
	if pb == nil {
		pb = &publisher{turn: make(chan struct{}, 1)}
		p.m[channel] = pb
	}
	pb.refs++
	p.mu.Unlock()

	select {
	case pb.turn <- struct{}{}:
		return pb, nil
	case <-ctx.Done():
		p.release(channel, pb, false)
		return nil, context.Cause(ctx)
	}
}

// release gives up the turn (if held) and forgets an idle channel once
// too many are remembered.
func (p *publishers) release(channel string, pb *publisher, held bool) {
	if held {
		<-pb.turn
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pb.refs--
	if pb.refs == 0 && len(p.m) > idlePublishers {
		delete(p.m, channel)
	}
}

// Publish gives data the next position of channel by storing it in the
// stream, which republishes it to every node that follows the channel.
// It blocks for one round trip to NATS, more when other nodes publish to
// the channel at the same time, and waits for this node's earlier
// publishes to the channel. data is not retained.
func (b *Backplane) Publish(ctx context.Context, channel string, data []byte) (realtime.Position, error) {
	tok, err := channelToken(channel)
	if err != nil {
		return realtime.Position{}, err
	}
	ctx, done, err := b.call(ctx)
	if err != nil {
		return realtime.Position{}, fmt.Errorf("natsbackplane: publish: %w", err)
	}
	defer done()
	pb, err := b.publishers.acquire(ctx, channel)
	if err != nil {
		return realtime.Position{}, b.wrap(ctx, "publish", err)
	}
	defer b.publishers.release(channel, pb, true)

	pos, err := b.publish(ctx, pb, b.inPrefix+tok, data)
	if err != nil {
		pb.known = false
		return realtime.Position{}, b.wrap(ctx, "publish", err)
	}
	return pos, nil
}

// publish stores data on subject with the position after pb's, reading
// the channel's state again whenever the stream refuses because pb's
// was out of date. The caller holds pb's turn.
func (b *Backplane) publish(ctx context.Context, pb *publisher, subject string, data []byte) (realtime.Position, error) {
	for attempt := 1; ; attempt++ {
		stream, err := b.ensureStream(ctx)
		if err != nil {
			return realtime.Position{}, err
		}
		if !pb.known {
			last, err := lastMessage(ctx, stream, subject)
			if err != nil {
				return realtime.Position{}, err
			}
			pb.known, pb.seq, pb.pos = true, last.seq, last.pos
		}
		next := realtime.Position{Epoch: pb.pos.Epoch, Offset: pb.pos.Offset + 1}
		if pb.pos.Epoch == "" {
			next = realtime.Position{Epoch: newID(), Offset: 1}
		}

		msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
		msg.Header.Set(epochHeader, next.Epoch)
		msg.Header.Set(offsetHeader, strconv.FormatUint(next.Offset, 10))
		ack, err := b.js.PublishMsg(ctx, msg,
			jetstream.WithExpectLastSequencePerSubject(pb.seq),
			jetstream.WithRetryAttempts(0),
		)
		if err == nil {
			pb.seq, pb.pos = ack.Sequence, next
			return next, nil
		}
		pb.known = false
		switch {
		case isWrongLastSequence(err) && attempt < maxAttempts:
			// Another node published first: number after its message.
		case errors.Is(err, jetstream.ErrNoStreamResponse) && attempt == 1:
			// The stream is gone (deleted, or kept in the memory of a
			// server that restarted): make it again.
			b.forgetStream(stream)
		default:
			return realtime.Position{}, err
		}
	}
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// stored is a channel's message as the stream keeps it.
type stored struct {
	seq  uint64 // stream sequence; 0 when the channel has no message
	prev uint64 // stream sequence of the channel's message before it
	pos  realtime.Position
	data []byte
}

// lastMessage returns the last message stored on subject, with seq 0 if
// there is none. A message without a valid position (one that something
// else published there) has a zero pos: numbering starts again after it.
func lastMessage(ctx context.Context, stream jetstream.Stream, subject string) (stored, error) {
	rm, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stored{}, nil
	}
	if err != nil {
		return stored{}, err
	}
	return storedOf(rm.Sequence, rm.Header, rm.Data), nil
}

func storedOf(seq uint64, h nats.Header, data []byte) stored {
	s := stored{seq: seq, data: data}
	s.prev, _ = strconv.ParseUint(h.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	s.pos, _ = positionOf(h)
	return s
}

// positionOf returns the position that a message's headers carry.
func positionOf(h nats.Header) (realtime.Position, bool) {
	epoch := h.Get(epochHeader)
	offset, err := strconv.ParseUint(h.Get(offsetHeader), 10, 64)
	if epoch == "" || err != nil || offset == 0 {
		return realtime.Position{}, false
	}
	return realtime.Position{Epoch: epoch, Offset: offset}, true
}

// ensureStream returns the stream, creating it or updating its
// configuration first if no call has done so yet.
func (b *Backplane) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	b.streamMu.Lock()
	s := b.stream
	b.streamMu.Unlock()
	if s != nil {
		return s, nil
	}

	select {
	case b.streamLock <- struct{}{}:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	defer func() { <-b.streamLock }()
	b.streamMu.Lock()
	s = b.stream
	b.streamMu.Unlock()
	if s != nil {
		return s, nil
	}

	s, err := b.js.CreateOrUpdateStream(ctx, b.streamCfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Another node created it between our update and create.
		s, err = b.js.CreateOrUpdateStream(ctx, b.streamCfg)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", b.streamCfg.Name, err)
	}
	b.streamMu.Lock()
	b.stream = s
	b.streamMu.Unlock()
	return s, nil
}

// forgetStream makes the next call check the stream again.
func (b *Backplane) forgetStream(s jetstream.Stream) {
	b.streamMu.Lock()
	defer b.streamMu.Unlock()
	if b.stream == s {
		b.stream = nil
	}
}

// History returns the messages of channel after since and the channel's
// latest position. It reads the channel's last message, then up to 16
// missing messages one by one, or more through a consumer; each read is
// a round trip to NATS. The caller owns the returned messages.
func (b *Backplane) History(ctx context.Context, channel string, since realtime.Position) ([]realtime.Message, realtime.Position, error) {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return nil, realtime.Position{}, fmt.Errorf("natsbackplane: history: %w", err)
	}
	defer done()
	stream, err := b.ensureStream(ctx)
	if err != nil {
		return nil, realtime.Position{}, b.wrap(ctx, "history", err)
	}
	tok, err := channelToken(channel)
	if err != nil {
		return nil, realtime.Position{}, err
	}
	subject := b.inPrefix + tok
	last, err := lastMessage(ctx, stream, subject)
	if err != nil {
		return nil, realtime.Position{}, b.wrap(ctx, "history", err)
	}

	latest := last.pos
	switch {
	case latest.Epoch == "" && since == (realtime.Position{}):
		// NATS does not know the channel.
		return nil, realtime.Position{}, nil
	case latest.Epoch == "":
		return nil, realtime.Position{}, unrecoverable(channel, "unknown channel")
	case since == (realtime.Position{}):
		return nil, latest, nil
	case since.Epoch != latest.Epoch:
		return nil, latest, unrecoverable(channel, "epoch changed")
	case since.Offset > latest.Offset:
		return nil, latest, unrecoverable(channel, "position ahead of the channel")
	case since.Offset == latest.Offset:
		return nil, latest, nil
	case b.historySize == 0:
		return nil, latest, unrecoverable(channel, "no history kept")
	case latest.Offset-since.Offset > uint64(b.historySize):
		return nil, latest, unrecoverable(channel, "history trimmed")
	}

	var msgs []realtime.Message
	if latest.Offset-since.Offset <= walkLimit {
		msgs, err = walk(ctx, stream, channel, subject, last, since)
	} else {
		msgs, err = b.scan(ctx, stream, channel, subject, last, since)
	}
	if err != nil && !errors.Is(err, realtime.ErrUnrecoverable) {
		err = b.wrap(ctx, "history", err)
	}
	return msgs, latest, err
}

// walk returns the messages after since up to last, fetching each by the
// sequence of the one after it, newest first.
func walk(ctx context.Context, stream jetstream.Stream, channel, subject string, last stored, since realtime.Position) ([]realtime.Message, error) {
	msgs := make([]realtime.Message, last.pos.Offset-since.Offset)
	cur := last
	for i := len(msgs) - 1; ; i-- {
		msgs[i] = realtime.Message{Channel: channel, Data: cur.data, Position: cur.pos}
		if i == 0 {
			return msgs, nil
		}
		if cur.prev == 0 {
			return nil, unrecoverable(channel, "history trimmed")
		}
		rm, err := stream.GetMsg(ctx, cur.prev)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, unrecoverable(channel, "history trimmed")
		}
		if err != nil {
			return nil, err
		}
		want := realtime.Position{Epoch: cur.pos.Epoch, Offset: cur.pos.Offset - 1}
		cur = storedOf(rm.Sequence, rm.Header, rm.Data)
		if rm.Subject != subject || cur.pos != want {
			return nil, unrecoverable(channel, "history trimmed")
		}
	}
}

// scan returns the messages after since up to last through a consumer of
// the channel's messages, which it deletes afterwards.
func (b *Backplane) scan(ctx context.Context, stream jetstream.Stream, channel, subject string, last stored, since realtime.Position) ([]realtime.Message, error) {
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: subject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckNonePolicy,
		MemoryStorage: true,
		Replicas:      1,
		// Should the delete below fail, the server removes it.
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
		defer cancel()
		stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()

	want := last.pos.Offset - since.Offset
	msgs := make([]realtime.Message, 0, want)
	for uint64(len(msgs)) < want {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
		n := 0
		var trimmed bool
		for m := range batch.Messages() {
			n++
			pos, _ := positionOf(m.Headers())
			if pos.Epoch != since.Epoch || pos.Offset <= since.Offset || uint64(len(msgs)) == want {
				continue
			}
			if pos.Offset != since.Offset+1+uint64(len(msgs)) {
				trimmed = true
				continue
			}
			msgs = append(msgs, realtime.Message{Channel: channel, Data: m.Data(), Position: pos})
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("fetch: %w", err)
		}
		if trimmed || n == 0 {
			return nil, unrecoverable(channel, "history trimmed")
		}
	}
	return msgs, nil
}

func unrecoverable(channel, why string) error {
	return fmt.Errorf("natsbackplane: history of %q: %s: %w", channel, why, realtime.ErrUnrecoverable)
}
