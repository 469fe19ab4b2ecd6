package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// WebSocketOptions configures the WebSocket transport. The zero value of
// every field means its default; nil means all defaults.
type WebSocketOptions struct {
	// PingInterval is how often the server pings an idle or busy client
	// (every PongTimeout if that is longer). The default, 0, is 25
	// seconds.
	PingInterval time.Duration

	// PongTimeout is how long the client has to answer a ping before the
	// connection is dropped as dead (ClosePingTimeout). Any input counts
	// as an answer: a pong, or a message that arrives first. The default,
	// 0, is 10 seconds.
	PongTimeout time.Duration
}

// NewWebSocketHandler returns the WebSocket transport of h as an
// http.Handler, to mount where clients connect (for example at
// "/realtime/ws"). It is built on the exported Hub API alone.
//
// Each request is admitted with [Hub.Admit] (origin and Authenticate),
// must offer the subprotocol [Subprotocol], and is then upgraded. The
// handler returns once the connection is open. From then on one
// goroutine at a time reads the connection, a fresh one for each message,
// with small buffers; pings run on a timer. An idle connection keeps
// neither the request nor net/http's buffers, and its reader has the
// smallest stack a goroutine can have. The connection lives
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
	t := &wsTransport{readerDone: make(chan struct{})}
	ws, err := websocket.Accept(&smallBuffers{w, t}, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Admit has applied the hub's origin policy.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return // Accept has written the response.
	}
	ws.SetReadLimit(int64(s.hub.MaxMessageSize()))

	t.ws = ws
	// WebSocket clients resume by joining again with their positions.
	c, err := s.hub.Connect(t, ConnInfo{Identity: id, NoCursor: true})
	if err != nil {
		close(t.readerDone)
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}

	t.pinger = s.startPinger(c, t)
	go s.read(c, t)
}

// Buffer sizes of an upgraded connection. A frame larger than the read
// buffer is read around it, so the buffers bound what an idle connection
// holds, not the frame size. The write buffer only has to take a frame
// header: frameWriter assembles frames (see there).
const (
	wsReadBuffer  = 128
	wsWriteBuffer = 32
)

// smallBuffers hands coder/websocket the hijacked connection with small
// buffers instead of net/http's 4 KiB ones: reads count toward the
// transport's input, and a frameWriter takes the writes. The transport
// keeps the connection, the read buffer and the frameWriter.
type smallBuffers struct {
	http.ResponseWriter
	t *wsTransport
}

func (w *smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	t := w.t
	t.conn = conn
	t.in = wsInput{Conn: conn, input: &t.input}
	if n := brw.Reader.Buffered(); n > 0 {
		// What the client sent right after its request, already read.
		b, _ := brw.Reader.Peek(n)
		t.in.early = bytes.Clone(b)
	}
	t.br = bufio.NewReaderSize(&t.in, wsReadBuffer)
	t.fw = &frameWriter{conn: conn, left: -1}
	return &t.in, bufio.NewReadWriter(t.br, bufio.NewWriterSize(t.fw, wsWriteBuffer)), nil
}

// wsInput is the hijacked connection as the WebSocket library sees it:
// what the client sent right after its request comes first, and reads
// that bring the client's bytes are counted, which is how the pinger
// knows the client is alive.
type wsInput struct {
	net.Conn
	early []byte
	input *atomic.Uint64
}

func (c *wsInput) Read(p []byte) (int, error) {
	if len(c.early) > 0 {
		n := copy(p, c.early)
		c.early = c.early[n:]
		if len(c.early) == 0 {
			c.early = nil
		}
		c.input.Add(1)
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.input.Add(1)
	}
	return n, err
}

// frameWriter is what coder/websocket's write buffer flushes to. That
// buffer is too small for most frames, so a frame arrives in pieces: its
// header, perhaps with the first bytes of the payload, then the rest of
// the payload straight from the caller's slice. frameWriter follows the
// frame headers (RFC 6455, section 5.2), keeps the small pieces and writes
// each frame with one system call (writev for two parts), so an idle
// connection holds no write buffer and a large frame is not split into
// two writes.
//
// It also sends the pinger's pings, between frames: at once, or when the
// frame part of which has gone out ends.
type frameWriter struct {
	conn net.Conn

	mu      sync.Mutex
	held    [64]byte // the current frame's header and small pieces
	head    [10]byte // the header of a message writeMessage writes
	n       int      // bytes in held
	left    int64    // payload bytes of the current frame still to come; -1 while its header is incomplete
	opcode  byte     // of the current frame, once its header is whole
	partial bool     // part of the current frame has gone out
	pingDue bool     // a ping waits for the current frame to end
	closed  bool     // a close frame has gone out: no more pings
	vec     [2][]byte
	bufs    net.Buffers
}

