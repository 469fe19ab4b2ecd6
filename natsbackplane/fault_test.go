package natsbackplane_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
	"github.com/realtimekit/realtime/natsbackplane"
)

// privateNATS runs a nats-server of the test's own with JetStream on addr,
// keeping its store in dir, and returns a function that kills it by its
// PID.
func privateNATS(t *testing.T, addr, dir string) (kill func()) {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		msg := "nats-server is not installed: apt-get install --no-install-recommends nats-server"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "-a", host, "-p", port, "-js", "-sd", dir)
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
	}, 10*time.Second, 20*time.Millisecond, "nats-server did not start")
	return kill
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer is a bytes.Buffer for a logger that several goroutines
// use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func status(t *testing.T, url string) int {
	resp, err := http.Get(url)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// F05: when the broker goes away, publishes fail at once and readiness
// fails; when it comes back, the subscriptions come back by themselves,
// clients are told that a gap may exist, and messages flow again.
func TestBrokerRestartIsReportedAsGap(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	kill := privateNATS(t, addr, dir)
	nc, err := nats.Connect("nats://"+addr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	var logs lockedBuffer
	bp, err := natsbackplane.New(nc, &natsbackplane.Options{
		Prefix: "fault",
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	require.NoError(t, err)
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	mux.Handle("/readyz", hub.ReadyHandler())
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
	require.NoError(t, bp.Health(ctx))
	require.Equal(t, http.StatusOK, status(t, srv.URL+"/readyz"))

	kill()
	require.Eventually(t, func() bool { return !nc.IsConnected() }, 10*time.Second, 10*time.Millisecond)
	start := time.Now()
	_, err = hub.Publish(ctx, "room", []byte(`"lost"`))
	assert.Error(t, err, "a publish to a dead broker fails")
	assert.Less(t, time.Since(start), time.Second, "and fails at once")
	assert.Error(t, bp.Health(ctx))
	assert.Equal(t, http.StatusServiceUnavailable, status(t, srv.URL+"/readyz"))
	gaps := hub.Stats().Gaps

	privateNATS(t, addr, dir)

	// The client hears of the gap, and messages flow again.
	var got []string
	require.Eventually(t, func() bool {
		if _, err := hub.Publish(ctx, "room", []byte(`"after"`)); err != nil {
			return false
		}
		for {
			rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
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
	assert.Greater(t, hub.Stats().Gaps, gaps)
	assert.NoError(t, bp.Health(ctx))
	assert.Equal(t, http.StatusOK, status(t, srv.URL+"/readyz"))
	assert.Contains(t, logs.String(), "nats connection came back")
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}
