package natsbackplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realtimekit/realtime"
)

// maxAttempts bounds how often a batch is numbered again after another
// node published to the channel first.
const maxAttempts = 100

// walkLimit is the most missing messages for which History fetches the
// stored messages that hold them one by one; past it, a consumer fetches
// them in batches.
const walkLimit = 16

// idlePublishers is how many channels keep their last position in
// memory while nobody publishes to them.
const idlePublishers = 4096

// Limits of one stored message: at most batchCount messages, and more
// than one only while their encoding stays within batchBytes.
const (
	batchCount = 256
	batchBytes = 64 << 10
)

// publishers lines up this node's publishes per channel and remembers
// where each channel stands. One sender per channel stores what is
// queued, several messages at a time, so that a node publishing alone
// needs one round trip per batch and never races itself.
type publishers struct {
	mu     sync.Mutex
	closed bool // set by Close: no sender starts after it
	m      map[string]*publisher
}

// publisher is the queue and the last known state of one channel.
type publisher struct {
	channel string
	subject string

	// Guarded by publishers.mu. refs counts the callers waiting and the
	// sender; running says that a sender goroutine owns the channel.
	refs    int
	queue   []*pending
	running bool
	// want is how many queued messages the sender waits for, 0 for
	// none; queuePublish signals grown when the queue has them.
	want  int
	grown chan struct{}

	// Owned by the sender. known says whether seq and pos are worth
	// trying: seq is the stream sequence of the channel's last stored
	// message (0 for none) and pos the position of its last message
	// (zero when the channel has no numbering to continue).
	known bool
	seq   uint64
	pos   realtime.Position
}

// pending is one Publish call waiting for its position. The sender
// fills pos and err and closes done.
type pending struct {
	data []byte
	pos  realtime.Position
	err  error
	done chan struct{}
}

func (p *publishers) init() { p.m = make(map[string]*publisher) }

// Publish gives data the next position of channel by storing it in the
// stream, which republishes it to every node that follows the channel.
// It blocks for one round trip to NATS, more when other nodes publish to
// the channel at the same time, and waits for this node's earlier
// publishes to the channel: the publishes that queue meanwhile go
// together, in one stored message, on the next round trip. data is not
// retained.
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

	p := &pending{data: data, done: make(chan struct{})}
	pb, err := b.queuePublish(channel, b.inPrefix+tok, p)
	if err != nil {
		return realtime.Position{}, fmt.Errorf("natsbackplane: publish: %w", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		select {
		case <-p.done:
		default:
			// A message the sender has taken may still be stored.
			b.publishers.withdraw(pb, p)
			return realtime.Position{}, b.wrap(ctx, "publish", ctx.Err())
		}
	}
	b.publishers.release(pb)
	if p.err != nil {
		return realtime.Position{}, b.wrap(ctx, "publish", p.err)
	}
	return p.pos, nil
}

// queuePublish queues p on channel's publisher, starting its sender if
// none runs.
func (b *Backplane) queuePublish(channel, subject string, p *pending) (*publisher, error) {
	ps := &b.publishers
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed {
		return nil, realtime.ErrClosed
	}
	pb := ps.m[channel]
	if pb == nil {
		pb = &publisher{channel: channel, subject: subject, grown: make(chan struct{}, 1)}
		ps.m[channel] = pb
	}
	pb.refs++
	pb.queue = append(pb.queue, p)
	if pb.want > 0 && len(pb.queue) >= pb.want {
		pb.want = 0
		select {
		case pb.grown <- struct{}{}:
		default:
		}
	}
	if !pb.running {
		pb.running = true
		pb.refs++
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.send(pb)
		}()
	}
	return pb, nil
}

// withdraw takes p out of pb's queue if the sender has not taken it yet,
// and gives up the caller's reference.
func (p *publishers) withdraw(pb *publisher, w *pending) {
	p.mu.Lock()
	if i := slices.Index(pb.queue, w); i >= 0 {
		pb.queue = slices.Delete(pb.queue, i, i+1)
	}
	p.mu.Unlock()
	p.release(pb)
}

// release gives up a reference to pb and forgets an idle channel once
// too many are remembered.
func (p *publishers) release(pb *publisher) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releaseLocked(pb)
}

func (p *publishers) releaseLocked(pb *publisher) {
	pb.refs--
	if pb.refs == 0 && len(p.m) > idlePublishers && p.m[pb.channel] == pb {
		delete(p.m, pb.channel)
	}
}

