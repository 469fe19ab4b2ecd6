package redisbackplane_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/redisbackplane"
)

func TestNewRejectsBadOptions(t *testing.T) {
	client := redisClient(t)
	_, err := redisbackplane.New(client, &redisbackplane.Options{Prefix: "a{b"})
	assert.Error(t, err)
	_, err = redisbackplane.New(nil, nil)
	assert.Error(t, err)
}

func TestHistoryRefusesTrimmedMessages(t *testing.T) {
	client := redisClient(t)
	prefix := uniquePrefix(t, client)
	bp := newNode(t, client, redisbackplane.Options{Prefix: prefix, HistorySize: 10})
	t.Cleanup(func() { bp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var pos []realtime.Position
	for i := range 500 {
		p, err := bp.Publish(ctx, "t", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		pos = append(pos, p)
	}

	// The newest ten are always kept.
	msgs, latest, err := bp.History(ctx, "t", pos[489])
	require.NoError(t, err)
	assert.Equal(t, pos[499], latest)
	require.Len(t, msgs, 10)
	assert.Equal(t, "490", string(msgs[0].Data))
	assert.Equal(t, pos[490], msgs[0].Position)

	// The oldest are gone: recovery from before them is refused, with the
	// latest position.
	msgs, latest, err = bp.History(ctx, "t", pos[0])
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
	assert.Empty(t, msgs)
	assert.Equal(t, pos[499], latest)

	// Up to date, or ahead of the channel.
	msgs, _, err = bp.History(ctx, "t", pos[499])
	assert.NoError(t, err)
	assert.Empty(t, msgs)
	_, _, err = bp.History(ctx, "t", realtime.Position{Epoch: pos[0].Epoch, Offset: 501})
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)

	// A channel Redis does not know.
	_, latest, err = bp.History(ctx, "unknown", realtime.Position{})
	assert.NoError(t, err)
	assert.Equal(t, realtime.Position{}, latest)
}

func TestChannelExpiresIntoNewEpoch(t *testing.T) {
	client := redisClient(t)
	prefix := uniquePrefix(t, client)
	bp := newNode(t, client, redisbackplane.Options{Prefix: prefix, HistoryTTL: 300 * time.Millisecond})
	t.Cleanup(func() { bp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	old, err := bp.Publish(ctx, "e", []byte("old"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), old.Offset)
	for _, key := range []string{"epoch", "offset", "history"} {
		ttl, err := client.PTTL(ctx, prefix+":{e}:"+key).Result()
		require.NoError(t, err)
		assert.Positive(t, ttl, key)
	}

	// Redis expires the keys on its own clock.
	require.Eventually(t, func() bool {
		_, latest, err := bp.History(ctx, "e", realtime.Position{})
		return err == nil && latest == realtime.Position{}
	}, 5*time.Second, 50*time.Millisecond)

	fresh, err := bp.Publish(ctx, "e", []byte("new"))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), fresh.Offset)
	assert.NotEqual(t, old.Epoch, fresh.Epoch)
	_, _, err = bp.History(ctx, "e", old)
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
}

func TestNewRefusesRing(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:6379"}})
	t.Cleanup(func() { ring.Close() })
	_, err := redisbackplane.New(ring, nil)
	assert.Error(t, err)
}

// A recovery longer than one XRANGE page is read in pages, complete and
// in order.
func TestHistoryReadsInPages(t *testing.T) {
	client := redisClient(t)
	prefix := uniquePrefix(t, client)
	bp := newNode(t, client, redisbackplane.Options{Prefix: prefix, HistorySize: 5000})
	t.Cleanup(func() { bp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first, err := bp.Publish(ctx, "paged", []byte("0"))
	require.NoError(t, err)
	const total = 2500
	for i := 1; i < total; i++ {
		_, err := bp.Publish(ctx, "paged", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}
	msgs, latest, err := bp.History(ctx, "paged", first)
	require.NoError(t, err)
	assert.Equal(t, uint64(total), latest.Offset)
	require.Len(t, msgs, total-1)
	for i, m := range msgs {
		require.Equal(t, strconv.Itoa(i+1), string(m.Data))
		require.Equal(t, first.Offset+1+uint64(i), m.Position.Offset)
	}
}
