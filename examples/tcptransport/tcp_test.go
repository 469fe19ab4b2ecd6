package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

func TestTCPAndWebSocketShareAChannel(t *testing.T) {
	t.Parallel()
	httpAddr, tcpAddr, _ := startApp(t)
	ctx := testContext(t)

	tc := helloTCP(t, tcpAddr, "ann")
	tc.send(`{"type":"join","id":1,"channel":"lobby"}`)
	joined := tc.next()
	assert.Equal(t, "joined", joined.Type)
	assert.Equal(t, uint64(1), joined.ID)
	assert.Equal(t, "lobby", joined.Channel)

	ws, err := client.Dial(ctx, "ws://"+httpAddr+"/realtime/ws", nil)
	require.NoError(t, err)
	t.Cleanup(func() { ws.Close() })
	_, err = ws.Join(ctx, "lobby")
	require.NoError(t, err)

	// WebSocket to TCP.
	_, err = ws.Publish(ctx, "lobby", []byte(`{"from":"ws"}`))
	require.NoError(t, err)
	m := tc.next()
	assert.Equal(t, "message", m.Type)
	assert.Equal(t, "lobby", m.Channel)
	assert.Equal(t, `{"from":"ws"}`, string(m.Data))
	assert.Equal(t, `{"from":"ws"}`, string(nextMessage(t, ws).Data))

	// TCP to WebSocket. The ack and the TCP client's own copy of the
	// message may come in either order.
	tc.send(`{"type":"publish","id":2,"channel":"lobby","data":{"from":"tcp"}}`)
	got := map[string]msg{}
	for range 2 {
		m := tc.next()
		got[m.Type] = m
	}
	assert.Equal(t, uint64(2), got["ack"].ID)
	assert.Equal(t, `{"from":"tcp"}`, string(got["message"].Data))
	ev := nextMessage(t, ws)
	assert.Equal(t, "lobby", ev.Channel)
	assert.Equal(t, `{"from":"tcp"}`, string(ev.Data))
}

func TestTCPBadInputKeepsTheConnection(t *testing.T) {
	t.Parallel()
	_, tcpAddr, _ := startApp(t)
	tc := helloTCP(t, tcpAddr, "ann")

	tc.send(`{not json`)
	m := tc.next()
	assert.Equal(t, "error", m.Type)
	assert.Equal(t, `"bad_frame"`, string(m.Code))

	tc.send(`{"type":"nope","id":4}`)
	m = tc.next()
	assert.Equal(t, "error", m.Type)
	assert.Equal(t, `"unknown_type"`, string(m.Code))
	assert.Equal(t, uint64(4), m.ID)

	// Blank lines are skipped; a trailing CR, as terminals send, is fine.
	tc.send("")
	tc.send("  ")
	tc.send("{\"type\":\"ping\",\"id\":5}\r")
	m = tc.next()
	assert.Equal(t, "pong", m.Type)
	assert.Equal(t, uint64(5), m.ID)
}

func TestTCPLineTooLong(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		size int
	}{
		// Longer than the reader's buffer: the scanner stops.
		{"beyond the buffer", 100 << 10},
		// One byte over the hub's limit: the line fits the reader, and
		// Conn.Receive refuses it.
		{"one byte over", 64<<10 + 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, tcpAddr, _ := startApp(t)
			c := helloTCP(t, tcpAddr, "ann")

			// The server stops reading the line halfway, so the write
			// runs beside the reads.
			written := make(chan error, 1)
			go func() {
				c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, err := c.nc.Write(append(bytes.Repeat([]byte("x"), tc.size), '\n'))
				written <- err
			}()
			m := c.expectClose(realtime.CloseTooLarge)
			assert.Contains(t, m.Reason, "limit")
			require.NoError(t, <-written)
		})
	}
}

func TestTCPHelloRefused(t *testing.T) {
	t.Parallel()
	_, tcpAddr, _ := startApp(t)
	tests := []struct {
		name  string
		hello string
		code  realtime.CloseCode
	}{
		{"not JSON", "hello", realtime.ClosePolicyViolation},
		{"not a hello", `{"type":"join","channel":"lobby"}`, realtime.ClosePolicyViolation},
		{"bad name", `{"type":"hello","user":"a b"}`, realtime.ClosePolicyViolation},
		{"too long", strings.Repeat("x", 70<<10), realtime.CloseTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialTCP(t, tcpAddr)
			written := make(chan error, 1)
			go func() {
				c.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, err := io.WriteString(c.nc, tc.hello+"\n")
				written <- err
			}()
			m := c.expectClose(tc.code)
			assert.NotEmpty(t, m.Reason)
			require.NoError(t, <-written)
		})
	}
}

