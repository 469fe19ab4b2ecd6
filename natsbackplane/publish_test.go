package natsbackplane_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/natsbackplane"
)

// receiveN returns the next n messages of bp, failing the test if they
// do not come in time or a gap signal comes instead.
func receiveN(t *testing.T, ctx context.Context, bp *natsbackplane.Backplane, n int) []realtime.Message {
	t.Helper()
	var got []realtime.Message
	for len(got) < n {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err, "after %d of %d messages", len(got), n)
		for _, m := range msgs {
			require.False(t, m.Gap, "gap signal after %d messages", len(got))
		}
		got = append(got, msgs...)
	}
	require.Len(t, got, n)
	return got
}

// TestConcurrentPublishersOnSeveralNodes has several goroutines on each
// of three nodes publish to one channel at once, so that each node
// stores several messages at a time and the nodes race each other for
// the channel's next offsets. Every subscriber, on two more nodes, must
// see every message once, at the position its Publish returned, with
// offsets rising by one, each goroutine's messages in the order it
// published them, and the same order as the other subscriber; History
// must return the same messages, one by one, across stored batches.
func TestConcurrentPublishersOnSeveralNodes(t *testing.T) {
	nc := connect(t)
	prefix := uniquePrefix(t, nc)
	opts := natsbackplane.Options{Prefix: prefix, HistorySize: 5000}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	subs := []*natsbackplane.Backplane{newNode(t, opts), newNode(t, opts)}
	for _, s := range subs {
		require.NoError(t, s.Subscribe(ctx, "x"))
	}

	const nodes, perNode, each = 3, 4, 100
	const total = nodes * perNode * each
	var mu sync.Mutex
	returned := map[string]realtime.Position{} // payload -> position
	var wg sync.WaitGroup
	for n := range nodes {
		pub := newNode(t, opts)
		for g := range perNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					// Sizes around the one-byte length prefix limit.
					data := fmt.Appendf(nil, "%d.%d/%d/", n, g, i)
					data = append(data, bytes.Repeat([]byte("p"), (i*7)%200)...)
					pos, err := pub.Publish(ctx, "x", data)
					if !assert.NoError(t, err) {
						return
					}
					mu.Lock()
					returned[string(data)] = pos
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	require.Len(t, returned, total)

	var first []realtime.Message
	for _, s := range subs {
		got := receiveN(t, ctx, s, total)
		next := map[string]int{}
		for i, m := range got {
			assert.Equal(t, "x", m.Channel)
			if i > 0 {
				require.Equal(t, got[i-1].Position.Epoch, m.Position.Epoch, "one epoch")
				require.Equal(t, got[i-1].Position.Offset+1, m.Position.Offset, "offsets rise by one")
			}
			require.Equal(t, returned[string(m.Data)], m.Position, "delivered at the position Publish returned")
			fields := bytes.SplitN(m.Data, []byte("/"), 3)
			require.Len(t, fields, 3)
			who := string(fields[0])
			require.Equal(t, strconv.Itoa(next[who]), string(fields[1]), "publisher %s out of order", who)
			next[who]++
		}
		if first == nil {
			first = got
		} else {
			require.Equal(t, first, got, "subscribers saw different orders")
		}
	}

	// Several messages went into one stored message.
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, err := js.Stream(ctx, prefix)
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	assert.Less(t, info.State.Msgs, uint64(total), "stored messages")

	// History, from positions inside and at the edges of stored batches:
	// a few missing messages are walked back, many scanned.
	for _, from := range []int{0, 1, total / 2, total - 20, total - 17, total - 16, total - 5, total - 2} {
		msgs, latest, err := subs[0].History(ctx, "x", first[from].Position)
		require.NoError(t, err, "from %d", from)
		assert.Equal(t, first[total-1].Position, latest)
		require.Equal(t, first[from+1:], msgs, "from %d", from)
	}
	_, latest, err := subs[1].History(ctx, "x", realtime.Position{})
	require.NoError(t, err)
	assert.Equal(t, first[total-1].Position, latest)
}

// TestCloseEndsQueuedPublishes closes a node while many publishes to one
// channel wait their turn: every one returns, and the goroutines that
// stored them end (TestMain checks that none is left).
func TestCloseEndsQueuedPublishes(t *testing.T) {
	nc := connect(t)
	bp, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: uniquePrefix(t, nc)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = bp.Publish(ctx, "c", []byte("first"))
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				_, err := bp.Publish(ctx, fmt.Sprintf("c%d", g%2), []byte(strconv.Itoa(i)))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, bp.Close())
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.True(t, errors.Is(err, realtime.ErrClosed), "%v", err)
	}
}

// TestPublishReturnsWithItsContext ends the context of a publish that
// waits behind others: it returns at once, and the others are unharmed.
func TestPublishReturnsWithItsContext(t *testing.T) {
	nc := connect(t)
	bp := newNode(t, natsbackplane.Options{Prefix: uniquePrefix(t, nc)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, bp.Subscribe(ctx, "c"))

	var wg sync.WaitGroup
	var mu sync.Mutex
	var stored []realtime.Position
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				short, stop := context.WithCancel(ctx)
				switch i % 3 {
				case 0:
					stop() // ends before it is queued
				case 1:
					// may end while it waits, or while it is stored
					short, stop = context.WithTimeout(ctx, time.Duration(i%5)*200*time.Microsecond)
				}
				pos, err := bp.Publish(short, "c", []byte(fmt.Sprintf("%d/%d", g, i)))
				stop()
				if err != nil {
					assert.True(t, errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded), "%v", err)
					continue
				}
				mu.Lock()
				stored = append(stored, pos)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	require.NotEmpty(t, stored)

	// Whatever was stored arrives with consecutive offsets; a cancelled
	// publish may have been stored too, but nothing skips.
	var last realtime.Position
	for _, p := range stored {
		if p.Offset > last.Offset {
			last = p
		}
	}
	var got []realtime.Message
	for uint64(len(got)) < last.Offset {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err)
		got = append(got, msgs...)
	}
	for i, m := range got {
		require.False(t, m.Gap)
		assert.Equal(t, last.Epoch, m.Position.Epoch)
		assert.Equal(t, uint64(i+1), m.Position.Offset)
	}
}
