package natsbackplane_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/natsbackplane"
)

// TestCluster runs three hubs on one NATS behind a round-robin proxy,
// with clients of every transport.
func TestCluster(t *testing.T) {
	nc := connect(t)
	backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, nc)
		return func() realtime.Backplane {
			bp, err := natsbackplane.New(connect(t), &natsbackplane.Options{Prefix: prefix})
			require.NoError(t, err)
			return bp
		}
	})
}

// TestOutage cuts the shared NATS away from two nodes through a proxy and
// brings it back.
func TestOutage(t *testing.T) {
	shared := connect(t)
	u, err := url.Parse(natsURL())
	require.NoError(t, err)
	proxy := backplanetest.NewProxy(t, u.Host)
	nc, err := nats.Connect("nats://"+proxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.NoCallbacksAfterClientClose())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	prefix := uniquePrefix(t, shared)
	backplanetest.RunOutage(t, backplanetest.Outage{
		NewNode: func() realtime.Backplane {
			bp, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: prefix})
			require.NoError(t, err)
			return bp
		},
		Cut:     func(*testing.T) { proxy.Cut() },
		Restore: func(t *testing.T) { proxy.Restore(t) },
	})
}