// take removes the next batch from pb's queue and returns it with its
// encoding, or ends the sender's turn when the queue is empty.
func (p *publishers) take(pb *publisher) ([]*pending, []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(pb.queue) == 0 {
		pb.running = false
		p.releaseLocked(pb)
		return nil, nil
	}
	n, size := 1, encodedLen(pb.queue[0].data)
	for n < len(pb.queue) && n < batchCount {
		l := encodedLen(pb.queue[n].data)
		if size+l > batchBytes {
			break
		}
		n, size = n+1, size+l
	}
	batch := slices.Clone(pb.queue[:n])
	clear(pb.queue[:n])
	pb.queue = pb.queue[n:]
	if len(pb.queue) == 0 {
		pb.queue = nil
	}
	// Encoded while the callers still wait, so that none of their data
	// is read after they return.
	return batch, encodeBatch(batch)
}

// send runs on the goroutine that queuePublish starts for a channel: it
// stores the channel's queued messages, a batch per round trip, until
// the queue is empty.
func (b *Backplane) send(pb *publisher) {
	var gather *time.Timer
	defer func() {
		if gather != nil {
			gather.Stop()
		}
	}()
	for {
		batch, body := b.publishers.take(pb)
		if batch == nil {
			return
		}
		start := time.Now()
		first, err := b.store(pb, body, len(batch))
		took := time.Since(start)
		for i, p := range batch {
			p.err = err
			if err == nil {
				p.pos = realtime.Position{Epoch: first.Epoch, Offset: first.Offset + uint64(i)}
			}
			close(p.done)
		}
		// The callers just answered may publish again at once; while
		// some are queued already, give the others a moment to join
		// them, so that a busy channel keeps its batches full rather
		// than alternating between small and large ones.
		if !b.publishers.waitFor(pb, len(batch)) {
			continue
		}
		wait := min(took/gatherFraction, gatherLimit)
		if gather == nil {
			gather = time.NewTimer(wait)
		} else {
			gather.Reset(wait)
		}
		select {
		case <-pb.grown:
		case <-gather.C:
		case <-b.life.Done():
		}
		b.publishers.waitFor(pb, 0)
	}
}

// How long a sender waits for the callers of its last batch: a fraction
// of that batch's round trip, and at most gatherLimit.
const (
	gatherFraction = 4
	gatherLimit    = 2 * time.Millisecond
)

// waitFor asks queuePublish to signal pb.grown once pb's queue holds n
// messages, and reports whether it holds some but fewer now; n 0 stops
// asking.
func (p *publishers) waitFor(pb *publisher, n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-pb.grown:
	default:
	}
	if n == 0 || len(pb.queue) == 0 || len(pb.queue) >= n {
		pb.want = 0
		return false
	}
	pb.want = n
	return true
}

// store stores body, the encoding of n messages, as the next messages of
// pb's channel and returns the position of the first.
func (b *Backplane) store(pb *publisher, body []byte, n int) (realtime.Position, error) {
	ctx, done, err := b.call(context.Background())
	if err != nil {
		pb.known = false
		return realtime.Position{}, err
	}
	defer done()
	first, err := b.publish(ctx, pb, body, n)
	if err != nil {
		pb.known = false
		if b.life.Err() != nil {
			err = realtime.ErrClosed
		} else if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %w", err, context.Cause(ctx))
		}
		return realtime.Position{}, err
	}
	return first, nil
}

