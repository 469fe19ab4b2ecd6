package redisbackplane_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/redisbackplane"
)

func TestConformanceSharded(t *testing.T) {
	client := redisClient(t)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, client)
		return func() realtime.Backplane {
			return newNode(t, client, redisbackplane.Options{Prefix: prefix, Sharded: true})
		}
	})
}

// privateCluster starts a Redis Cluster of three masters of the test's
// own on free loopback ports, and returns a client of it. Every server is
// killed by its PID when the test ends.
func privateCluster(t *testing.T) *redis.ClusterClient {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		msg := "redis-cli is not installed: apt-get install --no-install-recommends redis-tools"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := t.TempDir()
	var addrs []string
	for range 3 {
		addr := freeAddr(t)
		_, port, _ := net.SplitHostPort(addr)
		privateRedis(t, addr,
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes-"+port+".conf"))
		addrs = append(addrs, addr)
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	require.NoError(t, err, "%s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, addr := range addrs {
		node := redis.NewClient(&redis.Options{Addr: addr})
		require.Eventually(t, func() bool {
			info, err := node.ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		}, 20*time.Second, 50*time.Millisecond, "cluster_state:ok on %s", addr)
		node.Close()
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { cc.Close() })
	require.Eventually(t, func() bool {
		var n atomic.Int32
		err := cc.ForEachMaster(ctx, func(context.Context, *redis.Client) error { n.Add(1); return nil })
		return err == nil && n.Load() == 3
	}, 10*time.Second, 50*time.Millisecond, "the client sees three masters")
	return cc
}

func TestClusterSharded(t *testing.T) {
	cc := privateCluster(t)
	var n int
	var mu sync.Mutex
	newPrefix := func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("cluster%d", n)
	}

	t.Run("Conformance", func(t *testing.T) {
		backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
			prefix := newPrefix()
			return func() realtime.Backplane {
				bp, err := redisbackplane.New(cc, &redisbackplane.Options{Prefix: prefix, Sharded: true})
				require.NoError(t, err)
				return bp
			}
		})
	})

	t.Run("SpreadOverMasters", func(t *testing.T) {
		// Channels whose slots three masters serve reach a node that
		// follows them all, each in order.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		prefix := newPrefix()
		sub, err := redisbackplane.New(cc, &redisbackplane.Options{Prefix: prefix, Sharded: true})
		require.NoError(t, err)
		t.Cleanup(func() { sub.Close() })
		pub, err := redisbackplane.New(cc, &redisbackplane.Options{Prefix: prefix, Sharded: true})
		require.NoError(t, err)
		t.Cleanup(func() { pub.Close() })
		const channels, each = 30, 20
		for i := range channels {
			require.NoError(t, sub.Subscribe(ctx, fmt.Sprint("c", i)))
		}
		require.NoError(t, sub.Health(ctx))
		for k := range each {
			for i := range channels {
				_, err := pub.Publish(ctx, fmt.Sprint("c", i), fmt.Append(nil, k))
				require.NoError(t, err)
			}
		}
		next := map[string]int{}
		for got := 0; got < channels*each; {
			msgs, err := sub.Receive(ctx)
			require.NoError(t, err)
			for _, m := range msgs {
				require.False(t, m.Gap)
				assert.Equal(t, fmt.Sprint(next[m.Channel]), string(m.Data), m.Channel)
				next[m.Channel]++
				got++
			}
		}
	})

	t.Run("Hubs", func(t *testing.T) {
		backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
			prefix := newPrefix()
			return func() realtime.Backplane {
				bp, err := redisbackplane.New(cc, &redisbackplane.Options{Prefix: prefix, Sharded: true})
				require.NoError(t, err)
				return bp
			}
		})
	})
}
