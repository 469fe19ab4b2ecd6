package realtime_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// strictWS is a hand-made WebSocket client over a raw connection: it
// writes frames byte by byte as a test wants them, and checks every
// frame the server sends against RFC 6455.
type strictWS struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// upgradeRequest is a WebSocket handshake for the endpoint at path.
func upgradeRequest(path string) []byte {
	return []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: %s\r\n\r\n",
		path, realtime.Subprotocol))
}

// dialStrict connects to th's WebSocket endpoint over conn, writing the
// handshake followed by early, each in the pieces split gives.
func dialStrict(t testing.TB, conn net.Conn, early []byte, split func([]byte) [][]byte) *strictWS {
	t.Helper()
	t.Cleanup(func() { conn.Close() })
	msg := append(upgradeRequest("/rt/ws"), early...)
	if split == nil {
		split = func(b []byte) [][]byte { return [][]byte{b} }
	}
	for _, p := range split(msg) {
		_, err := conn.Write(p)
		require.NoError(t, err)
	}
	c := &strictWS{t: t, conn: conn, br: bufio.NewReader(conn)}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	return c
}

// clientFrame is a masked frame; fin false makes a fragment.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

func (c *strictWS) write(b []byte) {
	c.t.Helper()
	_, err := c.conn.Write(b)
	require.NoError(c.t, err)
}

