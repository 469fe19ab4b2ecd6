package realtime

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// SSEOptions configures the Server-Sent Events transport. The zero value
// of every field means its default; nil means all defaults.
type SSEOptions struct {
	// Heartbeat is how often an idle stream gets a comment line, so that
	// proxies and browsers keep it open and a dead client is noticed. The
	// default, 0, is 15 seconds.
	Heartbeat time.Duration

	// Retry is the reconnection delay the stream suggests to EventSource.
	// The default, 0, is 2 seconds.
	Retry time.Duration
}

// NewSSEHandler returns the Server-Sent Events transport of h as an
// http.Handler, built on the exported Hub API alone.
//
// A GET, admitted with [Hub.Admit], opens an event stream. Each event is
// one frame of PROTOCOL.md in its data field, with the connection's
// cursor (see [Frame.Cursor]) as its id, so that a reconnecting
// EventSource resumes by itself: the Last-Event-ID header, or a
// lastEventId query parameter, hands the cursor back ([ConnInfo.Cursor]).
// The welcome message carries a session secret; the client sends its
// commands by POST to the same URL with that secret in the
// [SessionHeader] header and a JSON body.
//
// Over HTTP/1.x the stream takes over the connection (it is hijacked,
// through middleware that offers Unwrap): the GET returns once the stream
// is open, headers that middleware set are sent along, the body ends with
// the connection, and the stream holds only a small reader goroutine and
// a heartbeat timer. Over HTTP/2, or when the writer cannot be hijacked,
// the stream runs through the ResponseWriter and the GET returns when the
// connection ends; a ResponseWriter that cannot flush either (a
// middleware that hides http.Flusher without an Unwrap method) gets a 500
// with an explanation. Either way the stream outlives the http.Server's
// WriteTimeout.
func NewSSEHandler(h *Hub, opts *SSEOptions) http.Handler {
	var o SSEOptions
	if opts != nil {
		o = *opts
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.Retry <= 0 {
		o.Retry = 2 * time.Second
	}
	return &sseHandler{hub: h, opts: o}
}

type sseHandler struct {
	hub      *Hub
	opts     SSEOptions
	sessions sessions
}

func (s *sseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && s.hub.forward(w, r, r.Header.Get(SessionHeader), forwardWait) {
		return
	}
	switch r.Method {
	case http.MethodGet:
		s.stream(w, r)
	case http.MethodPost:
		s.hub.serveCommands(w, r, &s.sessions)
	case http.MethodDelete:
		s.hub.serveClose(w, r, &s.sessions)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "realtime: SSE takes GET, POST and DELETE", http.StatusMethodNotAllowed)
	}
}

func (s *sseHandler) stream(w http.ResponseWriter, r *http.Request) {
	id, ok := s.hub.Admit(w, r)
	if !ok {
		return
	}
	if s.streamHijacked(w, r, id) {
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-store")
	h.Set("X-Accel-Buffering", "no")
	if err := rc.Flush(); err != nil {
		http.Error(w, "realtime: the response writer cannot flush, so events would stall; "+
			"give middleware an Unwrap method", http.StatusInternalServerError)
		return
	}
	// The stream lives longer than any WriteTimeout; each write sets its
	// own deadline.
	rc.SetWriteDeadline(time.Time{})
	t := &sseTransport{w: w, rc: rc}
	t.writeRaw("retry: " + strconv.FormatInt(s.opts.Retry.Milliseconds(), 10) + "\n\n")

	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = r.URL.Query().Get("lastEventId")
	}
	token, ss := s.sessions.reserve(s.hub, s)
	defer s.sessions.remove(s.hub, token)
	c, err := s.hub.Connect(t, ConnInfo{Identity: id, Session: token, Cursor: cursor})
	ss.set(c)
	if err != nil {
		t.writeRaw("data: " + closeFrame(CloseGoingAway, "server shutting down") + "\n\n")
		return
	}

	tick := time.NewTicker(s.opts.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-c.Done():
			return
		case <-r.Context().Done():
			c.CloseNow(CloseAbnormal, "client went away")
			<-c.Done()
			return
		case <-tick.C:
			if err := t.heartbeat(); err != nil {
				c.CloseNow(CloseAbnormal, "heartbeat failed: "+err.Error())
			}
		}
	}
}

// closeFrame is the frame that tells a client without close frames why
// its connection ended.
func closeFrame(code CloseCode, reason string) string {
	return "[" + string(newMessage("close", 0).uint("code", uint64(code)).str("reason", reason).end()) + "]"
}

// sseTransport is the Transport of one event stream.
type sseTransport struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	mu     sync.Mutex // serialises writes to w
	closed bool
}

func (t *sseTransport) Name() string { return "sse" }

func (t *sseTransport) Write(ctx context.Context, f Frame) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	// A write outlives neither ctx nor its deadline.
	if d, ok := ctx.Deadline(); ok {
		t.rc.SetWriteDeadline(d)
		defer t.rc.SetWriteDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { t.rc.SetWriteDeadline(time.Now()) })
	defer stop()
	// The cursor is query-escaped and the frame holds no line break, so
	// each fits its field.
	// Every event has an id, empty while the connection is in no channel,
	// so that a browser never resumes from a stale one.
	buf := make([]byte, 0, len(f.Data)+64)
	buf = append(buf, "id: "...)
	buf = append(buf, f.Cursor()...)
	buf = append(buf, "\ndata: "...)
	buf = append(buf, f.Data...)
	buf = append(buf, "\n\n"...)
	if _, err := t.w.Write(buf); err != nil {
		return err
	}
	return t.rc.Flush()
}

func (t *sseTransport) heartbeat() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer t.rc.SetWriteDeadline(time.Time{})
	if _, err := t.w.Write([]byte(": ping\n\n")); err != nil {
		return err
	}
	return t.rc.Flush()
}

// writeRaw writes before the connection exists; errors surface on the
// next write.
func (t *sseTransport) writeRaw(s string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.w.Write([]byte(s))
	t.rc.Flush()
}

// Close ends the stream with a close message. A write in progress is cut
// short by an immediate deadline.
func (t *sseTransport) Close(code CloseCode, reason string) error {
	if code == CloseAbnormal || code == ClosePingTimeout {
		t.rc.SetWriteDeadline(time.Now()) // unblock a stuck write
		t.mu.Lock()
		t.closed = true
		t.mu.Unlock()
		return nil
	}
	// A write in progress has as long as a WebSocket close frame gets to
	// finish, so that a client catching up still learns why it ends.
	t.rc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	t.rc.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := t.w.Write([]byte("data: " + closeFrame(code, reason) + "\n\n"))
	if err == nil {
		err = t.rc.Flush()
	}
	if errors.Is(err, http.ErrNotSupported) {
		return nil
	}
	return err
}
