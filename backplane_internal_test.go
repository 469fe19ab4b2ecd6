package realtime

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMemoryHistoryExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewMemoryBroker(&MemoryOptions{HistoryTTL: time.Minute})
	b.now = func() time.Time { return now }
	bp := b.Backplane()
	defer bp.Close()
	ctx := context.Background()

	first, err := bp.Publish(ctx, "x", []byte("old"))
	require.NoError(t, err)
	now = now.Add(40 * time.Second)
	second, err := bp.Publish(ctx, "x", []byte("new"))
	require.NoError(t, err)

	now = now.Add(30 * time.Second) // "old" is 70 s old, "new" 30 s
	_, _, err = bp.History(ctx, "x", Position{first.Epoch, 0})
	assert.ErrorIs(t, err, ErrUnrecoverable)
	msgs, _, err := bp.History(ctx, "x", first)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, "new", string(msgs[0].Data))

	// Once all of it has expired, nobody following, the channel is gone
	// and its numbering with it.
	now = now.Add(time.Minute)
	_, latest, err := bp.History(ctx, "x", second)
	assert.ErrorIs(t, err, ErrUnrecoverable)
	assert.Equal(t, Position{}, latest)
	b.mu.Lock()
	assert.Empty(t, b.channels)
	b.mu.Unlock()
}
