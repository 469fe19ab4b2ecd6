package redisbackplane_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/redisbackplane"
)

const startRedis = `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no`

// redisClient returns a client of the Redis at REALTIME_REDIS_ADDR
// (default 127.0.0.1:6379), closed when the test ends. Without one it
// skips the test, or fails it when CI is set.
func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	addr := os.Getenv("REALTIME_REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		msg := "no Redis at " + addr + " (" + err.Error() + "); start one with: " + startRedis
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return client
}

// uniquePrefix returns a key prefix no other run uses, whose keys are
// deleted when the test ends.
func uniquePrefix(t *testing.T, client *redis.Client) string {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	prefix := "realtime-test-" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := client.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
			if len(keys) == 500 {
				client.Unlink(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			client.Unlink(ctx, keys...)
		}
	})
	return prefix
}

func newNode(t *testing.T, client *redis.Client, opts redisbackplane.Options) realtime.Backplane {
	t.Helper()
	bp, err := redisbackplane.New(client, &opts)
	require.NoError(t, err)
	return bp
}

func TestConformance(t *testing.T) {
	client := redisClient(t)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, client)
		return func() realtime.Backplane {
			return newNode(t, client, redisbackplane.Options{Prefix: prefix})
		}
	})
}

func TestConformanceWithoutHistory(t *testing.T) {
	client := redisClient(t)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, client)
		return func() realtime.Backplane {
			return newNode(t, client, redisbackplane.Options{Prefix: prefix, HistorySize: -1})
		}
	})
}
