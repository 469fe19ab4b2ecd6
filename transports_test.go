package realtime_test

// Tests of the transports' internals: each one states the expected
// behaviour.

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// stallTransport writes the welcome and then stalls every write until its
// context ends, as a WebSocket to a client that stopped reading does.
type stallTransport struct {
	mu     sync.Mutex
	writes int
	closed chan struct{}
	once   sync.Once
}

func newStall() *stallTransport { return &stallTransport{closed: make(chan struct{})} }

func (s *stallTransport) Name() string { return "stall" }

func (s *stallTransport) Write(ctx context.Context, f realtime.Frame) error {
	s.mu.Lock()
	s.writes++
	n := s.writes
	s.mu.Unlock()
	if n == 1 {
		return nil
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-s.closed:
		return net.ErrClosed
	}
}

func (s *stallTransport) Close(realtime.CloseCode, string) error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// Shutdown writes what is queued "each write bounded by
// Options.WriteTimeout": a stalled write must not hold it up much longer
// than WriteTimeout (+1 s sweep), even with a context that never ends.
func TestTransportsShutdownBoundsStalledWrites(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{WriteTimeout: time.Second})
	require.NoError(t, err)
	st := newStall()
	c, err := hub.Connect(st, realtime.ConnInfo{})
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	require.NoError(t, c.Send([]byte(`"x"`))) // this write stalls
	time.Sleep(100 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	err = hub.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown returned %v after %v; reason %v", err, took, c.Reason())
	assert.NoError(t, err, "Shutdown should have ended the stalled write after WriteTimeout")
	assert.Less(t, took, 3*time.Second)
	require.NoError(t, hub.Close())
}

// The same with a real WebSocket client that stops reading.
func TestTransportsShutdownBoundsStalledWebSocket(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{WriteTimeout: 2 * time.Second, QueueBytes: 64 << 20, QueueMessages: 1 << 16}, nil)
	conn := dialSmallRcvBuf(t, th)
	defer conn.Close()
	fmt.Fprintf(conn, "GET /rt/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: %s\r\n\r\n", realtime.Subprotocol)
	th.waitConns(t, 1)
	c := th.Conns()[0]
	require.NoError(t, c.Join(ctxT(t), "room"))
	data := []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
	// Fill the socket buffers (a few MB on loopback) quickly, so that a
	// write stalls but has not timed out yet.
	for i := 0; i < 300; i++ {
		_, err := th.Publish(ctxT(t), "room", data)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()
	start := time.Now()
	err := th.Shutdown(ctx)
	took := time.Since(start)
	t.Logf("Shutdown returned %v after %v; reason %v", err, took, c.Reason())
	assert.NoError(t, err)
	assert.Less(t, took, 4500*time.Millisecond, "WriteTimeout is 2 s")
}

func dialSmallRcvBuf(t *testing.T, th *testHub) net.Conn {
	d := net.Dialer{Control: smallReceiveBuffer}
	conn, err := d.Dial("tcp", strings.TrimPrefix(th.srv.URL, "http://"))
	require.NoError(t, err)
	return conn
}

