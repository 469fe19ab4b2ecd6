package redisbackplane_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
	"github.com/realtimekit/realtime/redisbackplane"
)

// privateRedis runs a redis-server of the test's own on addr, with extra
// arguments, and returns a function that kills it by its PID.
func privateRedis(t *testing.T, addr string, extra ...string) (kill func()) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed: apt-get install --no-install-recommends redis-server")
		}
		t.Skip("redis-server is not installed: apt-get install --no-install-recommends redis-server")
	}
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--bind", host, "--port", port, "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", t.TempDir())
	cmd.Args = append(cmd.Args, extra...)
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	kill = func() {
		cmd.Process.Kill()
		<-done
	}
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			kill()
		}
	})
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "redis-server did not start")
	return kill
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// F05 in part: when the broker goes away and comes back, the hub's
// subscriptions come back by themselves and clients are told that a gap
// may exist, then receive again.
func TestBrokerRestartIsReportedAsGap(t *testing.T) {
	addr := freeAddr(t)
	kill := privateRedis(t, addr)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	bp, err := redisbackplane.New(rdb, &redisbackplane.Options{Prefix: "fault"})
	require.NoError(t, err)
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { hub.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/rt/ws", nil)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.Join(ctx, "room")
	require.NoError(t, err)
	_, err = hub.Publish(ctx, "room", []byte(`"before"`))
	require.NoError(t, err)
	ev, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, `"before"`, string(ev.Data))

	kill()
	_, err = hub.Publish(ctx, "room", []byte(`"lost"`))
	assert.Error(t, err, "a publish to a dead broker fails")
	privateRedis(t, addr)

	// The client hears of the gap, and messages flow again.
	var got []string
	require.Eventually(t, func() bool {
		if _, err := hub.Publish(ctx, "room", []byte(`"after"`)); err != nil {
			return false
		}
		for {
			rctx, rcancel := context.WithTimeout(ctx, 100*time.Millisecond)
			ev, err := c.Receive(rctx)
			rcancel()
			if err != nil {
				return false
			}
			got = append(got, ev.Type+":"+string(ev.Data))
			if ev.Type == "message" && string(ev.Data) == `"after"` {
				return true
			}
		}
	}, 30*time.Second, 50*time.Millisecond)
	assert.Contains(t, got, "gap:", fmt.Sprint(got))
	assert.Less(t, indexOf(got, "gap:"), indexOf(got, `message:"after"`), "the gap comes before what follows it")
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