// frame reads one server frame and checks that it is well formed.
func (c *strictWS) frame() (op byte, payload []byte, err error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [2]byte
	if _, err = io.ReadFull(c.br, h[:]); err != nil {
		return
	}
	op = h[0] & 0x0f
	if h[0]&0x70 != 0 {
		return op, nil, fmt.Errorf("reserved bits set: %#x", h[0])
	}
	if h[1]&0x80 != 0 {
		return op, nil, fmt.Errorf("server frame masked")
	}
	switch op {
	case 0x1, 0x2:
	case 0x8, 0x9, 0xa:
		if h[0]&0x80 == 0 || h[1]&0x7f > 125 {
			return op, nil, fmt.Errorf("bad control frame %#x %#x", h[0], h[1])
		}
	default:
		return op, nil, fmt.Errorf("unexpected opcode %#x", op)
	}
	if h[0]&0x80 == 0 {
		return op, nil, fmt.Errorf("server fragmented a message")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err = io.ReadFull(c.br, e[:]); err != nil {
			return
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
		if n < 126 {
			return op, nil, fmt.Errorf("non-minimal length %d", n)
		}
	case 127:
		var e [8]byte
		if _, err = io.ReadFull(c.br, e[:]); err != nil {
			return
		}
		n = binary.BigEndian.Uint64(e[:])
		if n < 1<<16 || n>>63 != 0 {
			return op, nil, fmt.Errorf("bad 8-byte length %d", n)
		}
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.br, payload)
	if err == nil && op == 0x1 {
		var v []map[string]any
		if jerr := json.Unmarshal(payload, &v); jerr != nil {
			err = fmt.Errorf("text frame is no JSON array: %w: %.80q", jerr, payload)
		}
	}
	return
}

// until reads frames until one is a text frame containing want, and
// returns the pings seen on the way; it answers none of them.
func (c *strictWS) until(want string) (pings int, pongs [][]byte) {
	c.t.Helper()
	for {
		op, p, err := c.frame()
		require.NoError(c.t, err)
		switch op {
		case 0x9:
			pings++
		case 0xa:
			pongs = append(pongs, p)
		case 0x8:
			c.t.Fatalf("closed while waiting for %s: %q", want, p)
		case 0x1:
			if strings.Contains(string(p), want) {
				return
			}
		}
	}
}

func tcpAddr(th *testHub) string { return strings.TrimPrefix(th.srv.URL, "http://") }

// Frames split at every byte boundary, the first ones pipelined with the
// upgrade request, with control frames between the fragments of a
// message: the server reads them all, answers the client's ping with its
// payload, and takes no pong for data.
func TestWebSocketSplitFramesAndInterleavedControl(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	pongPayload := bytes.Repeat([]byte{'p'}, 125)
	var stream []byte
	stream = append(stream, clientFrame(true, 0xa, pongPayload)...)            // unsolicited pong
	stream = append(stream, clientFrame(false, 0x1, []byte(`[{"type":"p`))...) // first fragment
	stream = append(stream, clientFrame(true, 0xa, nil)...)                    // pong between fragments
	stream = append(stream, clientFrame(true, 0x9, []byte("hello"))...)        // ping between fragments
	stream = append(stream, clientFrame(false, 0x0, []byte(`ing","id":`))...)
	stream = append(stream, clientFrame(true, 0xa, pongPayload[:7])...)
	stream = append(stream, clientFrame(true, 0x0, []byte(`1}]`))...)
	stream = append(stream, clientFrame(true, 0x1, []byte(`{"type":"ping","id":2}`))...)

	for _, cut := range []int{0, 1, 2, 3, 7, 50, 131, 140} {
		t.Run(fmt.Sprint("cut", cut), func(t *testing.T) {
			conn, err := net.Dial("tcp", tcpAddr(th))
			require.NoError(t, err)
			// Pipeline the first cut bytes with the request, then the rest
			// one byte at a time, pausing now and then so that pieces
			// arrive as separate segments.
			c := dialStrict(t, conn, stream[:cut], nil)
			go func() {
				for i := cut; i < len(stream); i++ {
					if _, err := conn.Write(stream[i : i+1]); err != nil {
						return
					}
					if i%9 == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()
			_, pongs := c.until(`"id":1`)
			_, more := c.until(`"id":2`)
			pongs = append(pongs, more...)
			require.Equal(t, [][]byte{[]byte("hello")}, pongs)
		})
	}
}

// A pong whose frame arrives in two TCP segments, while the reader
// waits between messages, is taken whole, and reading goes on.
func TestWebSocketPongInTwoSegments(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: 50 * time.Millisecond, PongTimeout: 2 * time.Second})
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	pong := clientFrame(true, 0xa, bytes.Repeat([]byte{'x'}, 125))
	for i := 0; i < 5; i++ {
		cut := 1 + i*31
		c.write(pong[:cut])
		time.Sleep(20 * time.Millisecond)
		c.write(pong[cut:])
		time.Sleep(20 * time.Millisecond)
	}
	c.write(clientFrame(true, 0x1, []byte(`{"type":"ping","id":9}`)))
	pings, _ := c.until(`"id":9`)
	_ = pings
}

// A client that reads but never answers pings is dropped with
// ClosePingTimeout after about PingInterval+PongTimeout.
func TestWebSocketSilentClientDropped(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	start := time.Now()
	c := dialStrict(t, conn, nil, nil)
	var id string
	for id == "" {
		op, p, err := c.frame()
		require.NoError(t, err)
		if op == 0x1 {
			var m []map[string]any
			require.NoError(t, json.Unmarshal(p, &m))
			id, _ = m[0]["conn"].(string)
		}
	}
	th.waitConnsWithin(t, 0, 3*time.Second)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	reason, ok := th.disconnect(id)
	require.True(t, ok)
	assert.Equal(t, realtime.ClosePingTimeout, reason.Code)
}

// The client answers every ping at once, while the server's reader is
// held in a hook for longer than the pong timeout: the client is alive,
// its answers are on the socket, and it must not be dropped as dead.
func TestWebSocketPongsCountWhileHookBlocks(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var once sync.Once
	th := newTestHub(t, &realtime.Options{
		OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		},
	}, &realtime.WebSocketOptions{PingInterval: 50 * time.Millisecond, PongTimeout: 400 * time.Millisecond})
	defer once.Do(func() { close(release) })
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	c.write(clientFrame(true, 0x1, []byte(`{"type":"send","id":1,"data":1}`)))
	deadline := time.Now().Add(2 * time.Second) // five pong timeouts
	for time.Now().Before(deadline) {
		op, p, err := c.frame()
		require.NoError(t, err, "the server dropped a client that answered its pings")
		require.NotEqual(t, byte(0x8), op, "closed: %q", p)
		if op == 0x9 {
			c.write(clientFrame(true, 0xa, p))
		}
	}
	require.Len(t, th.Conns(), 1)
	once.Do(func() { close(release) })
	c.write(clientFrame(true, 0x1, []byte(`{"type":"ping","id":3}`)))
	for {
		op, p, err := c.frame()
		require.NoError(t, err)
		if op == 0x9 {
			c.write(clientFrame(true, 0xa, p))
		}
		if op == 0x1 && strings.Contains(string(p), `"id":3`) {
			break
		}
	}
}

