package redisbackplane_test

import (
	"testing"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/redisbackplane"
)

// TestCluster runs three hubs on one Redis behind a round-robin proxy,
// with clients of every transport.
func TestCluster(t *testing.T) {
	client := redisClient(t)
	backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, client)
		return func() realtime.Backplane {
			return newNode(t, client, redisbackplane.Options{Prefix: prefix})
		}
	})
}
