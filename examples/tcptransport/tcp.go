package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/realtimekit/realtime"
)

// ErrServerClosed is returned by [Server.Serve] once [Server.Shutdown] or
// [Server.Close] has been called.
var ErrServerClosed = errors.New("tcptransport: server closed")

// Options configures a [Server]. The zero value of every field means its
// default; nil means all defaults.
type Options struct {
	// Authenticate identifies a client from the first line it sends,
	// before the client is connected to the hub. The line (without its
	// line break) is valid only during the call; its format is the
	// application's, for example {"type":"hello","user":"ann"}. Returning
	// an error refuses the client: it gets a close line with code 1008 and
	// the error's text as reason, so the text must not hold secrets.
	// Authenticate runs on the connection's goroutine and may block; ctx
	// ends after HelloTimeout or when the server shuts down.
	//
	// The default, nil, expects no such line: every client is connected at
	// once, anonymous, with its remote address (a net.Addr) as
	// Identity.Data.
	Authenticate func(ctx context.Context, remote net.Addr, hello []byte) (realtime.Identity, error)

	// HelloTimeout bounds how long a client may take to send its first
	// line and Authenticate to judge it. The default, 0, is 10 seconds.
	HelloTimeout time.Duration

	// CloseTimeout bounds how long closing a connection waits for the
	// close line to be written, and then for the client to close its side.
	// The default, 0, is 2 seconds.
	CloseTimeout time.Duration

	// Logger receives the server's logs: accepted and refused clients at
	// Debug, accept errors at Warn. The default, nil, logs nothing.
	Logger *slog.Logger
}

// Server serves a realtime hub to TCP clients that speak the protocol of
// PROTOCOL.md as newline-delimited JSON: each line a client sends is one
// frame (a command or an array of commands); each line the server sends
// is one frame (an array of messages). Blank lines are ignored and a
// trailing carriage return is dropped, so a terminal running nc works as a
// client. A connection ends with a last line holding a "close" message,
// as on SSE and long-poll, with the close code WebSocket would send.
//
// A line longer than the hub's MaxMessageSize closes the connection with
// code 1009. Server uses nothing but the exported API of package realtime:
// it is one more transport next to the built-in HTTP ones.
//
// A Server is safe for concurrent use. Its zero value is not usable:
// create one with [NewServer]. Each call to [Server.Serve] runs an accept
// loop on the caller's goroutine and starts one goroutine per connection;
// [Server.Shutdown] or [Server.Close] ends them and waits for them.
type Server struct {
	hub  *realtime.Hub
	opts Options
	log  *slog.Logger

	// ctx lives until Shutdown or Close starts; Authenticate gets it.
	ctx    context.Context
	cancel context.CancelFunc

	// conns counts the connection goroutines; adding to it happens under
	// mu while done is open, so that waiting on it after done is safe.
	conns sync.WaitGroup

	// mu guards the listeners, the sessions and done.
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	done      chan struct{} // closed when Shutdown or Close starts
}

// session is one client connection of a Server.
type session struct {
	t *transport
	c *realtime.Conn // nil until the client is connected to the hub; guarded by Server.mu
}

// NewServer returns a Server that connects its clients to hub. It starts
// no goroutine; call [Server.Serve].
func NewServer(hub *realtime.Hub, opts *Options) (*Server, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	switch {
	case hub == nil:
		return nil, errors.New("tcptransport: nil hub")
	case o.HelloTimeout < 0, o.CloseTimeout < 0:
		return nil, errors.New("tcptransport: negative timeout in Options")
	}
	if o.HelloTimeout == 0 {
		o.HelloTimeout = 10 * time.Second
	}
	if o.CloseTimeout == 0 {
		o.CloseTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		hub:       hub,
		opts:      o,
		log:       o.Logger,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		done:      make(chan struct{}),
	}, nil
}