func TestTCPHelloTimeout(t *testing.T) {
	t.Parallel()
	hub := newHub(t, nil)
	srv, err := NewServer(hub, &Options{
		HelloTimeout: 50 * time.Millisecond,
		Authenticate: authenticateHello,
	})
	require.NoError(t, err)
	addr := serveTCP(t, srv)

	c := dialTCP(t, addr)
	m := c.expectClose(realtime.ClosePolicyViolation)
	assert.Equal(t, "no hello line in time", m.Reason)
}

func TestTCPClientHalfClose(t *testing.T) {
	t.Parallel()
	_, tcpAddr, _ := startApp(t)
	c := helloTCP(t, tcpAddr, "ann")

	// A client that sends its commands and closes its side still reads
	// the answers, then a normal close.
	c.send(`{"type":"ping","id":1}`)
	require.NoError(t, c.nc.(*net.TCPConn).CloseWrite())
	m := c.next()
	assert.Equal(t, "pong", m.Type)
	assert.Equal(t, uint64(1), m.ID)
	c.expectClose(realtime.CloseNormal)
}

func TestShutdownClosesEveryClientWithGoingAway(t *testing.T) {
	t.Parallel()
	httpAddr, tcpAddr, stop := startApp(t)
	ctx := testContext(t)

	tc := helloTCP(t, tcpAddr, "ann")
	tc.send(`{"type":"join","id":1,"channel":"lobby"}`)
	assert.Equal(t, "joined", tc.next().Type)
	ws, err := client.Dial(ctx, "ws://"+httpAddr+"/realtime/ws", nil)
	require.NoError(t, err)
	t.Cleanup(func() { ws.Close() })

	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()

	m := tc.expectClose(realtime.CloseGoingAway)
	assert.Equal(t, "server shutting down", m.Reason)
	require.NoError(t, tc.nc.Close())
	_, err = ws.Receive(ctx)
	assert.Equal(t, realtime.CloseGoingAway, realtime.CloseCodeOf(err), "%v", err)
	require.NoError(t, <-stopped)

	_, err = net.Dial("tcp", tcpAddr)
	assert.Error(t, err, "the listener is closed")
}

func TestServerShutdownLeavesTheHubRunning(t *testing.T) {
	t.Parallel()
	hub := newHub(t, nil)
	srv, err := NewServer(hub, nil)
	require.NoError(t, err)
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	c := dialTCP(t, ln.Addr().String())
	assert.Equal(t, "welcome", c.next().Type)
	c.send(`{"type":"join","id":1,"channel":"news"}`)
	assert.Equal(t, "joined", c.next().Type)

	ctx := testContext(t)
	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.Shutdown(ctx) }()
	c.expectClose(realtime.CloseGoingAway)
	require.NoError(t, c.nc.Close())
	require.NoError(t, <-shutdown)
	assert.ErrorIs(t, <-served, ErrServerClosed)

	assert.ErrorIs(t, srv.Serve(listen(t)), ErrServerClosed)
	assert.NoError(t, srv.Shutdown(ctx), "again")
	assert.Empty(t, hub.Members("news"))
	_, err = hub.Publish(ctx, "news", []byte(`"still here"`))
	assert.NoError(t, err)
}

func TestServerCloseCutsConnections(t *testing.T) {
	t.Parallel()
	reasons := make(chan realtime.CloseError, 1)
	hub := newHub(t, &realtime.Options{
		OnDisconnect: func(c *realtime.Conn, reason realtime.CloseError) { reasons <- reason },
	})
	srv, err := NewServer(hub, &Options{Authenticate: authenticateHello})
	require.NoError(t, err)
	addr := serveTCP(t, srv)

	connected := helloTCP(t, addr, "ann")
	inHello := dialTCP(t, addr)
	// The server has accepted the second client once it answers the
	// first after it.
	connected.send(`{"type":"ping","id":1}`)
	assert.Equal(t, "pong", connected.next().Type)
	require.Eventually(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.sessions) == 2
	}, 10*time.Second, time.Millisecond)

	require.NoError(t, srv.Close())
	for _, c := range []*tcpClient{connected, inHello} {
		line, err := c.line()
		assert.Error(t, err)
		assert.Empty(t, line, "the connection ends without a close line")
	}
	assert.Equal(t, realtime.CloseGoingAway, (<-reasons).Code)
	// Conn.Done is closed just before the hub forgets the connection.
	assert.Eventually(t, func() bool { return len(hub.Conns()) == 0 },
		10*time.Second, time.Millisecond)
}