// pingFrame is a ping without payload: the client's pong is not
// matched, any input counts as a sign of life.
var pingFrame = []byte{0x89, 0}

// ping sends a ping, or has it sent when the frame in progress ends.
func (w *frameWriter) ping() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.closed:
		return nil
	case w.partial:
		w.pingDue = true
		return nil
	}
	_, err := w.conn.Write(pingFrame)
	return err
}

func (w *frameWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	size := len(p)
	for {
		if w.left < 0 {
			p = w.header(p)
			if w.left < 0 {
				return size, nil // p ended inside the header
			}
			if w.left == 0 {
				// A frame without payload is whole.
				if err := w.send(nil); err != nil {
					return 0, err
				}
				continue
			}
		}
		if len(p) == 0 {
			return size, nil
		}
		k := int(min(w.left, int64(len(p))))
		piece := p[:k]
		p = p[k:]
		w.left -= int64(k)
		switch {
		case w.left == 0:
			if err := w.send(piece); err != nil {
				return 0, err
			}
		case k <= len(w.held)-w.n:
			w.n += copy(w.held[w.n:], piece)
		default:
			// A large piece of a frame that goes on: out with it now.
			if err := w.send(piece); err != nil {
				return 0, err
			}
		}
	}
}

// header gathers the current frame's header from p, returning the rest
// of p. Once the header is whole, w.left is its payload length.
func (w *frameWriter) header(p []byte) []byte {
	for {
		want := 2
		if w.n >= 2 {
			want = frameHeaderLen(w.held[1])
		}
		if w.n == want {
			w.opcode = w.held[0] & 0x0f
			w.left = framePayloadLen(w.held[:w.n])
			return p
		}
		if len(p) == 0 {
			return p
		}
		k := copy(w.held[w.n:want], p)
		w.n += k
		p = p[k:]
	}
}

// send writes what is held followed by piece, in one call.
func (w *frameWriter) send(piece []byte) error {
	var err error
	switch {
	case len(piece) <= len(w.held)-w.n:
		w.n += copy(w.held[w.n:], piece)
		_, err = w.conn.Write(w.held[:w.n])
	case w.n == 0:
		_, err = w.conn.Write(piece)
	default:
		err = w.writeParts(w.held[:w.n], piece)
	}
	w.n = 0
	w.partial = w.left > 0
	if w.left == 0 {
		w.left = -1
		if w.opcode == 0x8 {
			w.closed = true
		}
		if w.pingDue && err == nil && !w.closed {
			w.pingDue = false
			_, err = w.conn.Write(pingFrame)
		}
	}
	return err
}

// writeParts writes head and then piece with one call.
func (w *frameWriter) writeParts(head, piece []byte) error {
	if _, ok := w.conn.(*net.TCPConn); ok {
		w.vec = [2][]byte{head, piece}
		w.bufs = w.vec[:]
		_, err := w.bufs.WriteTo(w.conn) // writev
		w.vec = [2][]byte{}              // keep no reference to the caller's slices
		return err
	}
	// Over TLS, say: one buffer makes one record.
	b := framePool.Get().(*[]byte)
	*b = append(append((*b)[:0], head...), piece...)
	_, err := w.conn.Write(*b)
	if cap(*b) <= 4*maxFrame {
		framePool.Put(b)
	}
	return err
}

// errFrameOut is writeMessage's answer while part of a frame of the
// WebSocket library's own has gone out.
var errFrameOut = errors.New("realtime: a frame is half written")

// writeMessage writes p as one text frame, whole, straight to the
// connection: the WebSocket library's own write path, with its locks,
// its buffer and a context per write, carries only its control frames.
// While part of one of those has gone out, it returns errFrameOut, and
// the message must go through the library, which orders it after.
func (w *frameWriter) writeMessage(p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.partial:
		return errFrameOut
	case w.closed:
		return net.ErrClosed
	}
	h := w.head[:2]
	h[0] = 0x81 // the final frame of a text message
	switch n := len(p); {
	case n < 126:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	return w.writeParts(h, p)
}

// frameHeaderLen is the length of a frame header whose second byte is b.
func frameHeaderLen(b byte) int {
	n := 2
	switch b & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b&0x80 != 0 {
		n += 4 // masking key
	}
	return n
}

