package realtime

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// LongPollOptions configures the long-poll transport. The zero value of
// every field means its default; nil means all defaults.
type LongPollOptions struct {
	// PollTimeout is how long a poll waits for messages before it returns
	// empty. Keep it below the http.Server's WriteTimeout and proxies'
	// idle timeouts. The default, 0, is 25 seconds.
	PollTimeout time.Duration

	// SessionTimeout is how long a session lives without a poll waiting.
	// After it, the connection closes with ClosePingTimeout. The default,
	// 0, is 30 seconds.
	SessionTimeout time.Duration
}

// NewLongPollHandler returns the long-poll transport of h as an
// http.Handler, built on the exported Hub API alone.
//
// A GET without a session, admitted with [Hub.Admit], opens one; a cursor
// query parameter resumes from a cursor as SSE's Last-Event-ID does. A GET
// with session and ack waits up to the poll timeout for messages and
// returns them as a JSON object holding seq, cursor and messages (see
// PROTOCOL.md). ack acknowledges every batch up to that seq: what was
// returned but not acknowledged is returned again, so a lost response
// loses nothing, and nothing acknowledged comes twice. A newer poll on
// the same session ends an older one, which returns empty. The client
// sends commands by POST with the session in the [SessionHeader] header.
//
// Messages wait for the next poll in the session, in a backlog of up to
// Options.QueueBytes; behind it the connection's queue fills, and its
// slow-consumer policy applies as on other transports. A session that
// nobody polls expires after the session timeout.
func NewLongPollHandler(h *Hub, opts *LongPollOptions) http.Handler {
	var o LongPollOptions
	if opts != nil {
		o = *opts
	}
	if o.PollTimeout <= 0 {
		o.PollTimeout = 25 * time.Second
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 30 * time.Second
	}
	return &pollHandler{hub: h, opts: o}
}

type pollHandler struct {
	hub      *Hub
	opts     LongPollOptions
	sessions sessions

	mu     sync.Mutex
	byConn map[*Conn]*pollTransport
	// byConnPeak is the largest size of byConn since it was made (see
	// shrunk).
	byConnPeak int
}

func (p *pollHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token := r.Header.Get(SessionHeader)
	wait := forwardWait
	if r.Method == http.MethodGet {
		token, wait = r.URL.Query().Get("session"), p.opts.PollTimeout
	}
	if p.hub.forward(w, r, token, wait) {
		return
	}
	switch {
	case r.Method == http.MethodPost:
		p.hub.serveCommands(w, r, &p.sessions)
	case r.Method == http.MethodDelete:
		p.hub.serveClose(w, r, &p.sessions)
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "realtime: long-poll takes GET, POST and DELETE", http.StatusMethodNotAllowed)
	case r.URL.Query().Has("session"):
		p.poll(w, r)
	default:
		p.open(w, r)
	}
}

func (p *pollHandler) open(w http.ResponseWriter, r *http.Request) {
	id, ok := p.hub.Admit(w, r)
	if !ok {
		return
	}
	t := &pollTransport{
		bytesLimit: p.hub.opts.QueueBytes,
		ready:      make(chan struct{}),
		space:      make(chan struct{}),
	}
	t.expiry = time.AfterFunc(p.opts.SessionTimeout, t.expire)
	token, ss := p.sessions.reserve(p.hub, p)
	c, err := p.hub.Connect(t, ConnInfo{Identity: id, Session: token, Cursor: r.URL.Query().Get("cursor")})
	if err != nil {
		ss.set(nil)
		p.sessions.remove(p.hub, token)
		t.expiry.Stop()
		writeJSONError(w, http.StatusServiceUnavailable, "unavailable", "server shutting down")
		return
	}
	t.mu.Lock()
	t.conn = c
	t.mu.Unlock()
	p.mu.Lock()
	if p.byConn == nil {
		p.byConn = make(map[*Conn]*pollTransport)
	}
	p.byConn[c] = t
	grown(&p.byConnPeak, len(p.byConn))
	p.mu.Unlock()
	ss.set(c)
	// Forget the session once its connection has ended and a poll has had
	// the time to fetch the close message.
	context.AfterFunc(c.Context(), func() {
		time.AfterFunc(p.opts.SessionTimeout, func() { p.forget(token, c) })
	})

	p.respond(w, r, t, 0)
}

func (p *pollHandler) forget(token string, c *Conn) {
	p.sessions.remove(p.hub, token)
	p.mu.Lock()
	delete(p.byConn, c)
	p.byConn = shrunk(p.byConn, &p.byConnPeak)
	p.mu.Unlock()
}

func (p *pollHandler) poll(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ss := p.hub.session(w, r, &p.sessions, q.Get("session"))
	if ss == nil {
		return
	}
	p.mu.Lock()
	t := p.byConn[ss.conn]
	p.mu.Unlock()
	if t == nil {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "no such session: open a new one with your cursor")
		return
	}
	ack, err := strconv.ParseUint(q.Get("ack"), 10, 64)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, "bad_request", "ack must be the seq of the last batch received")
		return
	}
	p.respond(w, r, t, ack)
}

// respond waits for batches after ack and writes them.
func (p *pollHandler) respond(w http.ResponseWriter, r *http.Request, t *pollTransport, ack uint64) {
	// The response must outlive the server's WriteTimeout if the poll
	// timeout is longer.
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Now().Add(p.opts.PollTimeout + 10*time.Second))

	body, err := t.poll(r.Context(), ack, p.opts.PollTimeout, p.opts.SessionTimeout, responseLimit(r))
	switch {
	case errors.Is(err, errSessionEnded):
		writeJSONError(w, http.StatusNotFound, "unknown_session", "the session has ended: open a new one with your cursor")
		return
	case err != nil:
		writeJSONError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache, no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(body)
}

