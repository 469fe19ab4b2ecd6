package realtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// WebSocketOptions configures the WebSocket transport. The zero value of
// every field means its default; nil means all defaults.
type WebSocketOptions struct {
	// PingInterval is how often the server pings an idle or busy client.
	// The default, 0, is 25 seconds.
	PingInterval time.Duration

	// PongTimeout is how long the client has to answer a ping before the
	// connection is dropped as dead (ClosePingTimeout). The default, 0, is
	// 10 seconds.
	PongTimeout time.Duration
}

// NewWebSocketHandler returns the WebSocket transport of h as an
// http.Handler, to mount where clients connect (for example at
// "/realtime/ws"). It is built on the exported Hub API alone.
//
// Each request is admitted with [Hub.Admit] (origin and Authenticate),
// must offer the subprotocol [Subprotocol], and is then upgraded. The
// handler returns once the connection is open: one goroutine of its own
// reads it from then on, with small buffers, so that an idle connection
// keeps neither the request nor net/http's buffers. The connection lives
// by its own context, not the request's; [Conn.Done] is closed after its
// reader has ended, unless the reader is inside a hook then (a hook may
// wait for its own connection to end): it ends when the hook returns.
func NewWebSocketHandler(h *Hub, opts *WebSocketOptions) http.Handler {
	var o WebSocketOptions
	if opts != nil {
		o = *opts
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 25 * time.Second
	}
	if o.PongTimeout <= 0 {
		o.PongTimeout = 10 * time.Second
	}
	return &wsHandler{hub: h, opts: o}
}

type wsHandler struct {
	hub  *Hub
	opts WebSocketOptions
}

func (s *wsHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, ok := s.hub.Admit(w, r)
	if !ok {
		return
	}
	if isWebSocketUpgrade(r) && !offersSubprotocol(r, Subprotocol) {
		http.Error(w, "realtime: offer the WebSocket subprotocol "+Subprotocol,
			http.StatusBadRequest)
		return
	}
	ws, err := websocket.Accept(smallBuffers{w}, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Admit has applied the hub's origin policy.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return // Accept has written the response.
	}
	ws.SetReadLimit(int64(s.hub.MaxMessageSize()))

	t := &wsTransport{ws: ws, readerDone: make(chan struct{})}
	c, err := s.hub.Connect(t, ConnInfo{Identity: id})
	if err != nil {
		close(t.readerDone)
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}

	p := s.startPinger(c, ws)
	go func() {
		defer close(t.readerDone)
		s.read(c, t)
		p.stop()
	}()
}

// Buffer sizes of an upgraded connection. A frame larger than a buffer
// passes around it, so they bound what an idle connection holds, not the
// frame size.
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 1 << 10
)

// smallBuffers hands coder/websocket the hijacked connection with buffers
// of wsReadBuffer and wsWriteBuffer bytes instead of net/http's 4 KiB
// ones.
type smallBuffers struct{ http.ResponseWriter }

func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(conn, wsReadBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// What the client sent right after its request, already read: it
		// stays buffered, where the WebSocket library looks for it.
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), conn), max(wsReadBuffer, n))
		br.Peek(n)
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, wsWriteBuffer)), nil
}

// read passes the client's frames to the hub until the connection ends.
// It reads under its own context: the connection's ends as soon as
// closing starts, and cancelling a read would cut the close handshake.
func (s *wsHandler) read(c *Conn, t *wsTransport) {
	ws := t.ws
	ctx := context.Background()
	for {
		typ, frame, err := ws.Read(ctx)
		if err != nil {
			code, reason := readCloseError(err)
			if code == CloseAbnormal {
				c.CloseNow(code, reason)
			} else {
				c.Close(code, reason)
			}
			return
		}
		if typ != websocket.MessageText {
			c.RejectFrame("frames must be text")
			continue
		}
		if !t.receive(c, frame) {
			return
		}
	}
}

// readCloseError turns the error that ended a read into why the
// connection closed.
func readCloseError(err error) (CloseCode, string) {
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return CloseCode(ce.Code), ce.Reason
	case strings.Contains(err.Error(), "read limited at"):
		return CloseTooLarge, "frame larger than the message size limit"
	default:
		return CloseAbnormal, err.Error()
	}
}

