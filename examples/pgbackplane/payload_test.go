package main

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// everyByte returns n bytes that run through every byte value.
func everyByte(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i * 7)
	}
	return p
}

// inlineLimit returns the largest data for channel that still travels
// inside its notification.
func inlineLimit(t *testing.T, channel string) int {
	t.Helper()
	n := 0
	for {
		if kind, _ := messageTail(channel, make([]byte, n+1)); kind != kindMessage {
			return n
		}
		n++
	}
}

// TestPayloadsAroundTheNotificationLimit publishes and sends payloads on
// both sides of the size at which data stops fitting in a notification
// and is stored instead, around PostgreSQL's 8000-byte payload limit and
// beyond; every byte of each arrives.
func TestPayloadsAroundTheNotificationLimit(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := newNode(t, pool, Options{Prefix: prefix}), newNode(t, pool, Options{Prefix: prefix})
	require.NoError(t, b.Subscribe(ctx, "sizes"))

	limit := inlineLimit(t, "sizes")
	require.Greater(t, limit, 5000, "most of the 8000 bytes carry data")
	kind, _ := messageTail("sizes", make([]byte, limit+1))
	require.Equal(t, kindStoredMessage, kind)
	sizes := []int{0, 1, 255, 256, limit - 1, limit, limit + 1, 7999, 8000, 8001, 64 << 10, 1 << 20}

	var want [][]byte
	for _, n := range sizes {
		p := everyByte(n)
		_, err := a.Publish(ctx, "sizes", p)
		require.NoError(t, err, "publish %d bytes", n)
		want = append(want, p)
	}
	got := receive(t, b, len(sizes))
	for i, m := range got {
		assert.Equal(t, "sizes", m.Channel)
		assert.Equal(t, uint64(i+1), m.Position.Offset)
		assert.True(t, bytes.Equal(want[i], m.Data), "payload of %d bytes differs (got %d bytes)", sizes[i], len(m.Data))
	}

	directSizes := []int{0, 5997, 5998, 5999, 7999, 8000, 8001, 64 << 10, realtime.MaxDirectSize}
	for _, n := range directSizes {
		require.NoError(t, a.Send(ctx, b.Node(), everyByte(n)), "send %d bytes", n)
	}
	got = receive(t, b, len(directSizes))
	for i, m := range got {
		assert.True(t, m.Direct)
		// Direct messages keep no order; these were sent one by one, so
		// they still come in turn.
		assert.True(t, bytes.Equal(everyByte(directSizes[i]), m.Data), "direct payload of %d bytes differs", directSizes[i])
	}
	err := a.Send(ctx, b.Node(), make([]byte, realtime.MaxDirectSize+1))
	assert.Error(t, err, "a direct message beyond MaxDirectSize is refused")
}

// TestChannelNamesKeepEveryByte publishes to channels whose names no
// SQL identifier or notification text could hold.
func TestChannelNamesKeepEveryByte(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newNode(t, pool, Options{Prefix: prefix})
	names := []string{"a b", "'; DROP TABLE x; --", "\x00\xff", string(everyByte(300)), "漢字"}
	for _, name := range names {
		require.NoError(t, a.Subscribe(ctx, name))
		_, err := a.Publish(ctx, name, []byte(name))
		require.NoError(t, err, "%q", name)
	}
	for i, m := range receive(t, a, len(names)) {
		assert.Equal(t, names[i], m.Channel)
		assert.Equal(t, names[i], string(m.Data))
	}
}

// receive receives from bp until it has n messages.
func receive(t *testing.T, bp realtime.Backplane, n int) []realtime.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []realtime.Message
	for len(got) < n {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err, "after %d of %d messages", len(got), n)
		got = append(got, msgs...)
	}
	require.Len(t, got, n, fmt.Sprintf("more than %d messages", n))
	return got
}