// readServerFrame reads one unmasked server frame.
func readServerFrame(r *bufio.Reader) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	op = h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err = io.ReadFull(r, e[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err = io.ReadFull(r, e[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return
}

// A client may send its first frames in the same packet as the handshake
// (RFC 6455 allows a client to send as soon as it has sent the request?
// no: but net/http may read bytes past the request; e.g. a client that
// writes handshake and first frame with one write after a 101 was
// predicted). The server must not lose them: smallBuffers promises it
// keeps "What the client sent after its request, already read".
func TestTransportsWebSocketPipelinedFrameAfterHandshake(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(th.srv.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	req := fmt.Sprintf("GET /rt/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: %s\r\n\r\n", realtime.Subprotocol)
	msg := append([]byte(req), clientFrame(true, 0x1, []byte(`{"type":"ping","id":7}`))...)
	_, err = conn.Write(msg) // one write: handshake and first frame
	require.NoError(t, err)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, 101, resp.StatusCode)
	var got []string
	for {
		_, p, err := readServerFrame(br)
		if err != nil {
			break
		}
		got = append(got, string(p))
		if strings.Contains(string(p), `"pong"`) {
			break
		}
	}
	t.Logf("frames: %q", got)
	assert.True(t, strings.Contains(strings.Join(got, ""), `"pong"`), "the pipelined ping was lost")
}

var _ = errors.New

// A WebSocket must outlive the http.Server's WriteTimeout and ReadTimeout,
// as event streams do (net/http leaves its deadlines on a hijacked
// connection; the SSE hijack clears them, smallBuffers does not).
func TestTransportsWebSocketOutlivesServerTimeouts(t *testing.T) {
	t.Parallel()
	for _, which := range []string{"WriteTimeout", "ReadTimeout"} {
		t.Run(which, func(t *testing.T) {
			hub, err := realtime.New(nil)
			require.NoError(t, err)
			mux := http.NewServeMux()
			mux.Handle("/rt/", realtime.NewHandler(hub, nil))
			srv := httptest.NewUnstartedServer(mux)
			if which == "WriteTimeout" {
				srv.Config.WriteTimeout = time.Second
			} else {
				srv.Config.ReadTimeout = time.Second
			}
			srv.Start()
			defer srv.Close()
			defer hub.Close()
			c, err := client.Dial(ctxT(t), "ws"+strings.TrimPrefix(srv.URL, "http")+"/rt/ws", &client.Options{Transport: client.WebSocket})
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Join(ctxT(t), "room")
			require.NoError(t, err)
			time.Sleep(2 * time.Second)
			// The client sends a command and waits for its reply.
			_, err = c.Join(ctxT(t), "room2")
			require.NoError(t, err, "the connection broke after the server's %s", which)
			_, err = hub.Publish(ctxT(t), "room", []byte(`"after"`))
			require.NoError(t, err)
			ev, err := c.Receive(ctxT(t))
			require.NoError(t, err, "the connection broke after the server's %s", which)
			assert.Equal(t, `"after"`, string(ev.Data))
		})
	}
}

// Headers that middleware set travel in the hijacked head as they are:
// net/http would turn CR and LF in a value into spaces; the hijack writes
// them raw, so a value that reflects request input splits the response.
func TestTransportsSSEHijackHeaderInjection(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	defer hub.Close()
	sse := realtime.NewSSEHandler(hub, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// e.g. a tracing middleware echoing a request id from the query
		w.Header().Set("X-Request-Id", r.URL.Query().Get("rid"))
		sse.ServeHTTP(w, r)
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/?rid=" + url.QueryEscape("abc\r\nSet-Cookie: session=attacker"))
	require.NoError(t, err)
	defer resp.Body.Close()
	t.Logf("headers: %v", resp.Header)
	assert.Empty(t, resp.Header.Get("Set-Cookie"), "a header value split the response head")
	// Compare with a plain net/http response.
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", r.URL.Query().Get("rid"))
	}))
	defer srv2.Close()
	resp2, err := http.Get(srv2.URL + "/?rid=" + url.QueryEscape("abc\r\nSet-Cookie: session=attacker"))
	require.NoError(t, err)
	resp2.Body.Close()
	t.Logf("net/http: %v", resp2.Header)
}

// Over HTTP/2 (the ResponseWriter path) a stream whose client stops
// reading is cut within WriteTimeout + ~1 s.
func TestTransportsSSEHTTP2StalledWriteTimesOut(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{WriteTimeout: time.Second, QueueBytes: 64 << 20, QueueMessages: 1 << 16})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	defer hub.Close()
	resp, err := srv.Client().Get(srv.URL + "/rt/sse")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 2, resp.ProtoMajor)
	require.Eventually(t, func() bool { return len(hub.Conns()) == 1 }, 5*time.Second, 5*time.Millisecond)
	c := hub.Conns()[0]
	require.NoError(t, c.Join(ctxT(t), "room"))
	data := []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
	start := time.Now()
	for i := 0; i < 600 && len(hub.Conns()) == 1; i++ {
		_, err := hub.Publish(ctxT(t), "room", data)
		require.NoError(t, err)
	}
	t.Logf("published in %v", time.Since(start))
	select {
	case <-c.Done():
		t.Logf("closed after %v: %v", time.Since(start), c.Reason())
	case <-time.After(10 * time.Second):
		t.Fatal("a stalled HTTP/2 write was not cut off")
	}
}