// pinger checks that the peer of one connection is alive. It holds a
// timer, not a goroutine: each ping runs on the timer's own goroutine,
// which ends with the ping.
type pinger struct {
	s  *wsHandler
	c  *Conn
	ws *websocket.Conn

	mu       sync.Mutex
	timer    *time.Timer
	stopped  bool
	inFlight chan struct{} // closed when the ping in progress ends
}

func (s *wsHandler) startPinger(c *Conn, ws *websocket.Conn) *pinger {
	p := &pinger{s: s, c: c, ws: ws}
	p.mu.Lock()
	p.timer = time.AfterFunc(s.opts.PingInterval, p.ping)
	p.mu.Unlock()
	return p
}

// ping sends one ping and waits for its pong, closing the connection if
// none comes within the timeout, and schedules the next.
func (p *pinger) ping() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	done := make(chan struct{})
	p.inFlight = done
	p.mu.Unlock()
	defer close(done)

	ctx := p.c.Context()
	pctx, cancel := context.WithTimeout(ctx, p.s.opts.PongTimeout)
	err := p.ws.Ping(pctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			p.c.CloseNow(ClosePingTimeout, "no pong within the timeout")
		}
		return
	}
	p.mu.Lock()
	if !p.stopped {
		p.timer.Reset(p.s.opts.PingInterval)
	}
	p.mu.Unlock()
}

// stop cancels the next ping and waits for one in progress, which ends
// once the connection has closed.
func (p *pinger) stop() {
	p.mu.Lock()
	p.stopped = true
	p.timer.Stop()
	done := p.inFlight
	p.mu.Unlock()
	if done != nil {
		<-done
	}
}

// wsTransport is the Transport of one WebSocket connection.
type wsTransport struct {
	ws         *websocket.Conn
	readerDone chan struct{} // closed when the reader goroutine ends

	mu        sync.Mutex
	closed    bool // Close has begun: the reader hands the hub no more frames
	receiving bool // the reader is in Conn.Receive, perhaps in a hook
}

// receive passes a frame to the hub unless the transport is closing. It
// reports false when the reader should stop.
func (t *wsTransport) receive(c *Conn, frame []byte) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	t.receiving = true
	t.mu.Unlock()
	// The command runs on a goroutine of its own, which ends with it: the
	// hooks and joins it may run need a deep stack, and the reader, which
	// waits in Read for most of the connection's life, keeps a small one.
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err = c.Receive(c.Context(), frame)
	}()
	<-done
	t.mu.Lock()
	t.receiving = false
	t.mu.Unlock()
	return err == nil
}

func (t *wsTransport) Name() string { return "websocket" }

func (t *wsTransport) Write(ctx context.Context, f Frame) error {
	return t.ws.Write(ctx, websocket.MessageText, f.Data)
}

// Close ends the connection and waits for its reader, which the closed
// connection ends, so that the connection is over when the hub reports it
// done. A reader inside Conn.Receive is not waited for: a hook there may
// itself be waiting for the connection to end; it stops as soon as it
// returns.
func (t *wsTransport) Close(code CloseCode, reason string) error {
	t.mu.Lock()
	t.closed = true
	inHook := t.receiving
	t.mu.Unlock()
	var err error
	switch code {
	case CloseAbnormal, ClosePingTimeout:
		// The peer is gone or not listening: no close frame would arrive.
		err = t.ws.CloseNow()
	default:
		err = t.ws.Close(websocket.StatusCode(code), truncateReason(reason))
		if err != nil {
			t.ws.CloseNow()
		}
	}
	if !inHook {
		<-t.readerDone
	}
	return err
}

// truncateReason fits a close reason into a close frame (123 bytes),
// without splitting a UTF-8 sequence.
func truncateReason(s string) string {
	const max = 123
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && s[len(s)-1]&0xC0 == 0x80 {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1] >= 0xC0 {
		s = s[:len(s)-1]
	}
	return s
}

func isWebSocketUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

func offersSubprotocol(r *http.Request, name string) bool {
	return headerHasToken(r.Header, "Sec-WebSocket-Protocol", name)
}

// headerHasToken reports whether a comma-separated header lists token.
func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