// pollTransport is the Transport of one long-poll session: it keeps the
// batches that no poll has acknowledged yet.
type pollTransport struct {
	bytesLimit int
	expiry     *time.Timer // runs while no poll waits

	mu      sync.Mutex
	conn    *Conn
	batches []pollBatch
	bytes   int
	seq     uint64        // of the last batch
	cursor  string        // as of the last batch
	ready   chan struct{} // closed and replaced when a batch arrives
	space   chan struct{} // closed and replaced when batches are acknowledged
	waiting chan struct{} // closed to end the poll in progress
	closed  bool
}

type pollBatch struct {
	seq    uint64
	data   []byte // the messages of a frame, without the brackets
	cursor string // as of this batch
}

func (t *pollTransport) Name() string { return "longpoll" }

// expire closes a session that nobody polled for the session timeout.
func (t *pollTransport) expire() {
	t.mu.Lock()
	c := t.conn
	t.mu.Unlock()
	if c != nil {
		c.Close(ClosePingTimeout, "long-poll session expired")
	}
}

// Write adds the frame to the backlog that polls take. While the backlog
// is full it waits for a poll to acknowledge some, so that the connection's
// queue and its slow-consumer policy apply as on other transports.
func (t *pollTransport) Write(ctx context.Context, f Frame) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		if t.closed {
			return ErrClosed
		}
		if len(t.batches) == 0 || t.bytes+len(f.Data) <= t.bytesLimit {
			t.add(f.Data, f.Cursor())
			return nil
		}
		space := t.space
		t.mu.Unlock()
		select {
		case <-space:
			t.mu.Lock()
		case <-ctx.Done():
			t.mu.Lock()
			return CloseError{CloseSlowConsumer, "slow consumer: no poll took the backlog in time"}
		}
	}
}

// add queues a frame's messages as the next batch. t.mu is held.
func (t *pollTransport) add(frame []byte, cursor string) {
	t.seq++
	t.batches = append(t.batches, pollBatch{t.seq, append([]byte(nil), frame[1:len(frame)-1]...), cursor})
	t.bytes += len(frame)
	t.cursor = cursor
	close(t.ready)
	t.ready = make(chan struct{})
}

// Close queues the close message for the next poll; nothing else is
// written after it.
func (t *pollTransport) Close(code CloseCode, reason string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.add([]byte(closeFrame(code, reason)), t.cursor)
	t.closed = true
	close(t.space) // a waiting Write returns ErrClosed
	t.expiry.Stop()
	return nil
}

// poll drops the batches up to ack, waits until there is a batch after
// it, the timeout passes, ctx ends or a newer poll arrives, and returns
// the response body.
//
// With a limit above 0 the body holds only as many batches (at least one)
// as keep it within about limit bytes: the rest wait for the next poll.
func (t *pollTransport) poll(ctx context.Context, ack uint64, timeout, sessionTimeout time.Duration, limit int) ([]byte, error) {
	t.mu.Lock()
	if ack > t.seq {
		t.mu.Unlock()
		return nil, errBadAck
	}
	acked := 0
	for acked < len(t.batches) && t.batches[acked].seq <= ack {
		t.bytes -= len(t.batches[acked].data) + 2
		acked++
	}
	if acked > 0 {
		t.batches = t.batches[acked:]
		if !t.closed {
			close(t.space)
			t.space = make(chan struct{})
		}
	}
	if t.closed && len(t.batches) == 0 {
		t.mu.Unlock()
		return nil, errSessionEnded
	}
	if t.waiting != nil {
		close(t.waiting) // the older poll returns empty
	}
	waiting := make(chan struct{})
	t.waiting = waiting
	t.expiry.Stop()
	ready := t.ready
	empty := len(t.batches) == 0
	t.mu.Unlock()

	if empty {
		timer := time.NewTimer(timeout)
		select {
		case <-ready:
		case <-timer.C:
		case <-waiting:
		case <-ctx.Done():
		}
		timer.Stop()
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiting == waiting {
		t.waiting = nil
		if !t.closed {
			t.expiry.Reset(sessionTimeout)
		}
	}
	body := []byte(`{"seq":`)
	select {
	case <-waiting:
		// Superseded: the newer poll gets the batches.
		body = strconv.AppendUint(body, ack, 10)
		body = append(body, `,"messages":[]}`...)
		return body, nil
	default:
	}
	batches, cursor := t.batches, t.cursor
	if limit > 0 {
		// The body ends with the cursor of its last batch: each prefix
		// is measured with its own.
		size := 64 + len(strconv.FormatUint(t.seq, 10))
		for i, b := range batches {
			size += len(b.data) + 1
			if i > 0 && size+len(b.cursor) > limit {
				batches, cursor = batches[:i], batches[i-1].cursor
				break
			}
		}
	}
	last := ack
	if n := len(batches); n > 0 {
		last = batches[n-1].seq
	}
	body = strconv.AppendUint(body, last, 10)
	body = append(body, `,"cursor":`...)
	body = appendString(body, cursor)
	body = append(body, `,"messages":[`...)
	for i, b := range batches {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, b.data...)
	}
	return append(body, "]}"...), nil
}

var (
	errBadAck       = errors.New("realtime: ack is ahead of the session")
	errSessionEnded = errors.New("realtime: the session has ended")
)