// SSE through httputil.ReverseProxy, with and without FlushInterval:
// events flow, Last-Event-ID resumes, and a client leaving the proxy ends
// the connection on the hub.
func TestTransportsSSEThroughReverseProxy(t *testing.T) {
	t.Parallel()
	for _, fi := range []time.Duration{0, -1, 100 * time.Millisecond} {
		t.Run(fi.String(), func(t *testing.T) {
			hub, err := realtime.New(nil)
			require.NoError(t, err)
			mux := http.NewServeMux()
			mux.Handle("/rt/", realtime.NewHandler(hub, nil))
			backend := httptest.NewServer(mux)
			defer backend.Close()
			u, _ := url.Parse(backend.URL)
			rp := httputil.NewSingleHostReverseProxy(u)
			rp.FlushInterval = fi
			proxy := httptest.NewServer(rp)
			defer proxy.Close()
			defer hub.Close() // first: streams hold the proxy

			s := openSSE(t, nil, proxy.URL+"/rt/sse", "")
			require.Equal(t, http.StatusAccepted, s.post(`{"type":"join","channel":"room"}`))
			require.Equal(t, "joined", s.next()["type"])
			for i := 0; i < 3; i++ {
				_, err := hub.Publish(ctxT(t), "room", []byte(fmt.Sprint(i)))
				require.NoError(t, err)
				m := s.next()
				require.Equal(t, "message", m["type"])
			}
			last := s.lastID
			s.resp.Body.Close()
			require.Eventually(t, func() bool { return len(hub.Conns()) == 0 }, 5*time.Second, 5*time.Millisecond,
				"the hub still holds the stream after the client left the proxy")
			_, err = hub.Publish(ctxT(t), "room", []byte(`"missed"`))
			require.NoError(t, err)
			s2 := openSSE(t, nil, proxy.URL+"/rt/sse", last)
			j := s2.next()
			require.Equal(t, "joined", j["type"])
			assert.Equal(t, true, j["recovered"])
			assert.Equal(t, "missed", s2.next()["data"])
		})
	}
}

// Hub.Shutdown with 1,000 WebSocket and 1,000 SSE clients: every one gets
// 1001, Shutdown returns, the http.Server's Shutdown returns promptly
// afterwards, and no goroutine is left.
func TestTransportsShutdownManyThenServerShutdown(t *testing.T) {
	const n = 1000
	baseline := runtime.NumGoroutine()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer hub.Close()
	ctx := ctxT(t)
	var clients []*client.Client
	for i := 0; i < 2*n; i++ {
		tr, u := client.WebSocket, srv.URL+"/rt/ws"
		if i%2 == 1 {
			tr, u = client.SSE, srv.URL+"/rt/sse"
		}
		c, err := client.Dial(ctx, u, &client.Options{Transport: tr})
		require.NoError(t, err)
		clients = append(clients, c)
		if i%10 == 0 {
			_, err = c.Join(ctx, fmt.Sprintf("room-%d", i%7))
			require.NoError(t, err)
		}
	}
	start := time.Now()
	require.NoError(t, hub.Shutdown(ctx))
	t.Logf("hub.Shutdown took %v", time.Since(start))
	for _, c := range clients {
		var err error
		for err == nil {
			_, err = c.Receive(ctx)
		}
		require.Equal(t, realtime.CloseGoingAway, realtime.CloseCodeOf(err), "%v", err)
		<-c.Done()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start = time.Now()
	require.NoError(t, srv.Config.Shutdown(sctx))
	t.Logf("http.Server.Shutdown took %v", time.Since(start))
	srv.Close()
	http.DefaultClient.CloseIdleConnections()
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= baseline+5 },
		10*time.Second, 10*time.Millisecond, "goroutines: %d, baseline %d", runtime.NumGoroutine(), baseline)
}

