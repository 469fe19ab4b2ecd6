package redisbackplane_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
	"github.com/realtimekit/realtime/client"
	"github.com/realtimekit/realtime/redisbackplane"
)

// syncBuffer is a bytes.Buffer for a logger shared by goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proxiedNode runs a hub whose backplane reaches the private Redis at
// addr through a proxy, and returns the hub, its backplane, the proxy and
// the server's URL.
func proxiedNode(t *testing.T, addr string, logs *syncBuffer, hubOpts realtime.Options) (*realtime.Hub, *redisbackplane.Backplane, *backplanetest.Proxy, string) {
	t.Helper()
	proxy := backplanetest.NewProxy(t, addr)
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	bp, err := redisbackplane.New(rdb, &redisbackplane.Options{
		Prefix: "outage",
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	require.NoError(t, err)
	hubOpts.Backplane = bp
	hub, err := realtime.New(&hubOpts)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	mux.Handle("/readyz", hub.ReadyHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		hub.Close()
		srv.Close()
	})
	return hub, bp, proxy, srv.URL
}

func readyStatus(t *testing.T, url string) int {
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Logf("readyz: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// receiveUntil reads events from c until one is the message want, and
// returns every event's type and data in order.
func receiveUntil(ctx context.Context, c *client.Client, want string) ([]string, error) {
	var got []string
	for {
		ev, err := c.Receive(ctx)
		if err != nil {
			return got, fmt.Errorf("after %v: %w", got, err)
		}
		got = append(got, ev.Type+":"+ev.Channel+":"+string(ev.Data))
		if ev.Type == "message" && string(ev.Data) == want {
			return got, nil
		}
	}
}

// F05: Redis is unreachable for 10 s while the node's own HTTP server
// answers. Readiness fails during the outage and recovers after it,
// publishes fail promptly, and clients on every transport hear of the gap
// and then receive again.
func TestF05RedisUnreachable(t *testing.T) {
	addr := freeAddr(t)
	privateRedis(t, addr)
	var logs syncBuffer
	hub, bp, proxy, url := proxiedNode(t, addr, &logs, realtime.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	require.Eventually(t, func() bool { return readyStatus(t, url) == http.StatusOK },
		10*time.Second, 20*time.Millisecond, "the node becomes ready")
	clients := map[string]*client.Client{}
	for _, tr := range []struct{ name, path string }{
		{client.WebSocket, "/rt/ws"},
		{client.SSE, "/rt/sse"},
		{client.LongPoll, "/rt/poll"},
	} {
		u := url + tr.path
		if tr.name == client.WebSocket {
			u = "ws" + strings.TrimPrefix(u, "http")
		}
		c, err := client.Dial(ctx, u, &client.Options{Transport: tr.name})
		require.NoError(t, err, tr.name)
		t.Cleanup(func() { c.Close() })
		_, err = c.Join(ctx, "room")
		require.NoError(t, err, tr.name)
		clients[tr.name] = c
	}
	_, err := hub.Publish(ctx, "room", []byte(`"before"`))
	require.NoError(t, err)
	for name, c := range clients {
		_, err := receiveUntil(ctx, c, `"before"`)
		require.NoError(t, err, name)
	}
	gapsBefore := hub.Stats().Gaps

	proxy.Cut()
	outage := time.Now()
	require.Eventually(t, func() bool { return readyStatus(t, url) == http.StatusServiceUnavailable },
		5*time.Second, 20*time.Millisecond, "readiness fails while Redis is unreachable")
	assert.Error(t, bp.Health(ctx))
	start := time.Now()
	_, err = hub.Publish(ctx, "room", []byte(`"lost"`))
	assert.Error(t, err, "a publish while Redis is unreachable fails")
	assert.Less(t, time.Since(start), 5*time.Second, "and fails promptly")
	for time.Since(outage) < 10*time.Second {
		assert.Equal(t, http.StatusServiceUnavailable, readyStatus(t, url), "not ready during the outage")
		time.Sleep(500 * time.Millisecond)
	}

	proxy.Restore(t)
	back := time.Now()
	require.Eventually(t, func() bool { return readyStatus(t, url) == http.StatusOK },
		10*time.Second, 20*time.Millisecond, "ready again after the outage")
	t.Logf("ready %v after Redis came back", time.Since(back).Round(time.Millisecond))
	require.NoError(t, bp.Health(ctx))

	_, err = hub.Publish(ctx, "room", []byte(`"after"`))
	require.NoError(t, err)
	for name, c := range clients {
		got, err := receiveUntil(ctx, c, `"after"`)
		require.NoError(t, err, name)
		assert.Equal(t, "gap:room:", got[0], "%s: the gap comes first: %v", name, got)
	}
	assert.Greater(t, hub.Stats().Gaps, gapsBefore)
	assert.Contains(t, logs.String(), "level=ERROR msg=\"redis pubsub connection failed")
}

// privateRedisLimited starts a private Redis whose Pub/Sub output buffer
// limit is small, and returns a client of it.
func privateRedisLimited(t *testing.T) (string, *redis.Client) {
	t.Helper()
	addr := freeAddr(t)
	privateRedis(t, addr)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, rdb.ConfigSet(ctx, "client-output-buffer-limit", "pubsub 256kb 128kb 1").Err())
	return addr, rdb
}

// flood publishes n messages of size bytes to channel from 8 goroutines.
func flood(ctx context.Context, t *testing.T, pub realtime.Backplane, channel string, n, size int) {
	data := bytes.Repeat([]byte("x"), size)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				if _, err := pub.Publish(ctx, channel, data); err != nil {
					assert.NoError(t, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// F06 on the backplane: a node whose Receive is not drained fills its
// queue, then stops reading, and Redis drops its Pub/Sub connection past
// the output buffer limit. The loss is logged at Error and Receive
// reports a gap before what follows.
func TestF06OutputBufferOverflow(t *testing.T) {
	_, rdb := privateRedisLimited(t)
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	slow, err := redisbackplane.New(rdb, &redisbackplane.Options{
		Prefix: "f06", QueueSize: 16, HistorySize: -1,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	t.Cleanup(func() { slow.Close() })
	pub, err := redisbackplane.New(rdb, &redisbackplane.Options{Prefix: "f06", HistorySize: -1})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	require.NoError(t, slow.Subscribe(ctx, "flood"))

	const n, size = 3000, 8 << 10
	flood(ctx, t, pub, "flood", n, size)
	_, err = pub.Publish(ctx, "flood", []byte("after"))
	require.NoError(t, err)

	// Drained now, the node delivers what it had, then the gap, then what
	// came after the new connection.
	var before int
	gap := false
	for {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		msgs, err := slow.Receive(rctx)
		rcancel()
		require.NoError(t, err, "after %d messages, gap %v", before, gap)
		done := false
		for _, m := range msgs {
			switch {
			case m.Gap:
				gap = true
			case !gap:
				before++
			case string(m.Data) == "after":
				done = true
			}
		}
		if done {
			break
		}
		if gap {
			// Messages published before the new connection are lost;
			// publish again until one gets through.
			_, err = pub.Publish(ctx, "flood", []byte("after"))
			require.NoError(t, err)
		}
	}
	t.Logf("%d of %d messages arrived before the gap", before, n)
	assert.Less(t, before, n, "Redis dropped the connection")
	assert.Contains(t, logs.String(), "level=ERROR msg=\"redis pubsub connection failed")
}

// F06 under a hub: Redis cannot write to the node (the network stalls),
// drops its Pub/Sub connection, and the hub's clients get a gap and the
// Gaps counter grows.
func TestF06HubSeesGap(t *testing.T) {
	addr, rdb := privateRedisLimited(t)
	var logs syncBuffer
	// Queues big enough that the burst after the stall is not a slow
	// consumer.
	hub, _, proxy, url := proxiedNode(t, addr, &logs, realtime.Options{QueueMessages: 1 << 16, QueueBytes: 64 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pub, err := redisbackplane.New(rdb, &redisbackplane.Options{Prefix: "outage", HistorySize: -1})
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })

	c, err := client.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/rt/ws", &client.Options{Buffer: 1 << 16})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Join(ctx, "flood")
	require.NoError(t, err)

	proxy.Pause()
	flood(ctx, t, pub, "flood", 3000, 8<<10)
	proxy.Resume()

	var got []string
	var dropped error
	require.Eventually(t, func() bool {
		if _, err := pub.Publish(ctx, "flood", []byte(`"after"`)); err != nil {
			return false
		}
		for {
			rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			ev, err := c.Receive(rctx)
			rcancel()
			select {
			case <-c.Done():
				dropped = fmt.Errorf("the client was disconnected: %w", err)
				return true
			default:
			}
			if err != nil {
				return false
			}
			if ev.Type != "message" {
				got = append(got, ev.Type)
			} else if string(ev.Data) == `"after"` {
				return true
			}
		}
	}, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, dropped)
	assert.Contains(t, got, "gap")
	assert.Positive(t, hub.Stats().Gaps)
	assert.Contains(t, logs.String(), "level=ERROR")
}