// Over TLS (no *net.TCPConn under the WebSocket: the copying write path,
// no socket peeking), large messages with 8-byte lengths go both ways,
// pings interleave with them and every frame the client reads is whole.
func TestWebSocketOverTLS(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{MaxMessageSize: 200 << 10, QueueBytes: 4 << 20})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, &realtime.HandlerOptions{
		WebSocket: &realtime.WebSocketOptions{PingInterval: 5 * time.Millisecond, PongTimeout: 2 * time.Second},
	}))
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(func() {
		require.NoError(t, hub.Close())
		srv.Close()
	})
	conn, err := tls.Dial("tcp", strings.TrimPrefix(srv.URL, "https://"), &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	var answered sync.WaitGroup
	var wmu sync.Mutex
	send := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := conn.Write(b)
		assert.NoError(t, err)
	}
	send(clientFrame(true, 0x1, []byte(`{"type":"join","id":1,"channel":"big"}`)))
	c.until(`"joined"`)
	data := strings.Repeat("z", 150<<10)
	for i := 0; i < 5; i++ {
		answered.Add(1)
		go func() {
			defer answered.Done()
			send(clientFrame(true, 0x1, []byte(fmt.Sprintf(`{"type":"publish","id":%d,"channel":"big","data":"%s"}`, 10+i, data))))
		}()
		got := 0
		for got < 2 { // the ack and the message, in either order
			op, p, err := c.frame()
			require.NoError(t, err)
			if op == 0x9 {
				go send(clientFrame(true, 0xa, p))
			}
			if op == 0x1 && (strings.Contains(string(p), fmt.Sprintf(`"id":%d`, 10+i)) || strings.Contains(string(p), data)) {
				got++
			}
		}
	}
	answered.Wait()
	// A graceful close arrives as a close frame with its code.
	for _, cn := range hub.Conns() {
		cn.Close(realtime.CloseNormal, "bye")
	}
	for {
		op, p, err := c.frame()
		require.NoError(t, err)
		if op == 0x8 {
			require.GreaterOrEqual(t, len(p), 2)
			assert.Equal(t, uint16(realtime.CloseNormal), binary.BigEndian.Uint16(p))
			break
		}
	}
}

// Pings go out every PingInterval, as documented, not every
// PingInterval+PongTimeout: intermediaries that drop idle connections are
// configured against the interval.
func TestWebSocketPingsEveryInterval(t *testing.T) {
	t.Parallel()
	const interval, timeout = 300 * time.Millisecond, 250 * time.Millisecond
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: interval, PongTimeout: timeout})
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	var at []time.Time
	for len(at) < 5 {
		op, p, err := c.frame()
		require.NoError(t, err)
		if op == 0x9 {
			at = append(at, time.Now())
			c.write(clientFrame(true, 0xa, p))
		}
	}
	avg := at[4].Sub(at[0]) / 4
	t.Logf("pings every %v", avg)
	assert.Less(t, avg, interval+timeout/2, "pings every %v with PingInterval %v", avg, interval)
	assert.Greater(t, avg, interval-50*time.Millisecond)
}

// Many connections with pings racing closes from every side: the
// server's graceful and immediate closes and the client's close frames.
// Every frame a strict client reads is whole, nothing follows the
// server's close frame, and every connection ends.
func TestWebSocketClosesRacePings(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: time.Millisecond, PongTimeout: 200 * time.Millisecond})
	const n = 40
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		conn, err := net.Dial("tcp", tcpAddr(th))
		require.NoError(t, err)
		c := dialStrict(t, conn, nil, nil)
		var id string
		for id == "" {
			op, p, err := c.frame()
			require.NoError(t, err)
			if op == 0x1 {
				var m []map[string]any
				require.NoError(t, json.Unmarshal(p, &m))
				id, _ = m[0]["conn"].(string)
			}
		}
		sc := th.Conn(id)
		require.NotNil(t, sc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var wmu sync.Mutex
			write := func(b []byte) {
				wmu.Lock()
				defer wmu.Unlock()
				conn.Write(b)
			}
			go func() {
				for j := 0; j < 20; j++ {
					write(clientFrame(true, 0x1, []byte(fmt.Sprintf(`{"type":"ping","id":%d}`, j+1))))
				}
				time.Sleep(time.Duration(i%7) * time.Millisecond)
				switch i % 3 {
				case 0:
					sc.Close(realtime.CloseDisconnected, "bye")
				case 1:
					sc.CloseNow(realtime.CloseAbnormal, "gone")
				case 2:
					write(clientFrame(true, 0x8, []byte{0x0f, 0xa0, 'c'})) // 4000
				}
			}()
			closed := false
			for {
				op, p, err := c.frame()
				if err != nil {
					if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
						assert.NoError(t, err)
					}
					return
				}
				if closed {
					t.Errorf("frame %#x after the close frame", op)
					return
				}
				switch op {
				case 0x9:
					write(clientFrame(true, 0xa, p))
				case 0x8:
					closed = true
					if i%3 != 2 {
						write(clientFrame(true, 0x8, p))
					}
				}
			}
		}()
	}
	wg.Wait()
	th.waitConns(t, 0)
}