// Frames far larger than the 512 B / 1 KiB buffers, both ways, at the
// 256 KiB limit, and a client frame split into many fragments.
func TestTransportsWebSocketLargeFrames(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{MaxMessageSize: realtime.MaxMessageSizeLimit}, nil)
	rc := th.dialRaw(t)
	rc.send(`{"type":"join","id":1,"channel":"big"}`)
	require.Equal(t, "joined", rc.next()["type"])
	payload := `"` + strings.Repeat("y", realtime.MaxMessageSizeLimit-2) + `"`
	_, err := th.Publish(ctxT(t), "big", []byte(payload))
	require.NoError(t, err)
	m := rc.next()
	require.Equal(t, "message", m["type"])
	assert.Len(t, m["data"], realtime.MaxMessageSizeLimit-2)

	// A client frame just under the limit.
	data := strings.Repeat("z", realtime.MaxMessageSizeLimit-100)
	frame := `{"type":"publish","id":2,"channel":"big","data":"` + data + `"}`
	require.LessOrEqual(t, len(frame), realtime.MaxMessageSizeLimit)
	rc.send(frame)
	for {
		m := rc.next()
		if m["type"] == "ack" {
			break
		}
		require.Equal(t, "message", m["type"], "%v", m["code"])
	}
	m = rc.next()
	assert.Equal(t, "message", m["type"])
	assert.Len(t, m["data"], len(data))

	// Fragmented: 600 fragments of ~400 B.
	ctx := ctxT(t)
	w, err := rc.ws.Writer(ctx, websocket.MessageText)
	require.NoError(t, err)
	frame = `{"type":"publish","id":3,"channel":"big","data":"` + strings.Repeat("f", 240000) + `"}`
	for i := 0; i < len(frame); i += 400 {
		_, err := w.Write([]byte(frame[i:min(i+400, len(frame))]))
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	seen := 0
	for seen < 2 {
		m := rc.next()
		switch m["type"] {
		case "ack", "message":
			seen++
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	// One byte over the limit closes with 1009.
	rc.send(`"` + strings.Repeat("o", realtime.MaxMessageSizeLimit-1) + `"`)
	err = rc.readErr()
	assert.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(err), "%v", err)
}

// A client pipelines a second request right behind its SSE GET: the
// stream must still work (the second request goes unanswered:
// "Connection: close").
func TestTransportsSSEPipelinedRequest(t *testing.T) {
	t.Parallel()
	for _, later := range []bool{false, true} {
		t.Run(fmt.Sprint("later=", later), func(t *testing.T) {
			th := newTestHub(t, nil, nil)
			conn, err := net.Dial("tcp", strings.TrimPrefix(th.srv.URL, "http://"))
			require.NoError(t, err)
			defer conn.Close()
			get := "GET /rt/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
			next := "GET /rt/negotiate HTTP/1.1\r\nHost: x\r\n\r\n"
			if later {
				_, err = conn.Write([]byte(get))
				require.NoError(t, err)
				th.waitConns(t, 1)
				_, err = conn.Write([]byte(next))
			} else {
				_, err = conn.Write([]byte(get + next))
			}
			require.NoError(t, err)
			th.waitConns(t, 1)
			time.Sleep(200 * time.Millisecond)
			require.Len(t, th.Conns(), 1, "the stream ended: %v", th.disconnectReasons())
			require.NoError(t, th.Conns()[0].Send([]byte(`"hi"`)))
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			b, _ := io.ReadAll(conn)
			assert.Contains(t, string(b), `"direct"`)
		})
	}
}

// countTransport counts the messages written to it and checks that
// writes never overlap and never come after Close.
type countTransport struct {
	mu      sync.Mutex
	msgs    int
	inWrite bool
	closed  bool
	bad     []string
}

func (c *countTransport) Name() string { return "count" }
func (c *countTransport) Write(ctx context.Context, f realtime.Frame) error {
	c.mu.Lock()
	if c.inWrite {
		c.bad = append(c.bad, "overlapping writes")
	}
	if c.closed {
		c.bad = append(c.bad, "write after close")
	}
	c.inWrite = true
	c.msgs += strings.Count(string(f.Data), `"type":"direct"`)
	c.mu.Unlock()
	time.Sleep(time.Duration(len(f.Data)%3) * time.Millisecond)
	c.mu.Lock()
	c.inWrite = false
	c.mu.Unlock()
	return nil
}
func (c *countTransport) Close(realtime.CloseCode, string) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

// Messages sent around the writer's idle sweeps are all written: no lost
// wake-up, no second writer.
func TestTransportsNoLostWakeups(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	const conns = 40
	ts := make([]*countTransport, conns)
	cs := make([]*realtime.Conn, conns)
	for i := range ts {
		ts[i] = &countTransport{}
		cs[i], err = hub.Connect(ts[i], realtime.ConnInfo{})
		require.NoError(t, err)
	}
	sent := make([]int, conns)
	var wg sync.WaitGroup
	deadline := time.Now().Add(6 * time.Second)
	for i := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := i
			for time.Now().Before(deadline) {
				r = r*1103515245 + 12345
				pause := time.Duration(uint(r)%1300) * time.Millisecond
				if r%3 == 0 {
					pause = time.Duration(uint(r)%5) * time.Millisecond
				}
				time.Sleep(pause)
				for k := 0; k < 1+int(uint(r)%4); k++ {
					require.NoError(t, cs[i].Send([]byte(`1`)))
					sent[i]++
				}
			}
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		for i, tr := range ts {
			tr.mu.Lock()
			n := tr.msgs
			tr.mu.Unlock()
			if n != sent[i] {
				return false
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond)
	for i, tr := range ts {
		tr.mu.Lock()
		assert.Equal(t, sent[i], tr.msgs, "conn %d", i)
		assert.Empty(t, tr.bad)
		tr.mu.Unlock()
	}
	// Graceful close flushes.
	for i, c := range cs {
		for k := 0; k < 50; k++ {
			require.NoError(t, c.Send([]byte(`2`)))
			sent[i]++
		}
		c.Close(realtime.CloseNormal, "")
	}
	for i, c := range cs {
		<-c.Done()
		assert.Equal(t, sent[i], ts[i].msgs, "graceful close lost messages on conn %d", i)
		assert.Empty(t, ts[i].bad)
	}
	require.NoError(t, hub.Close())
}

// HTTP/2 streams outlive the server's WriteTimeout and get heartbeats.
func TestTransportsSSEHTTP2OutlivesWriteTimeout(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, &realtime.HandlerOptions{
		SSE: &realtime.SSEOptions{Heartbeat: 250 * time.Millisecond}}))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.Config.WriteTimeout = time.Second
	srv.StartTLS()
	defer srv.Close()
	defer hub.Close()
	s := openSSE(t, srv.Client(), srv.URL+"/rt/sse", "")
	require.Equal(t, 2, s.resp.ProtoMajor)
	beats := 0
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		line, err := s.r.ReadString('\n')
		require.NoError(t, err, "after %d heartbeats", beats)
		if line == ": ping\n" {
			beats++
		}
	}
	assert.GreaterOrEqual(t, beats, 9)
	require.Equal(t, http.StatusAccepted, postCommandClient(t, srv.Client(), s.url, s.session, `{"type":"ping","id":1}`))
	assert.Equal(t, "pong", s.next()["type"])
}