// publish stores body, n messages, on pb's subject with the positions
// after pb's, reading the channel's state again whenever the stream
// refuses because pb's was out of date. It returns the position of the
// first message.
func (b *Backplane) publish(ctx context.Context, pb *publisher, body []byte, n int) (realtime.Position, error) {
	for attempt := 1; ; attempt++ {
		stream, err := b.ensureStream(ctx)
		if err != nil {
			return realtime.Position{}, err
		}
		if !pb.known {
			last, err := lastMessage(ctx, stream, pb.subject)
			if err != nil {
				return realtime.Position{}, err
			}
			pb.known, pb.seq, pb.pos = true, last.seq, last.pos
		}
		first := realtime.Position{Epoch: pb.pos.Epoch, Offset: pb.pos.Offset + 1}
		if pb.pos.Epoch == "" {
			first = realtime.Position{Epoch: newID(), Offset: 1}
		}
		last := realtime.Position{Epoch: first.Epoch, Offset: first.Offset + uint64(n) - 1}

		msg := &nats.Msg{Subject: pb.subject, Data: body, Header: nats.Header{}}
		msg.Header.Set(epochHeader, last.Epoch)
		msg.Header.Set(offsetHeader, strconv.FormatUint(last.Offset, 10))
		if n > 1 {
			msg.Header.Set(countHeader, strconv.Itoa(n))
		}
		ack, err := b.js.PublishMsg(ctx, msg,
			jetstream.WithExpectLastSequencePerSubject(pb.seq),
			jetstream.WithRetryAttempts(0),
		)
		if err == nil {
			pb.seq, pb.pos = ack.Sequence, last
			return first, nil
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

// encodedLen is the size of data in a stored message of several.
func encodedLen(data []byte) int {
	n := 1
	for x := uint64(len(data)); x >= 0x80; x >>= 7 {
		n++
	}
	return n + len(data)
}

// encodeBatch returns the body of the stored message that carries the
// batch: one message's data as it is, or each message's data after its
// length as a uvarint.
func encodeBatch(batch []*pending) []byte {
	if len(batch) == 1 {
		return bytes.Clone(batch[0].data)
	}
	size := 0
	for _, p := range batch {
		size += encodedLen(p.data)
	}
	body := make([]byte, 0, size)
	for _, p := range batch {
		body = binary.AppendUvarint(body, uint64(len(p.data)))
		body = append(body, p.data...)
	}
	return body
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// stored is a stored message of a channel: one message, or several
// consecutive ones.
type stored struct {
	seq   uint64            // stream sequence; 0 when the channel has no message
	prev  uint64            // stream sequence of the channel's stored message before it
	pos   realtime.Position // of its last message
	count uint64            // how many messages it carries
	head  nats.Header
	data  []byte
}

// first returns the offset of the first message s carries.
func (s stored) first() uint64 { return s.pos.Offset - s.count + 1 }

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
	s := stored{seq: seq, head: h, data: data}
	s.prev, _ = strconv.ParseUint(h.Get(jetstream.ExpectedLastSubjSeqHeader), 10, 64)
	s.pos, s.count, _ = positionOf(h)
	return s
}

// countHeader carries how many messages a stored message holds, when
// more than one.
const countHeader = "Realtime-Count"

// positionOf returns the position of the last message that a stored
// message's headers describe, and how many messages it holds.
func positionOf(h nats.Header) (realtime.Position, uint64, bool) {
	epoch := h.Get(epochHeader)
	offset, err := strconv.ParseUint(h.Get(offsetHeader), 10, 64)
	if epoch == "" || err != nil || offset == 0 {
		return realtime.Position{}, 0, false
	}
	count := uint64(1)
	if c := h.Get(countHeader); c != "" {
		count, err = strconv.ParseUint(c, 10, 64)
		if err != nil || count == 0 || count > offset {
			return realtime.Position{}, 0, false
		}
	}
	return realtime.Position{Epoch: epoch, Offset: offset}, count, true
}

// unpack returns the messages of channel that a stored message with
// these headers and data carries, in order. The messages share data.
func unpack(channel string, h nats.Header, data []byte) ([]realtime.Message, bool) {
	return appendUnpacked(nil, channel, h, data)
}

// appendUnpacked is unpack appending to msgs.
func appendUnpacked(msgs []realtime.Message, channel string, h nats.Header, data []byte) ([]realtime.Message, bool) {
	last, count, ok := positionOf(h)
	if !ok {
		return msgs, false
	}
	first := last.Offset - count + 1
	if count == 1 && h.Get(countHeader) == "" {
		return append(msgs, realtime.Message{Channel: channel, Data: data, Position: last}), true
	}
	start := len(msgs)
	msgs = slices.Grow(msgs, int(min(count, batchCount)))
	for i := uint64(0); i < count; i++ {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) {
			return msgs[:start], false
		}
		data = data[k:]
		msgs = append(msgs, realtime.Message{
			Channel:  channel,
			Data:     data[:n:n],
			Position: realtime.Position{Epoch: last.Epoch, Offset: first + i},
		})
		data = data[n:]
	}
	if len(data) != 0 {
		return msgs[:start], false
	}
	return msgs, true
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
// latest position. It reads the channel's last stored message, then the
// stored messages that hold the missing ones: one by one when up to 16
// messages are missing, or through a consumer; each read is a round
// trip to NATS. The caller owns the returned messages.
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

// walk returns the messages after since up to last, fetching each
// stored message by the sequence of the one after it, newest first.
func walk(ctx context.Context, stream jetstream.Stream, channel, subject string, last stored, since realtime.Position) ([]realtime.Message, error) {
	msgs := make([]realtime.Message, last.pos.Offset-since.Offset)
	i := len(msgs) // msgs[i:] are filled
	cur := last
	for {
		got, ok := unpack(channel, cur.head, cur.data)
		if !ok {
			return nil, unrecoverable(channel, "history trimmed")
		}
		for j := len(got) - 1; j >= 0 && i > 0; j-- {
			i--
			msgs[i] = got[j]
		}
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
		want := realtime.Position{Epoch: cur.pos.Epoch, Offset: cur.first() - 1}
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
			got, _ := unpack(channel, m.Headers(), m.Data())
			for _, msg := range got {
				pos := msg.Position
				if pos.Epoch != since.Epoch || pos.Offset <= since.Offset || uint64(len(msgs)) == want {
					continue
				}
				if pos.Offset != since.Offset+1+uint64(len(msgs)) {
					trimmed = true
					continue
				}
				msgs = append(msgs, msg)
			}
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