// A peer vanishes while a hook holds the reader, with bytes it sent
// earlier still unread: those are no answer to a later ping, and the
// connection is dropped, which ends the hook waiting for it.
func TestWebSocketVanishedPeerDroppedWhileHookBlocks(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{
		OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
			<-ctx.Done() // waits for its own connection to end
			return nil
		},
	}, &realtime.WebSocketOptions{PingInterval: 50 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	bh := newBlackhole(t, tcpAddr(th))
	conn, err := net.Dial("tcp", bh.addr())
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	c.write(clientFrame(true, 0x1, []byte(`{"type":"send","id":1,"data":1}`)))
	th.waitConns(t, 1)
	time.Sleep(30 * time.Millisecond) // the hook holds the reader
	// More than the read buffer takes: this frame waits on the socket.
	c.write(clientFrame(true, 0x1, []byte(`{"type":"ping","id":2,"pad":"`+strings.Repeat("x", 500)+`"}`)))
	time.Sleep(30 * time.Millisecond)
	bh.freeze()
	th.waitConnsWithin(t, 0, 3*time.Second)
	for _, r := range th.disconnects {
		assert.Equal(t, realtime.ClosePingTimeout, r.Code, "%v", r)
	}
}

// A slow consumer whose write is stuck (it stopped reading) ends soon
// after its queue overflows, long before the write timeout: the close
// frame waits behind the stuck write for at most the WebSocket library's
// 5 s close timeout, which then closes the connection under the write.
func TestWebSocketSlowConsumerWithStuckWriteEnds(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{WriteTimeout: 30 * time.Second, MaxMessageSize: 64 << 10, QueueBytes: 1 << 20}, nil)
	conn := dialSmallRcvBuf(t, th)
	dialStrict(t, conn, nil, nil) // and never read again
	th.waitConns(t, 1)
	c := th.Conns()[0]
	require.NoError(t, c.Join(ctxT(t), "room"))
	data := []byte(`"` + strings.Repeat("x", 60<<10) + `"`)
	for c.Context().Err() == nil {
		_, err := th.Publish(ctxT(t), "room", data)
		require.NoError(t, err)
	}
	start := time.Now()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	t.Logf("ended %v after closing began: %v", time.Since(start), c.Reason())
	assert.Equal(t, realtime.CloseSlowConsumer, c.Reason().Code)
	assert.Less(t, time.Since(start), 7*time.Second)
}

// A write that outlasts WriteTimeout is aborted by shutting the sending
// side of the socket under it; the connection ends with the write's
// reason, not with a read error.
func TestWebSocketWriteTimeoutReason(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{WriteTimeout: 300 * time.Millisecond, QueueBytes: 64 << 20, QueueMessages: 1 << 16}, nil)
	conn := dialSmallRcvBuf(t, th)
	dialStrict(t, conn, nil, nil) // and never read again
	th.waitConns(t, 1)
	c := th.Conns()[0]
	endsForItsWriteTimeout(t, th.Hub, c)
}