func postCommandClient(t testing.TB, hc *http.Client, url, session, frame string) int {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(frame))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(realtime.SessionHeader, session)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// A hook on the reading goroutine (OnMessage) closes its own connection
// and waits for it to end, as a "log out everywhere" command would. Over
// SSE and long-poll this works; over WebSocket the transport's Close now
// waits for the reader, which is the goroutine waiting: a deadlock that
// also hangs Hub.Close.
func TestTransportsHookWaitsForOwnConnDone(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			waited := make(chan time.Duration, 1)
			th := newTestHub(t, &realtime.Options{
				OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
					start := time.Now()
					c.Close(realtime.CloseNormal, "logged out")
					select {
					case <-c.Done():
						waited <- time.Since(start)
					case <-time.After(5 * time.Second):
						waited <- -1
					}
					return nil
				},
			}, nil).over(tr)
			cl := th.dial(t, nil)
			go cl.Send(context.Background(), []byte(`"logout"`))
			d := <-waited
			assert.NotEqual(t, time.Duration(-1), d, "the connection never ended while its hook waited")
			t.Logf("waited %v", d)
		})
	}
}

// Graceful close of a stalled connection ends within WriteTimeout+1s; a
// CloseNow cuts it short at once; Shutdown's context expiring and Close
// then return promptly.
func TestTransportsStalledCloseVariants(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{WriteTimeout: time.Second})
	require.NoError(t, err)
	mk := func() *realtime.Conn {
		c, err := hub.Connect(newStall(), realtime.ConnInfo{})
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		require.NoError(t, c.Send([]byte(`"x"`)))
		time.Sleep(20 * time.Millisecond)
		return c
	}
	a, b := mk(), mk()
	start := time.Now()
	a.Close(realtime.CloseNormal, "")
	b.Close(realtime.CloseNormal, "")
	time.Sleep(100 * time.Millisecond)
	b.CloseNow(realtime.CloseAbnormal, "gone")
	select {
	case <-b.Done():
		assert.Less(t, time.Since(start), 500*time.Millisecond)
	case <-time.After(3 * time.Second):
		t.Fatal("CloseNow did not cut a graceful close short")
	}
	select {
	case <-a.Done():
		assert.Less(t, time.Since(start), 2500*time.Millisecond)
		t.Logf("graceful close of a stalled conn took %v: %v", time.Since(start), a.Reason())
	case <-time.After(4 * time.Second):
		t.Fatal("graceful close of a stalled conn never ended")
	}
	mk()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, hub.Shutdown(ctx), context.DeadlineExceeded)
	start = time.Now()
	require.NoError(t, hub.Close())
	assert.Less(t, time.Since(start), time.Second)
}

