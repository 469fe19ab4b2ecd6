//go:build linux

package realtime

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A hijacked event stream asks the kernel to end it when its heartbeats
// go unacknowledged, so that a half-open stream is found in seconds.
func TestSSEStreamHasAUserTimeout(t *testing.T) {
	hub, err := New(nil)
	require.NoError(t, err)
	defer hub.Close()
	var mu sync.Mutex
	var conns []net.Conn
	srv := httptest.NewUnstartedServer(NewSSEHandler(hub, &SSEOptions{Heartbeat: 15 * time.Second}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Eventually(t, func() bool { return len(hub.Conns()) == 1 }, 5*time.Second, 5*time.Millisecond)

	mu.Lock()
	c := conns[0]
	mu.Unlock()
	raw, err := c.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var ms int
	raw.Control(func(fd uintptr) {
		ms, err = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout)
	})
	require.NoError(t, err)
	assert.Equal(t, 30000, ms, "twice the heartbeat")
}
