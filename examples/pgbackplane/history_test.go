package main

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// TestHistoryKeepsHistorySize publishes more than HistorySize messages:
// recovery works from the oldest kept position and is refused before it.
func TestHistoryKeepsHistorySize(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newNode(t, pool, Options{Prefix: prefix, HistorySize: 3})
	var pos []realtime.Position
	for i := range 6 {
		p, err := a.Publish(ctx, "h", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		pos = append(pos, p)
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+prefix+`_messages`).Scan(&n))
	assert.Equal(t, 3, n, "rows beyond HistorySize are deleted")

	msgs, latest, err := a.History(ctx, "h", pos[2])
	require.NoError(t, err)
	assert.Equal(t, pos[5], latest)
	require.Len(t, msgs, 3)
	for i, m := range msgs {
		assert.Equal(t, pos[3+i], m.Position)
		assert.Equal(t, strconv.Itoa(3+i), string(m.Data))
		assert.Equal(t, "h", m.Channel)
	}
	_, latest, err = a.History(ctx, "h", pos[1])
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable, "a trimmed message")
	assert.Equal(t, pos[5], latest)
	_, _, err = a.History(ctx, "h", realtime.Position{Epoch: pos[0].Epoch, Offset: 7})
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable, "a position never issued")
	msgs, _, err = a.History(ctx, "h", pos[5])
	assert.NoError(t, err, "nothing missed")
	assert.Empty(t, msgs)
}

// TestHistoryExpires ages a channel's rows past HistoryTTL: its history is
// gone, and its next message starts a new epoch at offset 1.
func TestHistoryExpires(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newNode(t, pool, Options{Prefix: prefix, HistoryTTL: time.Minute})
	first, err := a.Publish(ctx, "h", []byte("old"))
	require.NoError(t, err)
	second, err := a.Publish(ctx, "h", []byte("old too"))
	require.NoError(t, err)
	msgs, _, err := a.History(ctx, "h", first)
	require.NoError(t, err)
	require.Len(t, msgs, 1)

	// Two minutes pass, for the backplane.
	for _, sql := range []string{
		`UPDATE ` + prefix + `_channels SET touched = touched - interval '2 minutes'`,
		`UPDATE ` + prefix + `_messages SET at = at - interval '2 minutes'`,
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err)
	}
	_, latest, err := a.History(ctx, "h", first)
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
	assert.Equal(t, realtime.Position{}, latest, "an expired channel is unknown")

	next, err := a.Publish(ctx, "h", []byte("new"))
	require.NoError(t, err)
	assert.NotEqual(t, second.Epoch, next.Epoch, "a new epoch")
	assert.Equal(t, uint64(1), next.Offset)
	_, _, err = a.History(ctx, "h", second)
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable, "the old epoch")

	// The janitor's statements delete the expired rows.
	require.NoError(t, a.trim(ctx))
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM `+prefix+`_messages`).Scan(&n))
	assert.Equal(t, 1, n, "only the new message is left")
}

// TestSendToClosedNode sends to a node that has closed, which the nodes
// table no longer lists.
func TestSendToClosedNode(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := newNode(t, pool, Options{Prefix: prefix}), newNode(t, pool, Options{Prefix: prefix})
	require.NoError(t, a.Send(ctx, b.Node(), []byte("hello")))
	require.NoError(t, b.Close())
	for _, data := range [][]byte{[]byte("small"), make([]byte, 100<<10)} {
		err := a.Send(ctx, b.Node(), data)
		assert.ErrorIs(t, err, realtime.ErrUnknownNode, "%d bytes", len(data))
	}
	assert.ErrorIs(t, b.Health(ctx), realtime.ErrClosed)
	_, err := b.Publish(ctx, "x", nil)
	assert.ErrorIs(t, err, realtime.ErrClosed)
}

// TestNewRefusesBadOptions checks New's validation.
func TestNewRefusesBadOptions(t *testing.T) {
	pool := testPool(t, nil)
	for _, opts := range []Options{
		{Prefix: "Upper"},
		{Prefix: "has-dash"},
		{Prefix: "9starts_with_digit"},
		{Prefix: "much_too_long_a_prefix_for_the_table_names"},
		{HistorySize: -1},
	} {
		_, err := New(context.Background(), pool, &opts)
		assert.Error(t, err, "%+v", opts)
	}
	_, err := New(context.Background(), nil, nil)
	assert.Error(t, err)
}