// Serve accepts connections on ln and serves each on a goroutine of its
// own, until Shutdown or Close is called or ln fails. It blocks until
// then, closes ln, and always returns a non-nil error: ErrServerClosed
// after Shutdown or Close. Temporary accept errors are logged and retried
// after a pause.
func (s *Server) Serve(ln net.Listener) error {
	if !s.addListener(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.removeListener(ln)

	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopping() {
				return ErrServerClosed
			}
			if !isTemporary(err) {
				return fmt.Errorf("tcptransport: accept: %w", err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("tcp accept failed; retrying",
				slog.Any("err", err), slog.Duration("delay", delay))
			if !s.pause(delay) {
				return ErrServerClosed
			}
			continue
		}
		delay = 0

		sess := &session{t: newTransport(nc, s.opts.CloseTimeout)}
		if !s.addSession(sess) {
			nc.Close()
			return ErrServerClosed
		}
		go s.serveConn(sess)
	}
}

// Shutdown stops the server gracefully: it closes the listeners, closes
// every connection with code 1001 (CloseGoingAway) after writing what was
// queued for it, and waits until every connection goroutine has returned.
// If ctx ends first, Shutdown closes what remains at once, as Close does,
// and returns ctx.Err(). The hub is left running; shut it down on its own.
// Shutdown may be called more than once and together with Close.
func (s *Server) Shutdown(ctx context.Context) error {
	sessions, err := s.stop()
	for _, sess := range sessions {
		if sess.c != nil {
			sess.c.Close(realtime.CloseGoingAway, "server shutting down")
		} else {
			// The client is still in its hello and has been sent nothing,
			// so the close line goes straight into the socket buffer:
			// this does not wait for the client.
			sess.t.Close(realtime.CloseGoingAway, "server shutting down")
		}
	}

	idle := make(chan struct{})
	go func() {
		s.conns.Wait()
		close(idle)
	}()
	select {
	case <-idle:
		return err
	case <-ctx.Done():
		s.Close()
		<-idle
		return ctx.Err()
	}
}

// Close stops the server at once: it closes the listeners and every
// connection, without a close line, and waits until every connection
// goroutine has returned. It may be called more than once and together
// with Shutdown.
func (s *Server) Close() error {
	sessions, err := s.stop()
	for _, sess := range sessions {
		sess.t.skipCloseLine()
		if sess.c != nil {
			// Before the abort, so that the connection's close code is
			// 1001 and not that of the failed write the abort causes.
			sess.c.CloseNow(realtime.CloseGoingAway, "server closed")
		}
		sess.t.abort()
	}
	s.conns.Wait()
	return err
}

// stop makes the server refuse new connections, closes its listeners and
// returns copies of the connections it is serving.
func (s *Server) stop() ([]session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.cancel()

	var errs []error
	for ln := range s.listeners {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	sessions := make([]session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, *sess)
	}
	return sessions, errors.Join(errs...)
}

func (s *Server) stopping() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// pause waits for d, and reports false if the server stops first.
func (s *Server) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
		return false
	}
}