func TestServerAnonymousClients(t *testing.T) {
	t.Parallel()
	ids := make(chan realtime.Identity, 1)
	hub := newHub(t, &realtime.Options{
		OnConnect: func(c *realtime.Conn) { ids <- c.Identity() },
	})
	srv, err := NewServer(hub, nil)
	require.NoError(t, err)
	addr := serveTCP(t, srv)

	// Without Authenticate, the welcome comes at once.
	c := dialTCP(t, addr)
	m := c.next()
	assert.Equal(t, "welcome", m.Type)
	assert.Equal(t, hub.MaxMessageSize(), m.MaxMessageSize)
	id := <-ids
	assert.Empty(t, id.UserID)
	require.Implements(t, (*net.Addr)(nil), id.Data)
	assert.Equal(t, c.nc.LocalAddr().String(), id.Data.(net.Addr).String())
}

func TestPageAndHandlerAreServed(t *testing.T) {
	t.Parallel()
	httpAddr, _, _ := startApp(t)
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)

	for path, want := range map[string]string{
		"/":                     "/realtime/realtime.js",
		"/realtime/negotiate":   `"websocket"`,
		"/realtime/realtime.js": "export function connect",
	} {
		resp, err := hc.Get("http://" + httpAddr + path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}
}

func TestTransport(t *testing.T) {
	t.Parallel()
	frame := realtime.Frame{Data: []byte(`[{"type":"pong"}]`)}

	t.Run("writes a frame and a close line", func(t *testing.T) {
		t.Parallel()
		tr, peer := pipeTransport(t)
		read := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(peer)
			read <- b
		}()
		require.NoError(t, tr.Write(testContext(t), frame))
		require.NoError(t, tr.Close(realtime.CloseDisconnected, "bye \"you\"\n"))
		assert.Equal(t, `[{"type":"pong"}]`+"\n"+
			`[{"type":"close","code":4001,"reason":"bye \"you\"\n"}]`+"\n", string(<-read))
		assert.NoError(t, tr.Close(realtime.CloseNormal, "again"))
	})

	t.Run("close cuts a write in progress", func(t *testing.T) {
		t.Parallel()
		tr, peer := pipeTransport(t)
		written := make(chan error, 1)
		go func() { written <- tr.Write(context.Background(), frame) }()
		// One byte read means the write has started; nobody reads more.
		_, err := io.ReadFull(peer, make([]byte, 1))
		require.NoError(t, err)
		assert.Error(t, tr.Close(realtime.CloseGoingAway, "bye"), "no room for the close line")
		assert.Error(t, <-written)
	})

	t.Run("a write ends with its context", func(t *testing.T) {
		t.Parallel()
		tr, peer := pipeTransport(t)
		ctx, cancel := context.WithCancel(context.Background())
		written := make(chan error, 1)
		go func() { written <- tr.Write(ctx, frame) }()
		_, err := io.ReadFull(peer, make([]byte, 1))
		require.NoError(t, err)
		cancel()
		assert.ErrorIs(t, <-written, os.ErrDeadlineExceeded)
	})

	t.Run("a write ends at its deadline", func(t *testing.T) {
		t.Parallel()
		tr, _ := pipeTransport(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		assert.ErrorIs(t, tr.Write(ctx, frame), os.ErrDeadlineExceeded)
	})

	t.Run("a write after close fails", func(t *testing.T) {
		t.Parallel()
		tr, _ := pipeTransport(t)
		require.NoError(t, tr.Close(realtime.CloseAbnormal, "gone"))
		assert.ErrorIs(t, tr.Write(testContext(t), frame), net.ErrClosed)
	})

	t.Run("a frame with a line break is refused", func(t *testing.T) {
		t.Parallel()
		tr, _ := pipeTransport(t)
		err := tr.Write(testContext(t), realtime.Frame{Data: []byte("[{\"type\":\n\"pong\"}]")})
		assert.Equal(t, realtime.CloseInternal, realtime.CloseCodeOf(err))
	})
}

