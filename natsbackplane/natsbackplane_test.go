package natsbackplane_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/natsbackplane"
)

const startNATS = "nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/nats"

// natsURL is the NATS server the tests share: REALTIME_NATS_URL, or
// nats://127.0.0.1:4222.
func natsURL() string {
	if url := os.Getenv("REALTIME_NATS_URL"); url != "" {
		return url
	}
	return "nats://127.0.0.1:4222"
}

// connect returns a connection to the shared NATS server, closed when
// the test ends. Without a server it skips the test, or fails it when CI
// is set.
func connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(natsURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err == nil {
		t.Cleanup(nc.Close)
		js, jerr := jetstream.New(nc)
		if jerr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = js.AccountInfo(ctx)
		} else {
			err = jerr
		}
	}
	if err != nil {
		msg := "no NATS with JetStream at " + natsURL() + " (" + err.Error() + "); start one with: " + startNATS
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return nc
}

// uniquePrefix returns a subject prefix, which is also the name of its
// stream, that no other test uses; the stream is deleted when the test
// ends.
func uniquePrefix(t *testing.T, nc *nats.Conn) string {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	prefix := "rttest-" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		js, err := jetstream.New(nc)
		if err == nil {
			js.DeleteStream(ctx, prefix)
		}
	})
	return prefix
}

// newNode returns a backplane on a connection of its own, closed (after
// the backplane) when the test ends.
func newNode(t *testing.T, opts natsbackplane.Options) *natsbackplane.Backplane {
	t.Helper()
	bp, err := natsbackplane.New(connect(t), &opts)
	require.NoError(t, err)
	t.Cleanup(func() { bp.Close() })
	return bp
}

func TestConformance(t *testing.T) {
	nc := connect(t)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, nc)
		return func() realtime.Backplane {
			bp, err := natsbackplane.New(connect(t), &natsbackplane.Options{Prefix: prefix})
			require.NoError(t, err)
			return bp
		}
	})
}

func TestConformanceWithoutHistory(t *testing.T) {
	nc := connect(t)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, nc)
		return func() realtime.Backplane {
			bp, err := natsbackplane.New(connect(t), &natsbackplane.Options{Prefix: prefix, HistorySize: -1})
			require.NoError(t, err)
			return bp
		}
	})
}

// TestConformanceSharedConnection runs the suite with every node of a
// test on one connection, as an application with one connection for
// everything has.
func TestConformanceSharedConnection(t *testing.T) {
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		nc := connect(t)
		prefix := uniquePrefix(t, nc)
		return func() realtime.Backplane {
			bp, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: prefix})
			require.NoError(t, err)
			return bp
		}
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	_, err := natsbackplane.New(nil, nil)
	assert.Error(t, err)
	nc := connect(t)
	for _, prefix := range []string{"a b", "a.*", "a.>", "a..b", ".a", "a."} {
		_, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: prefix})
		assert.Error(t, err, prefix)
	}
	_, err = natsbackplane.New(nc, &natsbackplane.Options{Stream: "a.b"})
	assert.Error(t, err)
}

func TestCloseKeepsTheConnection(t *testing.T) {
	nc := connect(t)
	subs := nc.NumSubscriptions()
	bp, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: uniquePrefix(t, nc)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, bp.Subscribe(ctx, "a"))
	require.NoError(t, bp.Close())
	require.NoError(t, bp.Close(), "Close is idempotent")
	assert.True(t, nc.IsConnected())
	assert.Equal(t, subs, nc.NumSubscriptions(), "Close leaves no subscription behind")
}
