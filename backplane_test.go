package realtime_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// receiveN collects n messages from bp.
func receiveN(t *testing.T, bp realtime.Backplane, n int) []realtime.Message {
	t.Helper()
	var got []realtime.Message
	for len(got) < n {
		msgs, err := bp.Receive(ctxT(t))
		require.NoError(t, err)
		got = append(got, msgs...)
	}
	require.Len(t, got, n)
	return got
}

func TestMemoryBackplaneDeliversToSubscribedNodesInOrder(t *testing.T) {
	t.Parallel()
	broker := realtime.NewMemoryBroker(nil)
	a, b, c := broker.Backplane(), broker.Backplane(), broker.Backplane()
	defer a.Close()
	defer b.Close()
	defer c.Close()
	ctx := ctxT(t)
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.NoError(t, b.Subscribe(ctx, "x"))
	require.NoError(t, c.Subscribe(ctx, "other"))

	const publishers, each = 4, 250
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := c.Publish(ctx, "x", []byte(fmt.Sprintf("%d-%d", p, i)))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	_, err := a.Publish(ctx, "other", []byte("o"))
	require.NoError(t, err)

	gotA := receiveN(t, a, publishers*each)
	gotB := receiveN(t, b, publishers*each)
	assert.Equal(t, gotA, gotB, "both nodes see one order")
	perPublisher := map[string]int{}
	for i, m := range gotA {
		assert.Equal(t, "x", m.Channel)
		assert.Equal(t, uint64(i+1), m.Position.Offset)
		assert.Equal(t, gotA[0].Position.Epoch, m.Position.Epoch)
		var p, n int
		_, err := fmt.Sscanf(string(m.Data), "%d-%d", &p, &n)
		require.NoError(t, err)
		key := strconv.Itoa(p)
		assert.Equal(t, perPublisher[key], n, "publisher %d out of order", p)
		perPublisher[key]++
	}
	other := receiveN(t, c, 1)
	assert.Equal(t, "other", other[0].Channel)
}