// msg is one server message, with the fields the tests look at.
type msg struct {
	Type    string          `json:"type"`
	ID      uint64          `json:"id"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	// Code is a string in errors and a number in close messages.
	Code           json.RawMessage `json:"code"`
	Reason         string          `json:"reason"`
	Message        string          `json:"message"`
	MaxMessageSize int             `json:"maxMessageSize"`
}

// tcpClient is a test's end of a TCP connection to a Server.
type tcpClient struct {
	t       *testing.T
	nc      net.Conn
	r       *bufio.Reader
	pending []msg // the rest of the last frame read
}

func dialTCP(t *testing.T, addr string) *tcpClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return &tcpClient{t: t, nc: nc, r: bufio.NewReader(nc)}
}

// helloTCP connects to the example's TCP server as user and reads the
// welcome.
func helloTCP(t *testing.T, addr, user string) *tcpClient {
	t.Helper()
	c := dialTCP(t, addr)
	c.send(`{"type":"hello","user":"` + user + `"}`)
	m := c.next()
	require.Equal(t, "welcome", m.Type)
	return c
}

func (c *tcpClient) send(line string) {
	c.t.Helper()
	require.NoError(c.t, c.nc.SetWriteDeadline(time.Now().Add(10*time.Second)))
	_, err := io.WriteString(c.nc, line+"\n")
	require.NoError(c.t, err)
}

// line reads the next line from the server, with its line break.
func (c *tcpClient) line() ([]byte, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	return c.r.ReadBytes('\n')
}

// next returns the next message from the server, frame after frame.
func (c *tcpClient) next() msg {
	c.t.Helper()
	for len(c.pending) == 0 {
		line, err := c.line()
		require.NoError(c.t, err)
		var frame []msg
		require.NoError(c.t, json.Unmarshal(line, &frame), "%q", line)
		require.NotEmpty(c.t, frame)
		c.pending = frame
	}
	m := c.pending[0]
	c.pending = c.pending[1:]
	return m
}

// expectClose checks that the connection ends with a close message with
// code, alone in the last line, and returns it.
func (c *tcpClient) expectClose(code realtime.CloseCode) msg {
	c.t.Helper()
	m := c.next()
	require.Equal(c.t, "close", m.Type, "%+v", m)
	var got realtime.CloseCode
	require.NoError(c.t, json.Unmarshal(m.Code, &got))
	assert.Equal(c.t, code, got, m.Reason)
	assert.Empty(c.t, c.pending)
	_, err := c.line()
	assert.ErrorIs(c.t, err, io.EOF, "the close line is the last")
	return m
}

// startApp runs the example's app on loopback ports until the test ends.
// stop shuts it down and returns what it returned.
func startApp(t *testing.T) (httpAddr, tcpAddr string, stop func() error) {
	t.Helper()
	a, err := newApp(testLogger(t))
	require.NoError(t, err)
	httpLn, tcpLn := listen(t), listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.serve(ctx, httpLn, tcpLn) }()

	var once sync.Once
	var result error
	stop = func() error {
		once.Do(func() {
			cancel()
			result = <-served
		})
		return result
	}
	t.Cleanup(func() { assert.NoError(t, stop()) })
	return httpLn.Addr().String(), tcpLn.Addr().String(), stop
}

// serveTCP serves srv on a loopback port until the test ends.
func serveTCP(t *testing.T, srv *Server) string {
	t.Helper()
	ln := listen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		assert.NoError(t, srv.Close())
		assert.ErrorIs(t, <-served, ErrServerClosed)
	})
	return ln.Addr().String()
}

func newHub(t *testing.T, opts *realtime.Options) *realtime.Hub {
	t.Helper()
	if opts == nil {
		opts = &realtime.Options{}
	}
	opts.Logger = testLogger(t)
	hub, err := realtime.New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { hub.Close() })
	return hub
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// pipeTransport returns a transport on one end of an in-memory pipe, and
// the other end.
func pipeTransport(t *testing.T) (*transport, net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() {
		a.Close()
		b.Close()
	})
	return newTransport(a, 100*time.Millisecond), b
}

// nextMessage returns the next event of a WebSocket client, which must
// be a channel message.
func nextMessage(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	ev, err := c.Receive(testContext(t))
	require.NoError(t, err)
	require.Equal(t, "message", ev.Type, "%+v", ev)
	return ev
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testLogger shows warnings and errors in the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}