func (s *Server) addListener(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping() {
		return false
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Server) removeListener(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
	ln.Close()
}

// addSession registers a new connection and counts its goroutine, unless
// the server is stopping.
func (s *Server) addSession(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping() {
		return false
	}
	s.sessions[sess] = struct{}{}
	s.conns.Add(1)
	return true
}

func (s *Server) removeSession(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
}

// attach records the hub connection of sess, and reports false if the
// server started stopping before it could, in which case it has missed
// the Shutdown or Close and must close c itself.
func (s *Server) attach(sess *session, c *realtime.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess.c = c
	return !s.stopping()
}

// serveConn serves one client from its hello to its end. It returns only
// after the hub connection has ended and the socket is closed.
func (s *Server) serveConn(sess *session) {
	defer s.conns.Done()
	defer s.removeSession(sess)
	t := sess.t
	defer t.nc.Close()
	log := s.log.With(slog.String("remote", t.nc.RemoteAddr().String()))

	// A line may hold the hub's largest frame plus "\r\n"; a longer one
	// stops the scanner with bufio.ErrTooLong.
	sc := bufio.NewScanner(t.nc)
	sc.Buffer(make([]byte, 0, 4<<10), s.hub.MaxMessageSize()+len("\r\n"))

	id, err := s.hello(t, sc)
	if err != nil {
		log.Debug("tcp client refused", slog.Any("err", err))
		if ce := (realtime.CloseError{}); errors.As(err, &ce) {
			t.Close(ce.Code, ce.Reason)
		} else {
			t.abort()
		}
		t.linger()
		return
	}
	if t.isClosed() { // by Shutdown or Close, during the hello
		t.linger()
		return
	}
	c, err := s.hub.Connect(t, realtime.ConnInfo{Identity: id})
	if err != nil {
		t.Close(realtime.CloseGoingAway, "server shutting down")
		t.linger()
		return
	}
	log.Debug("tcp client connected", slog.String("conn", c.ID()))
	if !s.attach(sess, c) {
		c.Close(realtime.CloseGoingAway, "server shutting down")
	}

	s.read(c, t, sc)
	<-c.Done()
	t.linger()
}

// hello returns the identity of the client, from its first line when the
// server has an Authenticate hook. An error that is a realtime.CloseError
// says how to tell the client; any other means the client is gone.
func (s *Server) hello(t *transport, sc *bufio.Scanner) (realtime.Identity, error) {
	if s.opts.Authenticate == nil {
		return realtime.Identity{Data: t.nc.RemoteAddr()}, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.HelloTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()

	t.setReadDeadline(deadline)
	if !sc.Scan() {
		err := sc.Err()
		var ne net.Error
		switch {
		case errors.Is(err, bufio.ErrTooLong):
			return realtime.Identity{}, realtime.CloseError{Code: realtime.CloseTooLarge, Reason: tooLongReason}
		case errors.As(err, &ne) && ne.Timeout():
			return realtime.Identity{}, realtime.CloseError{Code: realtime.ClosePolicyViolation, Reason: "no hello line in time"}
		case err == nil:
			return realtime.Identity{}, io.EOF
		}
		return realtime.Identity{}, fmt.Errorf("read hello: %w", err)
	}
	t.setReadDeadline(time.Time{})

	id, err := s.opts.Authenticate(ctx, t.nc.RemoteAddr(), sc.Bytes())
	if err != nil {
		return realtime.Identity{}, realtime.CloseError{Code: realtime.ClosePolicyViolation, Reason: err.Error()}
	}
	return id, nil
}

const tooLongReason = "line longer than the message size limit"

// read passes each line the client sends to the hub, until the client or
// the hub ends the connection.
func (s *Server) read(c *realtime.Conn, t *transport, sc *bufio.Scanner) {
	ctx := c.Context()
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue // a blank line, as people at a terminal type
		}
		// Receive enforces the hub's MaxMessageSize on lines that fit the
		// scanner and closes the connection with CloseTooLarge itself.
		if c.Receive(ctx, line) != nil {
			return
		}
	}

	switch err := sc.Err(); {
	case err == nil:
		// The client closed its side; it may still read the answers to
		// what it sent.
		c.Close(realtime.CloseNormal, "client closed the connection")
	case errors.Is(err, bufio.ErrTooLong):
		c.CloseNow(realtime.CloseTooLarge, tooLongReason)
	case t.isClosed():
		// The transport was closed and has ended the reading: nothing to
		// report.
	default:
		c.CloseNow(realtime.CloseAbnormal, "read failed: "+err.Error())
	}
}

// isTemporary reports whether an accept error may go away by itself, such
// as running out of file descriptors.
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// transport is the realtime.Transport of one TCP connection: each frame
// goes out as one line.
type transport struct {
	nc           net.Conn
	closeTimeout time.Duration

	// writeMu serialises Write and the close line, so that no line is
	// ever written into the middle of another.
	writeMu sync.Mutex

	// mu guards the close state and every change of the socket's
	// deadlines, so that a deadline set by Close is never replaced by one
	// that a Write or the hello sets.
	mu     sync.Mutex
	closed bool
	broken bool // a write failed, possibly halfway through a line
	abrupt bool // Close closes the socket without a close line
}

func newTransport(nc net.Conn, closeTimeout time.Duration) *transport {
	return &transport{nc: nc, closeTimeout: closeTimeout}
}

var newline = []byte{'\n'}

// Name implements realtime.Transport.
func (t *transport) Name() string { return "tcp" }

