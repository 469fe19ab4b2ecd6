package realtime_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// flakyBackplane is the in-memory backplane with a health that the test
// switches, as a broker outage would.
type flakyBackplane struct {
	realtime.Backplane
	down atomic.Bool
}

func (b *flakyBackplane) Health(ctx context.Context) error {
	if b.down.Load() {
		return errors.New("broker unreachable")
	}
	return b.Backplane.Health(ctx)
}

func TestReadyHandlerFollowsBackplaneAndShutdown(t *testing.T) {
	bp := &flakyBackplane{Backplane: realtime.NewMemoryBackplane(nil)}
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	require.NoError(t, err)
	ready := hub.ReadyHandler()
	probe := func() (int, string) {
		rec := httptest.NewRecorder()
		ready.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, rec.Body.String()
	}

	code, body := probe()
	assert.Equal(t, http.StatusOK, code, body)
	bp.down.Store(true)
	code, body = probe()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "broker unreachable")
	bp.down.Store(false)
	code, _ = probe()
	assert.Equal(t, http.StatusOK, code)

	require.NoError(t, hub.Shutdown(context.Background()))
	code, body = probe()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "shutting down")
}

func TestStatsCountSlowConsumers(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{QueueMessages: 4, QueueBytes: 1 << 17, MaxMessageSize: 1 << 16}, nil)
	c := th.dialRaw(t)
	c.send(`{"type":"join","id":1,"channel":"room"}`)
	require.Equal(t, "joined", c.next()["type"])
	// The raw client reads nothing more: its queue overflows.
	for i := 0; i < 2000 && th.Stats().SlowConsumers == 0; i++ {
		th.Publish(ctxT(t), "room", make([]byte, 1<<15))
	}
	require.Eventually(t, func() bool { return th.Stats().SlowConsumers == 1 }, 10e9, 5e6)
	assert.Equal(t, 0, th.Stats().Connections)
}

// A write that the client does not take within Options.WriteTimeout ends
// the connection, on every transport: a client that stops reading holds
// no writer for long.
func TestStalledWritesTimeOut(t *testing.T) {
	for _, path := range []string{"ws", "sse"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			th := newTestHub(t, &realtime.Options{WriteTimeout: time.Second, QueueBytes: 64 << 20, QueueMessages: 1 << 16}, nil)
			// A small receive buffer, so that the server's writes stall
			// soon after the client stops reading.
			d := net.Dialer{Control: smallReceiveBuffer}
			conn, err := d.Dial("tcp", strings.TrimPrefix(th.srv.URL, "http://"))
			require.NoError(t, err)
			defer conn.Close()
			// The client asks, then reads nothing: its socket fills up.
			if path == "ws" {
				fmt.Fprintf(conn, "GET /rt/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: %s\r\n\r\n", realtime.Subprotocol)
			} else {
				fmt.Fprintf(conn, "GET /rt/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
			}
			th.waitConns(t, 1)
			c := th.Conns()[0]
			require.NoError(t, c.Join(ctxT(t), "room"))
			big := make([]byte, 32<<10)
			for i := range big {
				big[i] = 'x'
			}
			data := append(append([]byte(`"`), big...), '"')
			start := time.Now()
			for i := 0; i < 400 && len(th.Conns()) == 1; i++ {
				_, err := th.Publish(ctxT(t), "room", data)
				require.NoError(t, err)
			}
			select {
			case <-c.Done():
			case <-time.After(15 * time.Second):
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				for _, g := range strings.Split(string(buf[:n]), "\n\n") {
					if strings.Contains(g, "realtime.(*Conn).write") || strings.Contains(g, "sweepIdle") {
						t.Log(g)
					}
				}
				t.Fatal("a stalled write was not cut off")
			}
			t.Logf("closed after %v: %v", time.Since(start), c.Reason())
			// The cut write or the reader that sees the connection end
			// first names the reason.
			assert.Equal(t, realtime.CloseAbnormal, c.Reason().Code)
		})
	}
}
