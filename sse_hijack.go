package realtime

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// An event stream over HTTP/1.x is served on the hijacked connection:
// the handler returns once the stream is open, and the connection keeps
// only a reader goroutine that notices the client leaving, a heartbeat
// timer and no buffers of its own, as a WebSocket does. The response is
// delimited by the connection's end ("Connection: close"), as HTTP/1.1
// allows. HTTP/2 streams, and writers that cannot be hijacked, are served
// through the ResponseWriter instead.

// streamHijacked serves an HTTP/1.x event stream on the hijacked
// connection. It reports false, having written nothing, when w cannot be
// hijacked.
func (s *sseHandler) streamHijacked(w http.ResponseWriter, r *http.Request, id Identity) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// The stream outlives the server's timeouts; writes are bounded by
	// the hub, heartbeats by their own deadline. A client that vanished
	// without a reset leaves the heartbeats unacknowledged: the kernel
	// ends the connection soon after.
	conn.SetDeadline(time.Time{})
	setUserTimeout(conn, max(2*s.opts.Heartbeat, 20*time.Second))

	// The head as net/http would write it: header values have their line
	// breaks made spaces by Header.Write, and names that are not tokens
	// are left out, so no value can split the response.
	hdr := make(http.Header, len(w.Header())+4)
	for k, vs := range w.Header() {
		if validHeaderName(k) {
			hdr[k] = vs
		}
	}
	for _, k := range []string{"Content-Length", "Content-Encoding", "Transfer-Encoding"} {
		hdr.Del(k) // meaningless for this body
	}
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache, no-store")
	hdr.Set("X-Accel-Buffering", "no")
	hdr.Set("Connection", "close")
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\n")
	hdr.Write(&b)
	b.WriteString("\r\n")
	head := b.Bytes()
	head = append(head, "retry: "...)
	head = strconv.AppendInt(head, s.opts.Retry.Milliseconds(), 10)
	head = append(head, "\n\n"...)
	// What the client sent after its request is not ours to read.
	brw.Reader.Discard(brw.Reader.Buffered())
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(head); err != nil {
		conn.Close()
		return true
	}
	conn.SetWriteDeadline(time.Time{})

	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = r.URL.Query().Get("lastEventId")
	}
	token, ss := s.sessions.reserve(s.hub, s)
	t := &sseConnTransport{conn: conn, readerDone: make(chan struct{})}
	t.ended = func() { s.sessions.remove(s.hub, token) }
	c, err := s.hub.Connect(t, ConnInfo{Identity: id, Session: token, Cursor: cursor})
	ss.set(c)
	if err != nil {
		s.sessions.remove(s.hub, token)
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write([]byte("data: " + closeFrame(CloseGoingAway, "server shutting down") + "\n\n"))
		conn.Close()
		return true
	}
	t.mu.Lock()
	t.heartbeat = time.AfterFunc(s.opts.Heartbeat, func() { t.beat(c, s.opts.Heartbeat) })
	t.mu.Unlock()
	go t.read(c)
	return true
}

// sseConnTransport is the Transport of an event stream on a hijacked
// connection.
type sseConnTransport struct {
	conn       net.Conn
	readerDone chan struct{}
	ended      func() // forgets the session

	mu        sync.Mutex // serialises writes
	closed    bool
	heartbeat *time.Timer
}

func (t *sseConnTransport) Name() string { return "sse" }

// read waits for the client to go. What the client sends on the stream's
// connection (nothing, normally) is read and dropped.
func (t *sseConnTransport) read(c *Conn) {
	defer close(t.readerDone)
	var b [64]byte
	for {
		if _, err := t.conn.Read(b[:]); err != nil {
			break
		}
	}
	c.CloseNow(CloseAbnormal, "client went away")
}

// validHeaderName reports whether name is an HTTP token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func (t *sseConnTransport) Write(ctx context.Context, f Frame) error {
	buf := framePool.Get().(*[]byte)
	defer framePool.Put(buf)
	// The cursor is query-escaped and the frame holds no line break, so
	// each fits its field. Every event has an id, empty while the
	// connection is in no channel, so that a browser never resumes from a
	// stale one.
	ev := append((*buf)[:0], "id: "...)
	ev = append(ev, f.Cursor()...)
	ev = append(ev, "\ndata: "...)
	ev = append(ev, f.Data...)
	ev = append(ev, "\n\n"...)
	*buf = ev

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	stop := context.AfterFunc(ctx, func() { t.conn.SetWriteDeadline(time.Now()) })
	_, err := t.conn.Write(ev)
	stop()
	return err
}

// beat writes a comment line, so that proxies keep the stream open and a
// vanished client is noticed, and schedules the next.
func (t *sseConnTransport) beat(c *Conn, every time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	t.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := t.conn.Write([]byte(": ping\n\n"))
	t.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		c.CloseNow(CloseAbnormal, "heartbeat failed: "+err.Error())
		return
	}
	t.heartbeat.Reset(every)
}

// Close ends the stream with a close message, then the connection, and
// waits for the reader. A write in progress is cut short by a deadline.
func (t *sseConnTransport) Close(code CloseCode, reason string) error {
	abrupt := code == CloseAbnormal || code == ClosePingTimeout
	if abrupt {
		t.conn.SetWriteDeadline(time.Now())
	} else {
		// As long as a WebSocket close frame gets, so that a client
		// catching up still learns why the stream ends.
		t.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		<-t.readerDone
		return nil
	}
	t.closed = true
	if t.heartbeat != nil {
		t.heartbeat.Stop()
	}
	var err error
	if !abrupt {
		t.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, err = t.conn.Write([]byte("data: " + closeFrame(code, reason) + "\n\n"))
	}
	t.conn.Close()
	t.mu.Unlock()
	<-t.readerDone
	t.ended()
	return err
}