// The Go client over wss: members of a channel get every message in
// order, large ones included, while pings run often.
func TestWebSocketGoClientOverTLS(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{MaxMessageSize: 200 << 10, QueueBytes: 8 << 20})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, &realtime.HandlerOptions{
		WebSocket: &realtime.WebSocketOptions{PingInterval: 3 * time.Millisecond, PongTimeout: time.Second},
	}))
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(func() {
		require.NoError(t, hub.Close())
		srv.Close()
	})
	url := "wss" + strings.TrimPrefix(srv.URL, "https") + "/rt/ws"
	var clients []*client.Client
	for i := 0; i < 3; i++ {
		c, err := client.Dial(ctxT(t), url, &client.Options{HTTPClient: srv.Client(), Buffer: 256})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = c.Join(ctxT(t), "big")
		require.NoError(t, err)
		clients = append(clients, c)
	}
	const n = 40
	go func() {
		for i := 0; i < n; i++ {
			size := []int{10, 70 << 10, 150 << 10, 125, 65535}[i%5]
			data := fmt.Sprintf(`"%d %s"`, i, strings.Repeat("d", size))
			if _, err := clients[i%3].Publish(ctxT(t), "big", []byte(data)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for _, c := range clients {
		for i := 0; i < n; i++ {
			ev := receiveType(t, c, "message")
			require.True(t, strings.HasPrefix(string(ev.Data), fmt.Sprintf(`"%d `, i)), "message %d: %.20s", i, ev.Data)
		}
	}
}

// A hook that ignores its context and blocks does not hold up Shutdown
// past its deadline, nor the client's close frame; once it returns, the
// connection's reader ends.
func TestWebSocketShutdownWithBlockedHook(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	th := newTestHub(t, &realtime.Options{
		AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
			entered <- struct{}{}
			<-release
			return nil
		},
	}, &realtime.WebSocketOptions{PingInterval: 20 * time.Millisecond, PongTimeout: time.Second})
	rc := th.dialRaw(t)
	idle := th.dialRaw(t)
	c := th.Conn(rc.id)
	rc.ws.Write(ctxT(t), websocket.MessageText, []byte(`{"type":"join","id":1,"channel":"a"}`))
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := th.Shutdown(ctx)
	t.Logf("Shutdown: %v after %v", err, time.Since(start))
	assert.Less(t, time.Since(start), 2*time.Second)
	// The idle connection got its close frame with CloseGoingAway.
	assert.Equal(t, websocket.StatusCode(realtime.CloseGoingAway), websocket.CloseStatus(idle.readErr()))
	close(release)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end after its hook returned")
	}
}

// The client pings hard with full payloads while the server writes large
// messages and pings every millisecond: the server's pings, its pongs and
// its data frames never mix, and every client ping gets its own pong.
func TestWebSocketControlFramesBetweenLargeWrites(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{MaxMessageSize: 200 << 10, QueueBytes: 16 << 20, QueueMessages: 1 << 12},
		&realtime.WebSocketOptions{PingInterval: time.Millisecond, PongTimeout: 5 * time.Second})
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	var wmu sync.Mutex
	write := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		conn.Write(b)
	}
	write(clientFrame(true, 0x1, []byte(`{"type":"join","id":1,"channel":"big"}`)))
	c.until(`"joined"`)
	const pings, msgs = 200, 30
	go func() {
		for i := 0; i < pings; i++ {
			p := bytes.Repeat([]byte{byte(i)}, 125)
			write(clientFrame(true, 0x9, p))
		}
	}()
	go func() {
		for i := 0; i < msgs; i++ {
			size := []int{70 << 10, 100, 150 << 10, 64 << 10, 1 << 10}[i%5]
			th.Publish(context.Background(), "big", []byte(fmt.Sprintf(`"%d %s"`, i, strings.Repeat("m", size))))
		}
	}()
	gotPongs, gotMsgs := 0, 0
	for gotPongs < pings || gotMsgs < msgs {
		op, p, err := c.frame()
		require.NoError(t, err)
		switch op {
		case 0x9:
			write(clientFrame(true, 0xa, p))
		case 0xa:
			require.Equal(t, bytes.Repeat([]byte{byte(gotPongs)}, 125), p, "pong %d", gotPongs)
			gotPongs++
		case 0x1:
			var m []map[string]any
			require.NoError(t, json.Unmarshal(p, &m))
			for _, e := range m {
				if e["type"] == "message" {
					require.True(t, strings.HasPrefix(e["data"].(string), fmt.Sprintf("%d ", gotMsgs)))
					gotMsgs++
				}
			}
		default:
			t.Fatalf("frame %#x", op)
		}
	}
}

// stuckTransport is a transport whose writes wait for their context and
// then report a close of their own, as the long-poll transport does when
// no poll takes its backlog.
type stuckTransport struct{}

func (stuckTransport) Name() string { return "stuck" }
func (stuckTransport) Write(ctx context.Context, _ realtime.Frame) error {
	<-ctx.Done()
	return realtime.CloseError{Code: realtime.CloseSlowConsumer, Reason: "stuck"}
}
func (stuckTransport) Close(realtime.CloseCode, string) error { return nil }