// framePayloadLen is the payload length a whole frame header states.
func framePayloadLen(h []byte) int64 {
	switch n := h[1] & 0x7f; n {
	case 126:
		return int64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		return int64(binary.BigEndian.Uint64(h[2:]) &^ (1 << 63))
	default:
		return int64(n)
	}
}

// read waits for the client's next message and passes it to the hub;
// then a new goroutine takes over the reading, until the connection
// ends. A goroutine's stack never shrinks back to the smallest size once
// it has grown, and reading and handling a message grow it: so each wait
// for input starts on a fresh goroutine, and an idle connection's reader
// holds the smallest stack there is. There is one reader at a time.
//
// It reads under its own context: the connection's ends as soon as
// closing starts, and cancelling a read would cut the close handshake.
func (s *wsHandler) read(c *Conn, t *wsTransport) {
	t.awaitInput()
	typ, frame, err := t.ws.Read(context.Background())
	switch {
	case err != nil:
		code, reason := readCloseError(err)
		if code == CloseAbnormal {
			c.CloseNow(code, reason)
		} else {
			c.Close(code, reason)
		}
	case typ != websocket.MessageText:
		c.RejectFrame("frames must be text")
		go s.read(c, t)
		return
	case t.receive(c, frame):
		go s.read(c, t)
		return
	}
	t.pinger.stop()
	close(t.readerDone)
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
// timer, not a goroutine. Every PingInterval it sends a ping; if no input
// at all has arrived from the client PongTimeout later (a pong or
// anything else), the connection is dropped. While a hook holds the
// reader, input that arrived and waits unread on the socket counts too (as
// far as wsUnreadPeek bytes tell): a client that answered is not dead for
// the hook being slow.
type pinger struct {
	s *wsHandler
	c *Conn
	t *wsTransport

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
	waiting bool          // a ping is out; the timer checks for input
	input   uint64        // the transport's input count when it went out
	unread  int           // bytes waiting on the socket then, if the reader was in a hook
	sending chan struct{} // closed when the ping being written is out
}

func (s *wsHandler) startPinger(c *Conn, t *wsTransport) *pinger {
	p := &pinger{s: s, c: c, t: t}
	p.mu.Lock()
	p.timer = time.AfterFunc(s.opts.PingInterval, p.tick)
	p.mu.Unlock()
	return p
}

// tick runs on the timer's goroutine: it sends a ping, or checks the
// answer to the last one.
func (p *pinger) tick() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	if p.waiting {
		p.waiting = false
		alive := p.t.input.Load() != p.input || p.t.inReceive() && p.t.unread() > p.unread
		if alive {
			// The next ping goes out PingInterval after this one.
			p.timer.Reset(max(p.s.opts.PingInterval-p.s.opts.PongTimeout, 0))
		}
		p.mu.Unlock()
		if !alive {
			p.c.CloseNow(ClosePingTimeout, "no pong within the timeout")
		}
		return
	}
	p.waiting = true
	p.input = p.t.input.Load()
	p.unread = 0
	if p.t.inReceive() {
		p.unread = p.t.unread()
	}
	// Armed before the write: a write stuck on a vanished peer ends when
	// the check drops the connection.
	p.timer.Reset(p.s.opts.PongTimeout)
	done := make(chan struct{})
	p.sending = done
	p.mu.Unlock()
	defer close(done)
	if err := p.t.fw.ping(); err != nil {
		p.c.CloseNow(CloseAbnormal, "ping failed: "+err.Error())
	}
}

// stop cancels the pings and waits for one being written, which ends
// once the connection has closed.
func (p *pinger) stop() {
	p.mu.Lock()
	p.stopped = true
	p.timer.Stop()
	done := p.sending
	p.mu.Unlock()
	if done != nil {
		<-done
	}
}

// wsTransport is the Transport of one WebSocket connection.
type wsTransport struct {
	ws         *websocket.Conn
	conn       net.Conn      // the hijacked connection under ws
	in         wsInput       // what ws reads from
	br         *bufio.Reader // ws's read buffer
	fw         *frameWriter  // under ws's write buffer
	pinger     *pinger
	input      atomic.Uint64 // reads that brought the client's bytes
	writing    atomic.Bool   // a Write is in progress
	readerDone chan struct{} // closed when the last reader goroutine ends

	mu        sync.Mutex
	closed    bool // Close has begun: the reader hands the hub no more frames
	receiving bool // the reader is in Conn.Receive, perhaps in a hook
}