func TestMemoryBackplaneUnsubscribeStopsDelivery(t *testing.T) {
	t.Parallel()
	broker := realtime.NewMemoryBroker(nil)
	a, b := broker.Backplane(), broker.Backplane()
	defer a.Close()
	defer b.Close()
	ctx := ctxT(t)
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.NoError(t, b.Subscribe(ctx, "x"))
	require.NoError(t, a.Unsubscribe(ctx, "x"))
	_, err := b.Publish(ctx, "x", []byte("1"))
	require.NoError(t, err)
	receiveN(t, b, 1)

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = a.Receive(short)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestMemoryBackplaneCopiesPayload(t *testing.T) {
	t.Parallel()
	bp := realtime.NewMemoryBackplane(nil)
	defer bp.Close()
	ctx := ctxT(t)
	require.NoError(t, bp.Subscribe(ctx, "x"))
	data := []byte("before")
	_, err := bp.Publish(ctx, "x", data)
	require.NoError(t, err)
	copy(data, "AFTER!")
	assert.Equal(t, "before", string(receiveN(t, bp, 1)[0].Data))
}

func TestMemoryBackplaneSlowsPublishersInsteadOfDropping(t *testing.T) {
	t.Parallel()
	bp := realtime.NewMemoryBackplane(nil)
	defer bp.Close()
	ctx := ctxT(t)
	require.NoError(t, bp.Subscribe(ctx, "x"))

	// Fill the node's queue until a publish has to wait.
	var published int
	for {
		short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, err := bp.Publish(short, "x", nil)
		cancel()
		if err != nil {
			require.ErrorIs(t, err, context.DeadlineExceeded)
			break
		}
		published++
		require.Less(t, published, 1<<20, "the queue never filled")
	}

	// A waiting publisher goes on once the node receives.
	done := make(chan error, 1)
	go func() {
		_, err := bp.Publish(ctx, "x", []byte("last"))
		done <- err
	}()
	got := receiveN(t, bp, published)
	require.NoError(t, <-done)
	last := receiveN(t, bp, 1)[0]
	assert.Equal(t, "last", string(last.Data))
	assert.Equal(t, got[len(got)-1].Position.Offset+1, last.Position.Offset)
}

func TestMemoryBackplaneClose(t *testing.T) {
	t.Parallel()
	bp := realtime.NewMemoryBackplane(nil)
	ctx := ctxT(t)
	require.NoError(t, bp.Subscribe(ctx, "x"))
	received := make(chan error, 1)
	go func() {
		_, err := bp.Receive(ctx)
		received <- err
	}()
	require.NoError(t, bp.Close())
	assert.ErrorIs(t, <-received, realtime.ErrClosed)
	require.NoError(t, bp.Close(), "Close is idempotent")
	_, err := bp.Publish(ctx, "x", nil)
	assert.ErrorIs(t, err, realtime.ErrClosed)
	assert.ErrorIs(t, bp.Subscribe(ctx, "x"), realtime.ErrClosed)
}

func TestMemoryBackplaneNumberingOutlivesSubscribersWithHistory(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		opts      *realtime.MemoryOptions
		sameEpoch bool
	}{
		{"history", nil, true},
		{"no history", &realtime.MemoryOptions{HistorySize: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bp := realtime.NewMemoryBackplane(tc.opts)
			defer bp.Close()
			ctx := ctxT(t)
			require.NoError(t, bp.Subscribe(ctx, "x"))
			p1, err := bp.Publish(ctx, "x", nil)
			require.NoError(t, err)
			require.NoError(t, bp.Unsubscribe(ctx, "x"))
			require.NoError(t, bp.Subscribe(ctx, "x"))
			p2, err := bp.Publish(ctx, "x", nil)
			require.NoError(t, err)
			if tc.sameEpoch {
				assert.Equal(t, realtime.Position{Epoch: p1.Epoch, Offset: 2}, p2)
			} else {
				assert.NotEqual(t, p1.Epoch, p2.Epoch)
				assert.Equal(t, uint64(1), p2.Offset)
			}
		})
	}
}

func TestMemoryBackplaneHistory(t *testing.T) {
	t.Parallel()
	bp := realtime.NewMemoryBackplane(&realtime.MemoryOptions{HistorySize: 10})
	defer bp.Close()
	ctx := ctxT(t)

	// Published with nobody following: kept for recovery all the same.
	var pos []realtime.Position
	for i := 1; i <= 15; i++ {
		p, err := bp.Publish(ctx, "x", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		pos = append(pos, p)
	}
	latest := pos[14]

	msgs, got, err := bp.History(ctx, "x", realtime.Position{})
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Equal(t, latest, got)

	msgs, got, err = bp.History(ctx, "x", pos[9]) // after 10: 11..15
	require.NoError(t, err)
	assert.Equal(t, latest, got)
	require.Len(t, msgs, 5)
	for i, m := range msgs {
		assert.Equal(t, strconv.Itoa(11+i), string(m.Data))
		assert.Equal(t, pos[10+i], m.Position)
	}

	msgs, _, err = bp.History(ctx, "x", latest)
	require.NoError(t, err)
	assert.Empty(t, msgs)

	for name, since := range map[string]realtime.Position{
		"trimmed":      pos[3],
		"other epoch":  {Epoch: "nope", Offset: 3},
		"future":       {Epoch: latest.Epoch, Offset: 99},
		"never issued": {Epoch: "", Offset: 1},
	} {
		msgs, got, err := bp.History(ctx, "x", since)
		assert.ErrorIs(t, err, realtime.ErrUnrecoverable, name)
		assert.Empty(t, msgs, name)
		assert.Equal(t, latest, got, name)
	}

	_, _, err = bp.History(ctx, "unknown", realtime.Position{Epoch: "e", Offset: 1})
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
}