// A write past WriteTimeout ends with the close its transport reports.
func TestWriteTimeoutKeepsTheTransportsReason(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{WriteTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	defer hub.Close()
	c, err := hub.Connect(stuckTransport{}, realtime.ConnInfo{})
	require.NoError(t, err)
	require.NoError(t, c.Send([]byte(`1`)))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end")
	}
	assert.Equal(t, realtime.CloseError{Code: realtime.CloseSlowConsumer, Reason: "stuck"}, c.Reason())
}

// Over TLS too, a write past WriteTimeout is aborted and its connection
// ends with "write timed out".
func TestWebSocketWriteTimeoutOverTLS(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{WriteTimeout: 300 * time.Millisecond, QueueBytes: 64 << 20, QueueMessages: 1 << 16})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(func() {
		require.NoError(t, hub.Close())
		srv.Close()
	})
	d := net.Dialer{Control: smallReceiveBuffer}
	raw, err := d.Dial("tcp", strings.TrimPrefix(srv.URL, "https://"))
	require.NoError(t, err)
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	dialStrict(t, conn, nil, nil) // and never read again
	require.Eventually(t, func() bool { return len(hub.Conns()) == 1 }, 5*time.Second, 5*time.Millisecond)
	c := hub.Conns()[0]
	endsForItsWriteTimeout(t, hub, c)
}

// A frame announcing a gigabyte (8-byte length), behind a pong taken off
// the socket, closes the connection with 1009 as soon as MaxMessageSize
// of it has come, without waiting for the rest; and a client that then
// stalls inside that frame cannot hold the close handshake open.
func TestWebSocketStallInsideOversizedFrame(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	head := []byte{0x81, 0x80 | 127}
	head = binary.BigEndian.AppendUint64(head, 1<<30)
	head = append(head, 1, 2, 3, 4)
	c.write(append(clientFrame(true, 0xa, []byte("x")), head...))
	c.write(make([]byte, 64<<10+1))
	for {
		op, p, err := c.frame()
		require.NoError(t, err)
		if op == 0x8 {
			require.GreaterOrEqual(t, len(p), 2)
			assert.Equal(t, uint16(websocket.StatusMessageTooBig), binary.BigEndian.Uint16(p))
			break
		}
	}
	start := time.Now()
	th.waitConnsWithin(t, 0, 15*time.Second)
	t.Logf("ended after %v: %v", time.Since(start), th.disconnectReasons())
}

// Any input answers a ping: a client that never sends a pong but keeps
// sending commands stays connected.
func TestWebSocketDataAnswersPings(t *testing.T) {
	t.Parallel()
	// Pings every second (the pong timeout, being longer than the
	// interval, sets the pace); commands every 20 ms or so, so that a
	// loaded machine cannot stretch a gap past the timeout.
	th := newTestHub(t, nil, &realtime.WebSocketOptions{PingInterval: 100 * time.Millisecond, PongTimeout: time.Second})
	conn, err := net.Dial("tcp", tcpAddr(th))
	require.NoError(t, err)
	c := dialStrict(t, conn, nil, nil)
	c.until("welcome")
	pings := 0
	start := time.Now()
	for i := 1; time.Since(start) < 2500*time.Millisecond; i++ {
		c.write(clientFrame(true, 0x1, []byte(fmt.Sprintf(`{"type":"ping","id":%d}`, i))))
		n, _ := c.until(fmt.Sprintf(`"id":%d}`, i))
		pings += n
		time.Sleep(20 * time.Millisecond)
	}
	assert.GreaterOrEqual(t, pings, 2, "pings answered by commands alone")
	assert.Len(t, th.Conns(), 1)
}

// endsForItsWriteTimeout has c, whose client reads nothing, join a
// channel that fills its socket, and checks that it ends for its write
// timeout, with that reason.
func endsForItsWriteTimeout(t *testing.T, hub *realtime.Hub, c *realtime.Conn) {
	t.Helper()
	require.NoError(t, c.Join(ctxT(t), "room"))
	data := []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
	for i := 0; i < 300 && c.Context().Err() == nil; i++ {
		_, err := hub.Publish(ctxT(t), "room", data)
		require.NoError(t, err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end")
	}
	assert.Equal(t, realtime.CloseError{Code: realtime.CloseAbnormal, Reason: "write timed out"}, c.Reason())
}
