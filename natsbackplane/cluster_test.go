package natsbackplane_test

import (
	"testing"

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