// awaitInput returns once the client has sent something, or the
// connection has ended. It waits in a shallow frame, outside the
// WebSocket library: a goroutine's stack shrinks to what it uses while
// parked, so an idle connection's reader keeps the smallest stack. (Where
// the wait is not supported it returns at once, and the reader waits in
// ws.Read.) The read buffer is looked at only while Close has not begun:
// from then on, Close reads it.
//
// Pongs that arrive while it waits are taken off the socket here, so that
// the WebSocket library, which would wait for the next message after
// one, is not entered for them.
func (t *wsTransport) awaitInput() {
	for {
		t.mu.Lock()
		skip := t.closed || t.br.Buffered() > 0 || len(t.in.early) > 0
		t.mu.Unlock()
		if skip {
			return
		}
		awaitReadable(t.conn)
		if !t.takePong() {
			return
		}
	}
}

// takePong reads a whole pong frame off the head of the socket, if one is
// there, and reports whether it did. The read cannot block: the frame is
// all there. It runs only between messages, while Close has not begun:
// Close reads the socket itself.
func (t *wsTransport) takePong() bool {
	var b [6 + 125]byte // a masked control frame at most
	n := peekSocket(t.conn, b[:])
	if n < 6 || b[0] != 0x8a || b[1]&0x80 == 0 || b[1]&0x7f > 125 {
		return false
	}
	size := 6 + int(b[1]&0x7f)
	if n < size {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if _, err := io.ReadFull(t.conn, b[:size]); err != nil {
		return false // the reader's next read sees the error
	}
	t.input.Add(1)
	return true
}

// wsUnreadPeek is how many of the bytes waiting on the socket the pinger
// counts.
const wsUnreadPeek = 512

// unread returns how many bytes from the client wait on the socket,
// unread (under TLS, on the socket beneath it), up to wsUnreadPeek. It
// does not wait.
func (t *wsTransport) unread() int {
	var b [wsUnreadPeek]byte
	return peekSocket(t.socket(), b[:])
}

// socket is the connection under TLS, if any, or the connection.
func (t *wsTransport) socket() net.Conn {
	if tc, ok := t.conn.(interface{ NetConn() net.Conn }); ok {
		return tc.NetConn()
	}
	return t.conn
}

// inReceive reports whether the reader is in Conn.Receive, perhaps in a
// hook, and reads nothing meanwhile.
func (t *wsTransport) inReceive() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.receiving
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
	err := c.Receive(c.Context(), frame)
	t.mu.Lock()
	t.receiving = false
	t.mu.Unlock()
	return err == nil
}

func (t *wsTransport) Name() string { return "websocket" }

// Write writes f as one text message, through the frameWriter (see
// writeMessage). No write is handed ctx: the hub aborts a write in
// progress with abortWrite when ctx ends.
func (t *wsTransport) Write(ctx context.Context, f Frame) error {
	t.writing.Store(true)
	defer t.writing.Store(false)
	if err := ctx.Err(); err != nil {
		return err
	}
	err := t.fw.writeMessage(f.Data)
	if err == errFrameOut {
		err = t.ws.Write(context.Background(), websocket.MessageText, f.Data)
	}
	return err
}

// abortWrite ends a write in progress by shutting down the sending side
// of the socket under it (where there is no socket to shut, by closing
// the connection); the hub calls it after ending the context of writes. A
// write that starts later sees that context ended. The reader goes on, so
// that the connection ends for the failed write, with its reason, rather
// than for a read that failed on a closed socket.
func (t *wsTransport) abortWrite() {
	if !t.writing.Load() {
		return
	}
	if tc, ok := t.socket().(*net.TCPConn); ok {
		tc.CloseWrite()
		return
	}
	t.conn.Close()
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
		// The WebSocket library bounds the close handshake, except where
		// it first skips the rest of a frame that a read left (one over
		// the size limit): a client that stalls inside it would hold
		// Close for ever.
		abort := time.AfterFunc(wsCloseTimeout, func() { t.conn.Close() })
		err = t.ws.Close(websocket.StatusCode(code), truncateReason(reason))
		abort.Stop()
		if err != nil {
			t.ws.CloseNow()
		}
	}
	if !inHook {
		<-t.readerDone
	}
	return err
}

// wsCloseTimeout bounds a close handshake: the WebSocket library's own
// bounds, 5 seconds to write the close frame and 5 to read the client's.
const wsCloseTimeout = 10 * time.Second

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
