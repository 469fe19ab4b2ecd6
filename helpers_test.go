package realtime_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// testHub is a hub behind a real HTTP server on loopback, with every
// transport mounted under /rt/ by NewHandler.
type testHub struct {
	*realtime.Hub
	srv  *httptest.Server
	base string // http:// URL of the mount point, with a trailing slash
	url  string // ws:// URL of the WebSocket endpoint

	// transport is what dial uses unless its options say otherwise.
	transport string

	mu          sync.Mutex
	disconnects map[string]realtime.CloseError
}

// transports are the transports every behaviour test runs over.
var transports = []string{client.WebSocket, client.SSE, client.LongPoll}

// forEachTransport runs f as a parallel subtest per transport.
func forEachTransport(t *testing.T, f func(t *testing.T, transport string)) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			t.Parallel()
			f(t, tr)
		})
	}
}

// newTestHub starts a hub with opts, its transports mounted under /rt/
// (the WebSocket one with ws). Cleanup closes it and the server.
func newTestHub(t testing.TB, opts *realtime.Options, ws *realtime.WebSocketOptions) *testHub {
	t.Helper()
	return newTestHubWith(t, opts, &realtime.HandlerOptions{WebSocket: ws})
}

func newTestHubWith(t testing.TB, opts *realtime.Options, hopts *realtime.HandlerOptions) *testHub {
	t.Helper()
	th := &testHub{disconnects: make(map[string]realtime.CloseError), transport: client.WebSocket}
	var o realtime.Options
	if opts != nil {
		o = *opts
	}
	onDisconnect := o.OnDisconnect
	o.OnDisconnect = func(c *realtime.Conn, reason realtime.CloseError) {
		th.mu.Lock()
		th.disconnects[c.ID()] = reason
		th.mu.Unlock()
		if onDisconnect != nil {
			onDisconnect(c, reason)
		}
	}
	hub, err := realtime.New(&o)
	require.NoError(t, err)
	th.Hub = hub
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, hopts))
	th.srv = httptest.NewServer(mux)
	th.base = th.srv.URL + "/rt/"
	th.url = "ws" + strings.TrimPrefix(th.base, "http") + "ws"
	t.Cleanup(func() {
		require.NoError(t, hub.Close())
		th.srv.Close()
	})
	return th
}

// over returns th dialling with transport by default.
func (th *testHub) over(transport string) *testHub {
	th.transport = transport
	return th
}

// endpoint returns the URL of a transport's endpoint.
func (th *testHub) endpoint(transport string) string {
	switch transport {
	case client.SSE:
		return th.base + "sse"
	case client.LongPoll:
		return th.base + "poll"
	}
	return th.url
}

// disconnect returns why the connection with id ended, once it has.
func (th *testHub) disconnect(id string) (realtime.CloseError, bool) {
	th.mu.Lock()
	defer th.mu.Unlock()
	r, ok := th.disconnects[id]
	return r, ok
}

// dial connects a Go client over th's transport (or the one opts names);
// cleanup closes it.
func (th *testHub) dial(t testing.TB, opts *client.Options) *client.Client {
	t.Helper()
	var o client.Options
	if opts != nil {
		o = *opts
	}
	if o.Transport == "" {
		o.Transport = th.transport
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, th.endpoint(o.Transport), &o)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// dialRaw opens a plain WebSocket speaking the protocol, for tests that
// send frames a well-behaved client would not.
func (th *testHub) dialRaw(t testing.TB) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, th.url, &websocket.DialOptions{
		Subprotocols: []string{realtime.Subprotocol},
	})
	require.NoError(t, err)
	ws.SetReadLimit(1 << 24)
	rc := &rawConn{t: t, ws: ws}
	t.Cleanup(func() { ws.CloseNow() })
	welcome := rc.next()
	require.Equal(t, "welcome", welcome["type"])
	rc.id = welcome["conn"].(string)
	return rc
}

// waitConns waits until the hub has n connections.
func (th *testHub) waitConns(t testing.TB, n int) {
	t.Helper()
	th.waitConnsWithin(t, n, 10*time.Second)
}

func (th *testHub) waitConnsWithin(t testing.TB, n int, d time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { return len(th.Conns()) == n },
		d, 5*time.Millisecond, "want %d connections, have %d; ended: %v", n, len(th.Conns()), th.disconnectReasons())
}

// disconnectReasons counts the reasons connections ended for, so far.
func (th *testHub) disconnectReasons() map[string]int {
	th.mu.Lock()
	defer th.mu.Unlock()
	reasons := make(map[string]int)
	for _, r := range th.disconnects {
		reasons[r.Error()]++
	}
	return reasons
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// receiveType returns the next event of typ, failing on anything else.
func receiveType(t testing.TB, c *client.Client, typ string) client.Event {
	t.Helper()
	ev, err := c.Receive(ctxT(t))
	require.NoError(t, err)
	require.Equal(t, typ, ev.Type, "event %+v", ev)
	return ev
}

// blackhole is a TCP proxy on loopback that can stop forwarding in both
// directions without closing anything: the peers see a half-open
// connection, as when a network path dies.
type blackhole struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	done   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func newBlackhole(t testing.TB, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &blackhole{ln: ln, target: target, done: make(chan struct{})}
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(func() {
		close(b.done)
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }

// freeze stops all forwarding, for good.
func (b *blackhole) freeze() { b.frozen.Store(true) }

func (b *blackhole) accept() {
	defer b.wg.Done()
	for {
		down, err := b.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", b.target)
		if err != nil {
			down.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, down, up)
		b.mu.Unlock()
		b.wg.Add(2)
		go b.pipe(up, down)
		go b.pipe(down, up)
	}
}

func (b *blackhole) pipe(dst, src net.Conn) {
	defer b.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if b.frozen.Load() {
			<-b.done // swallow everything until the test ends
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}
