package natsbackplane_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/natsbackplane"
)

func TestHistoryRefusesTrimmedMessages(t *testing.T) {
	prefix := uniquePrefix(t, connect(t))
	bp := newNode(t, natsbackplane.Options{Prefix: prefix, HistorySize: 100})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var pos []realtime.Position
	for i := range 500 {
		p, err := bp.Publish(ctx, "t", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		pos = append(pos, p)
	}

	// The newest hundred are kept: a few are fetched one by one, more
	// through a consumer.
	for _, from := range []int{489, 450, 399} {
		msgs, latest, err := bp.History(ctx, "t", pos[from])
		require.NoError(t, err, "from %d", from)
		assert.Equal(t, pos[499], latest)
		require.Len(t, msgs, 499-from)
		for i, m := range msgs {
			assert.Equal(t, strconv.Itoa(from+1+i), string(m.Data))
			assert.Equal(t, pos[from+1+i], m.Position)
			assert.Equal(t, "t", m.Channel)
		}
	}

	// The oldest are gone (F07): recovery from before them is refused,
	// with the latest position, as it is from a position never issued.
	for _, since := range []realtime.Position{
		pos[0],
		pos[398],
		{Epoch: pos[0].Epoch, Offset: 501},
		{Epoch: "never-issued", Offset: 3},
	} {
		msgs, latest, err := bp.History(ctx, "t", since)
		assert.ErrorIs(t, err, realtime.ErrUnrecoverable, "%v", since)
		assert.Empty(t, msgs)
		assert.Equal(t, pos[499], latest)
	}

	// Up to date.
	msgs, _, err := bp.History(ctx, "t", pos[499])
	assert.NoError(t, err)
	assert.Empty(t, msgs)

	// A channel NATS does not know.
	_, latest, err := bp.History(ctx, "unknown", realtime.Position{})
	assert.NoError(t, err)
	assert.Equal(t, realtime.Position{}, latest)
	_, _, err = bp.History(ctx, "unknown", pos[3])
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
}

func TestChannelExpiresIntoNewEpoch(t *testing.T) {
	prefix := uniquePrefix(t, connect(t))
	bp := newNode(t, natsbackplane.Options{Prefix: prefix, HistoryTTL: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, bp.Subscribe(ctx, "e"))

	old, err := bp.Publish(ctx, "e", []byte("old"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), old.Offset)
	second, err := bp.Publish(ctx, "e", []byte("second"))
	require.NoError(t, err)
	assert.Equal(t, realtime.Position{Epoch: old.Epoch, Offset: 2}, second)

	// The stream expires the messages on the server's clock (F07).
	require.Eventually(t, func() bool {
		_, latest, err := bp.History(ctx, "e", realtime.Position{})
		return err == nil && latest == realtime.Position{}
	}, 10*time.Second, 50*time.Millisecond)
	_, _, err = bp.History(ctx, "e", old)
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)

	fresh, err := bp.Publish(ctx, "e", []byte("new"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), fresh.Offset)
	assert.NotEqual(t, old.Epoch, fresh.Epoch)
	_, _, err = bp.History(ctx, "e", second)
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)

	// The subscriber sees the new epoch begin, with no gap.
	var got []realtime.Message
	for len(got) < 3 {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err)
		got = append(got, msgs...)
	}
	require.Len(t, got, 3)
	assert.Equal(t, []string{"old", "second", "new"}, []string{string(got[0].Data), string(got[1].Data), string(got[2].Data)})
	assert.False(t, got[2].Gap)
	assert.Equal(t, fresh, got[2].Position)
}

// TestChannelNamesDoNotCollide publishes to names that a careless subject
// mapping would merge or spread over several tokens.
func TestChannelNamesDoNotCollide(t *testing.T) {
	prefix := uniquePrefix(t, connect(t))
	bp := newNode(t, natsbackplane.Options{Prefix: prefix})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	names := []string{"a.b", "a%2Eb", "a_b", "a", "a.>", "a.*", "*", ">", "a b", "", "%", "é", "\x00"}
	for _, n := range names {
		require.NoError(t, bp.Subscribe(ctx, n), "%q", n)
	}
	for _, n := range names {
		p, err := bp.Publish(ctx, n, []byte(n))
		require.NoError(t, err, "%q", n)
		assert.Equal(t, uint64(1), p.Offset, "%q has a numbering of its own", n)
	}
	seen := map[string]int{}
	for len(seen) < len(names) {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err)
		for _, m := range msgs {
			assert.Equal(t, m.Channel, string(m.Data))
			seen[m.Channel]++
		}
	}
	for _, n := range names {
		assert.Equal(t, 1, seen[n], "%q", n)
		_, latest, err := bp.History(ctx, n, realtime.Position{})
		require.NoError(t, err)
		assert.Equal(t, uint64(1), latest.Offset, "%q", n)
	}
}
