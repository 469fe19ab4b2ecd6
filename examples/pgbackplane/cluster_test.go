package main

import (
	"testing"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
)

// TestCluster runs three hubs on one database behind a round-robin
// proxy, with clients of every transport.
func TestCluster(t *testing.T) {
	pool := testPool(t, nil)
	backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, pool)
		return func() realtime.Backplane { return newNode(t, pool, Options{Prefix: prefix}) }
	})
}