// Close handshakes both ways complete quickly, with the right codes.
func TestTransportsWebSocketCloseHandshakes(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	rc := th.dialRaw(t)
	start := time.Now()
	require.NoError(t, rc.ws.Close(4000, "client bye"))
	assert.Less(t, time.Since(start), time.Second, "client close handshake slow")
	require.Eventually(t, func() bool { _, ok := th.disconnect(rc.id); return ok }, 3*time.Second, 5*time.Millisecond)
	r, _ := th.disconnect(rc.id)
	assert.Equal(t, realtime.CloseCode(4000), r.Code)

	rc2 := th.dialRaw(t)
	c := th.Conn(rc2.id)
	for i := 0; i < 100; i++ {
		require.NoError(t, c.Send([]byte(fmt.Sprint(i))))
	}
	start = time.Now()
	c.Close(realtime.CloseDisconnected, "server bye")
	n := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, p, err := rc2.ws.Read(ctx)
		cancel()
		if err != nil {
			assert.Equal(t, websocket.StatusCode(realtime.CloseDisconnected), websocket.CloseStatus(err), "%v", err)
			break
		}
		n += strings.Count(string(p), `"direct"`)
	}
	assert.Equal(t, 100, n)
	select {
	case <-c.Done():
		assert.Less(t, time.Since(start), time.Second)
	case <-time.After(6 * time.Second):
		t.Fatal("server close did not finish")
	}
}

