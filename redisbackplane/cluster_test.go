package redisbackplane_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// TestOutage cuts the shared Redis away from two nodes through a proxy
// and brings it back.
func TestOutage(t *testing.T) {
	shared := redisClient(t)
	proxy := backplanetest.NewProxy(t, shared.Options().Addr)
	client := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DialTimeout: time.Second, MaxRetries: -1})
	t.Cleanup(func() { client.Close() })
	prefix := uniquePrefix(t, shared)
	backplanetest.RunOutage(t, backplanetest.Outage{
		NewNode: func() realtime.Backplane { return newNode(t, client, redisbackplane.Options{Prefix: prefix}) },
		Cut:     func(*testing.T) { proxy.Cut() },
		Restore: func(t *testing.T) { proxy.Restore(t) },
	})
}