// Write implements realtime.Transport: it writes the frame and a line
// break, within ctx's deadline. A ctx that ends during the write cuts it
// short.
func (t *transport) Write(ctx context.Context, f realtime.Frame) error {
	if bytes.ContainsAny(f.Data, "\r\n") {
		// PROTOCOL.md promises frames without line breaks; a frame with
		// one would reach the client as two broken lines.
		return realtime.CloseError{Code: realtime.CloseInternal, Reason: "frame holds a line break"}
	}
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	if err := t.startWrite(ctx); err != nil {
		return err
	}

	// fired tells that the cut has happened, so that it cannot reach a
	// later write.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		t.expireWrite()
		close(fired)
	})
	bufs := net.Buffers{f.Data, newline}
	_, err := bufs.WriteTo(t.nc)
	if !stop() {
		<-fired
	}
	if err != nil {
		t.mu.Lock()
		t.broken = true
		t.mu.Unlock()
		return fmt.Errorf("tcp write: %w", err)
	}
	return nil
}

// startWrite sets the write deadline from ctx, unless the transport is
// closed.
func (t *transport) startWrite(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("tcp write: %w", net.ErrClosed)
	}
	deadline, _ := ctx.Deadline() // the zero time when there is none
	return t.nc.SetWriteDeadline(deadline)
}

// expireWrite makes a write in progress fail at once.
func (t *transport) expireWrite() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nc.SetWriteDeadline(time.Unix(1, 0))
}

// Close implements realtime.Transport. It writes a last line with a
// close message within the close timeout (a Write in progress gets no
// longer than that either), then half-closes the socket: closing it at
// once with unread input would reset the connection, and a reset can
// destroy the close line before the client reads it. The connection's
// goroutine closes the socket after the client closes its side, or after
// the close timeout (see linger).
//
// For CloseAbnormal and ClosePingTimeout, whose peer would not read a
// close line, and once Server.Close has started, it closes the socket at
// once.
func (t *transport) Close(code realtime.CloseCode, reason string) error {
	if code == realtime.CloseAbnormal || code == realtime.ClosePingTimeout || t.isAbrupt() {
		t.abort()
		return nil
	}
	deadline := time.Now().Add(t.closeTimeout)
	if !t.beginClose(deadline) {
		return nil
	}

	// Wait for a Write in progress, which the deadline bounds.
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	if err := t.writeCloseLine(deadline, code, reason); err != nil {
		t.nc.Close()
		return fmt.Errorf("tcp close: %w", err)
	}
	cw, ok := t.nc.(interface{ CloseWrite() error })
	if !ok {
		return t.nc.Close()
	}
	t.mu.Lock()
	t.nc.SetReadDeadline(time.Now().Add(t.closeTimeout))
	t.mu.Unlock()
	return cw.CloseWrite()
}

// beginClose marks the transport closed and bounds a write in progress
// by deadline. It reports false if the transport was closed already.
func (t *transport) beginClose(deadline time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.closed = true
	t.nc.SetWriteDeadline(deadline)
	return true
}

var errBroken = errors.New("an earlier write failed")

// closeMessage is the last message of a connection (see PROTOCOL.md).
type closeMessage struct {
	Type   string             `json:"type"`
	Code   realtime.CloseCode `json:"code"`
	Reason string             `json:"reason"`
}

func (t *transport) writeCloseLine(deadline time.Time, code realtime.CloseCode, reason string) error {
	line, err := json.Marshal([]closeMessage{{Type: "close", Code: code, Reason: reason}})
	if err != nil {
		return err
	}
	t.mu.Lock()
	broken := t.broken
	// Again: a Write that ended as ctx did may have cut the deadline.
	t.nc.SetWriteDeadline(deadline)
	t.mu.Unlock()
	if broken {
		return errBroken // the client would read the line as garbage
	}
	_, err = t.nc.Write(append(line, '\n'))
	return err
}

// skipCloseLine makes later calls of Close close the socket at once,
// without a close line.
func (t *transport) skipCloseLine() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.abrupt = true
}

func (t *transport) isAbrupt() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.abrupt
}

// abort closes the socket at once, without a close line.
func (t *transport) abort() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.nc.Close()
}

func (t *transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// setReadDeadline sets the read deadline, unless Close has set its own.
func (t *transport) setReadDeadline(d time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.nc.SetReadDeadline(d)
	}
}

// linger discards what the client still sends after Close, until the
// client closes its side or the read deadline that Close set passes. It
// must be called only after Close or abort.
func (t *transport) linger() {
	io.Copy(io.Discard, t.nc)
}
