package main

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// terminateListener ends the server session of bp's listener connection,
// found by the application_name that only it has, and reports how many
// sessions it ended.
func terminateListener(t *testing.T, pool *pgxpool.Pool, bp *Backplane) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tag, err := pool.Exec(ctx,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`,
		bp.listenConfig.RuntimeParams["application_name"])
	require.NoError(t, err)
	return tag.RowsAffected()
}

// TestListenerReconnectsAndReportsGap ends the listener's session on the
// server and keeps it from dialing again for a while: Health reports the
// outage, the node listens again once it can dial, Receive reports a gap,
// messages flow again, and history recovers what was published meanwhile.
func TestListenerReconnectsAndReportsGap(t *testing.T) {
	t.Parallel()
	var refuse atomic.Bool
	// The listener copies its pool's settings, dialer included, so this
	// dialer stands for a server that cannot be reached.
	flaky := testPool(t, func(cfg *pgxpool.Config) {
		var d net.Dialer
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if refuse.Load() {
				return nil, errors.New("test: dialing refused")
			}
			return d.DialContext(ctx, network, addr)
		}
	})
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := newNode(t, flaky, Options{Prefix: prefix})
	pub := newNode(t, pool, Options{Prefix: prefix})
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.NoError(t, a.Health(ctx))

	before, err := pub.Publish(ctx, "x", []byte("before"))
	require.NoError(t, err)
	assert.Equal(t, "before", string(receive(t, a, 1)[0].Data))

	refuse.Store(true)
	require.Equal(t, int64(1), terminateListener(t, pool, a))
	require.Eventually(t, func() bool { return a.Health(ctx) != nil }, 10*time.Second, 10*time.Millisecond,
		"Health reports the lost listener")
	lost, err := pub.Publish(ctx, "x", []byte("lost"))
	require.NoError(t, err)
	assert.Error(t, a.Health(ctx), "still down while it cannot dial")

	refuse.Store(false)
	require.Eventually(t, func() bool { return a.Health(ctx) == nil }, 20*time.Second, 10*time.Millisecond,
		"Health recovers once the listener is back")
	gap := receive(t, a, 1)[0]
	assert.Equal(t, realtime.Message{Gap: true}, gap, "a gap for every channel, and not the lost message")

	_, err = pub.Publish(ctx, "x", []byte("after"))
	require.NoError(t, err)
	assert.Equal(t, "after", string(receive(t, a, 1)[0].Data))

	msgs, _, err := a.History(ctx, "x", before)
	require.NoError(t, err)
	require.NotEmpty(t, msgs)
	assert.Equal(t, lost, msgs[0].Position)
	assert.Equal(t, "lost", string(msgs[0].Data))
	var sessions int
	err = pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`,
		a.listenConfig.RuntimeParams["application_name"]).Scan(&sessions)
	require.NoError(t, err)
	assert.Equal(t, 1, sessions, "one listener session again")
}

// TestStoredMessageMissingIsGap notifies a stored message whose row is
// gone, as when a node falls more than HistorySize messages behind: the
// node reports a gap for the channel instead of losing it silently.
func TestStoredMessageMissingIsGap(t *testing.T) {
	t.Parallel()
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := newNode(t, pool, Options{Prefix: prefix})
	require.NoError(t, a.Subscribe(ctx, "x"))
	_, err := pool.Exec(ctx, `SELECT pg_notify($1, $2)`,
		a.msgChannel, kindStoredMessage+" 7 someepoch "+b64.EncodeToString([]byte("x")))
	require.NoError(t, err)
	assert.Equal(t, realtime.Message{Channel: "x", Gap: true}, receive(t, a, 1)[0])
}