// gzipWriter is a compression middleware's writer.
type gzipWriter struct {
	http.ResponseWriter
	gz *gzip.Writer
}

func (g *gzipWriter) Write(p []byte) (int, error) { return g.gz.Write(p) }
func (g *gzipWriter) Flush() {
	g.gz.Flush()
	http.NewResponseController(g.ResponseWriter).Flush()
}

type gzipUnwrap struct{ *gzipWriter }

func (g gzipUnwrap) Unwrap() http.ResponseWriter { return g.ResponseWriter }

func gzipMiddleware(h http.Handler, unwrap bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		gw := &gzipWriter{ResponseWriter: w, gz: gzip.NewWriter(w)}
		defer gw.gz.Close()
		if unwrap {
			h.ServeHTTP(gzipUnwrap{gw}, r)
		} else {
			h.ServeHTTP(gw, r)
		}
	})
}

func TestTransportsSSEThroughGzip(t *testing.T) {
	t.Parallel()
	for _, unwrap := range []bool{true, false} {
		t.Run(fmt.Sprint("unwrap=", unwrap), func(t *testing.T) {
			hub, err := realtime.New(nil)
			require.NoError(t, err)
			srv := httptest.NewServer(gzipMiddleware(realtime.NewSSEHandler(hub, nil), unwrap))
			defer srv.Close()
			defer hub.Close()
			req, _ := http.NewRequest("GET", srv.URL, nil)
			req.Header.Set("Accept-Encoding", "gzip")
			resp, err := http.DefaultTransport.RoundTrip(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, 200, resp.StatusCode)
			t.Logf("Content-Encoding=%q proto=%s close=%v", resp.Header.Get("Content-Encoding"), resp.Proto, resp.Close)
			var body io.Reader = resp.Body
			if resp.Header.Get("Content-Encoding") == "gzip" {
				zr, err := gzip.NewReader(resp.Body)
				require.NoError(t, err)
				body = zr
			}
			br := bufio.NewReader(body)
			for {
				line, err := br.ReadString('\n')
				require.NoError(t, err)
				if strings.Contains(line, `"welcome"`) {
					break
				}
			}
		})
	}
}

// An idle WebSocket connection that answers pings keeps its reader
// waiting outside the WebSocket library, with the smallest stack: pongs
// are taken off the socket without entering the library, which would
// wait inside for the next message.
func TestTransportsWebSocketIdleReaderStaysShallow(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" || runtime.GOOS == "js" || runtime.GOOS == "wasip1" {
		t.Skip("the reader waits in the WebSocket library where sockets cannot be peeked")
	}
	// Not parallel: it counts the goroutines of every hub in the process.
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: 20 * time.Millisecond, PongTimeout: 5 * time.Second})
	const n = 10
	for range n {
		c := th.dial(t, nil)
		_, err := c.Join(ctxT(t), "room")
		require.NoError(t, err)
	}
	th.waitConns(t, n)
	time.Sleep(300 * time.Millisecond) // some fifteen pings each

	readers := func() (waiting, inside int) {
		var buf strings.Builder
		pprof.Lookup("goroutine").WriteTo(&buf, 2)
		for _, stack := range strings.Split(buf.String(), "\n\n") {
			if !strings.Contains(stack, "realtime.(*wsHandler).read(") {
				continue
			}
			if strings.Contains(stack, "realtime.awaitReadable(") {
				waiting++
			} else {
				inside++
			}
		}
		return waiting, inside
	}
	var w, in int
	require.Eventually(t, func() bool {
		w, in = readers()
		return w == n && in == 0
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, n, w, "readers waiting outside the library")
	assert.Zero(t, in, "readers elsewhere")
	assert.Len(t, th.Conns(), n, "every client answered its pings")
}
