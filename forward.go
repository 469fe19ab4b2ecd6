package realtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A cluster needs no sticky sessions. An SSE or long-poll session's
// secret starts with the name of the node that holds its connection
// (Backplane.Node). A request for the session that reaches another node
// travels to the holder through the backplane as a direct message; the
// holder serves it with the same handler as a local request and sends the
// response back the same way.

// forwardedBodyLimit bounds the body of a forwarded response, so that it
// fits a direct message (MaxDirectSize) with its envelope. A long poll
// served for another node returns at most this much; its client
// acknowledges it and fetches the rest with its next poll. A single
// message always fits: Options.MaxMessageSize is at most
// MaxMessageSizeLimit, which base64 grows to about 342 KiB.
const forwardedBodyLimit = 400 << 10

// Forwarded requests that one node serves at once for others: long polls
// wait, so they have a budget of their own; commands are quick. Beyond
// them requests are refused with 503 and the client retries.
const (
	forwardedPollLimit    = 1 << 16
	forwardedCommandLimit = 4096
)

// forwardWait bounds how long a forwarded command or close request may
// take at the node that holds its session.
const forwardWait = 15 * time.Second

// errHubClosing fails the forwarded requests of a hub that shuts down.
var errHubClosing = errors.New("realtime: the hub is shutting down")

// envelope heads a direct message between hubs: a forwarded request, its
// response, or the cancellation of a request whose client went away. On
// the wire it is JSON, a newline, and the body as it is.
type envelope struct {
	ID     uint64 `json:"id"`
	From   string `json:"from,omitempty"`
	Reply  bool   `json:"reply,omitempty"`
	Cancel bool   `json:"cancel,omitempty"`

	// The request, with what the forwarding node checked: origin and
	// Authenticate ran there, on the request as the client sent it.
	Method     string        `json:"method,omitempty"`
	URL        string        `json:"url,omitempty"`
	Host       string        `json:"host,omitempty"`
	RemoteAddr string        `json:"remote,omitempty"`
	Wait       time.Duration `json:"wait,omitempty"`
	User       string        `json:"user,omitempty"`

	// The response.
	Status int `json:"status,omitempty"`

	Header http.Header `json:"header,omitempty"`
	Body   []byte      `json:"-"`
}

func (e *envelope) marshal() ([]byte, error) {
	head, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	data := make([]byte, 0, len(head)+1+len(e.Body))
	data = append(append(append(data, head...), '\n'), e.Body...)
	if len(data) > MaxDirectSize {
		return nil, errEnvelopeTooLarge
	}
	return data, nil
}

var errEnvelopeTooLarge = errors.New("realtime: forwarded message too large")

func (e *envelope) unmarshal(data []byte) error {
	head, body, ok := bytes.Cut(data, []byte("\n"))
	if !ok {
		return errors.New("realtime: direct message without a body separator")
	}
	if err := json.Unmarshal(head, e); err != nil {
		return err
	}
	e.Body = body
	return nil
}

// forwarder holds a hub's session handlers and its forwarded requests in
// both directions.
type forwarder struct {
	mu       sync.Mutex
	handlers map[string]http.Handler // by session secret
	next     uint64
	waiting  map[uint64]chan *envelope
	// serving holds the cancel function of each request served for
	// another node, until it has been served. stop cancels them all: the
	// hub owns these requests through this map, and their contexts are
	// children of no long-lived context, whose list of children would
	// keep the room of its busiest moment.
	serving map[servingKey]context.CancelFunc
	closing bool
	stopped bool

	// The largest sizes of the maps since they were made (see shrunk).
	handlersPeak, waitingPeak, servingPeak int

	// running tracks the requests served for other nodes and every reply.
	running sync.WaitGroup
	polls   chan struct{}
	others  chan struct{}
}

type servingKey struct {
	from string
	id   uint64
}

func (f *forwarder) init() {
	f.handlers = make(map[string]http.Handler)
	f.waiting = make(map[uint64]chan *envelope)
	f.serving = make(map[servingKey]context.CancelFunc)
	f.polls = make(chan struct{}, forwardedPollLimit)
	f.others = make(chan struct{}, forwardedCommandLimit)
}

// shutdown fails the requests this node forwarded and still waits for,
// and every later one: replies no longer arrive once the hub stops
// receiving.
func (f *forwarder) shutdown() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closing = true
	for id, reply := range f.waiting {
		close(reply)
		delete(f.waiting, id)
	}
	f.waiting = shrunk(f.waiting, &f.waitingPeak)
}

// stop ends the requests served for other nodes and waits for them and
// their replies.
func (f *forwarder) stop() {
	f.mu.Lock()
	f.stopped = true
	for _, cancel := range f.serving {
		cancel()
	}
	f.mu.Unlock()
	f.running.Wait()
}

// unwait takes the request id out of those waiting for a reply and
// returns its reply channel, or nil if it was no longer waiting.
func (f *forwarder) unwait(id uint64) chan *envelope {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := f.waiting[id]
	delete(f.waiting, id)
	f.waiting = shrunk(f.waiting, &f.waitingPeak)
	return reply
}

// served forgets a request served for another node once it is done, and
// cancels its context.
func (f *forwarder) served(key servingKey, cancel context.CancelFunc) {
	f.mu.Lock()
	delete(f.serving, key)
	f.serving = shrunk(f.serving, &f.servingPeak)
	f.mu.Unlock()
	cancel()
}

// newSession returns a new session secret naming this node, registered
// to handler.
func (h *Hub) newSession(handler http.Handler) string {
	token := h.bp.Node() + "." + randomToken(16)
	h.fwd.mu.Lock()
	h.fwd.handlers[token] = handler
	grown(&h.fwd.handlersPeak, len(h.fwd.handlers))
	h.fwd.mu.Unlock()
	return token
}

func (h *Hub) endSession(token string) {
	h.fwd.mu.Lock()
	delete(h.fwd.handlers, token)
	h.fwd.handlers = shrunk(h.fwd.handlers, &h.fwd.handlersPeak)
	h.fwd.mu.Unlock()
}

// sessionNode returns the node that a session secret names, or "" if the
// secret names none that could exist.
func sessionNode(token string) string {
	node, _, ok := strings.Cut(token, ".")
	if !ok || !validNode(node) {
		return ""
	}
	return node
}

// validNode reports whether name can be a node's name: 1 to 64 of
// [A-Za-z0-9_-], as Backplane.Node promises.
func validNode(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// forward sends r to the node that holds the session token names, when
// that is another node, and writes its response. It reports whether it
// handled r. wait bounds how long the other node may take.
//
// Origin and Authenticate are checked here, where the request arrived
// with its TLS state and context; the node holding the session compares
// the identity found here with the session's.
func (h *Hub) forward(w http.ResponseWriter, r *http.Request, token string, wait time.Duration) bool {
	if token == "" {
		return false // no session: a new connection, or a bad request
	}
	node := sessionNode(token)
	if node == h.bp.Node() {
		return false
	}
	if node == "" {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "no such session: reconnect")
		return true
	}
	if err := h.CheckOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return true
	}
	var user string
	if h.opts.Authenticate != nil {
		id, err := h.opts.Authenticate(r)
		if err != nil {
			http.Error(w, "realtime: the session belongs to another identity", http.StatusForbidden)
			return true
		}
		user = id.UserID
	}
	h.stats.forwarded.Add(1)
	// The holder enforces the size limit, and closes the connection of a
	// session that sends too much, as it would for a local request.
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(h.opts.MaxMessageSize)+1))
	if err != nil {
		http.Error(w, "realtime: reading the request failed", http.StatusBadRequest)
		return true
	}
	if r.Method == http.MethodGet {
		// A long poll outlives the server's WriteTimeout, as it does when
		// served here.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + 10*time.Second))
	}
	req := &envelope{
		From:       h.bp.Node(),
		Method:     r.Method,
		URL:        r.URL.RequestURI(),
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Wait:       wait,
		User:       user,
		Header:     r.Header,
		Body:       body,
	}
	resp, err := h.roundTrip(r.Context(), node, req, wait+5*time.Second)
	switch {
	case err == nil:
	case r.Context().Err() != nil:
		return true // the client went away
	case errors.Is(err, errEnvelopeTooLarge):
		http.Error(w, "realtime: request headers too large to forward", http.StatusRequestHeaderFieldsTooLarge)
		return true
	case errors.Is(err, errHubClosing):
		writeJSONError(w, http.StatusServiceUnavailable, "unavailable", "server shutting down: retry")
		return true
	case errors.Is(err, ErrUnknownNode), errors.Is(err, context.DeadlineExceeded):
		h.stats.forwardFailures.Add(1)
		h.log.Warn("realtime forwarded request failed", slog.String("node", node), slog.Any("err", err))
		writeJSONError(w, http.StatusNotFound, "unknown_session",
			"the node holding the session does not answer: reconnect")
		return true
	default:
		h.stats.forwardFailures.Add(1)
		h.log.Warn("realtime forwarded request failed", slog.String("node", node), slog.Any("err", err))
		writeJSONError(w, http.StatusServiceUnavailable, "unavailable", "forwarding to the session's node failed: retry")
		return true
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.Status)
	w.Write(resp.Body)
	return true
}

// roundTrip sends req to node and waits up to timeout for its response.
// When ctx ends first, it tells node to stop serving req.
func (h *Hub) roundTrip(ctx context.Context, node string, req *envelope, timeout time.Duration) (*envelope, error) {
	reply := make(chan *envelope, 1)
	h.fwd.mu.Lock()
	if h.fwd.closing {
		h.fwd.mu.Unlock()
		return nil, errHubClosing
	}
	h.fwd.next++
	req.ID = h.fwd.next
	h.fwd.waiting[req.ID] = reply
	grown(&h.fwd.waitingPeak, len(h.fwd.waiting))
	h.fwd.mu.Unlock()
	defer h.fwd.unwait(req.ID)

	data, err := req.marshal()
	if err != nil {
		return nil, err
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := h.bp.Send(tctx, node, data); err != nil {
		return nil, err
	}
	select {
	case resp, ok := <-reply:
		if !ok {
			return nil, errHubClosing
		}
		return resp, nil
	case <-tctx.Done():
		if ctx.Err() != nil {
			// The client went away: free what the other node holds for
			// it, such as a waiting long poll.
			h.send(req.From, node, &envelope{ID: req.ID, From: req.From, Cancel: true})
		}
		return nil, tctx.Err()
	}
}

// send sends a short message to node, waiting at most a few seconds.
func (h *Hub) send(from, node string, e *envelope) {
	data, err := e.marshal()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.bp.Send(ctx, node, data); err != nil && !errors.Is(err, ErrClosed) {
		h.log.Warn("realtime direct message lost", slog.String("node", node), slog.Any("err", err))
	}
}

// direct handles a message sent to this node: a request forwarded by
// another node, its cancellation, or the response to one of ours.
func (h *Hub) direct(data []byte) {
	var e envelope
	if err := e.unmarshal(data); err != nil {
		h.log.Error("realtime malformed direct message", slog.Any("err", err))
		return
	}
	switch {
	case e.Reply:
		reply := h.fwd.unwait(e.ID)
		if reply != nil {
			reply <- &e // buffered, and taken out of waiting: sent once
		}
		return
	case e.Cancel:
		h.fwd.mu.Lock()
		cancel := h.fwd.serving[servingKey{e.From, e.ID}]
		h.fwd.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return
	case e.From == "" || !validNode(e.From):
		return
	}
	slots := h.fwd.others
	if e.Method == http.MethodGet {
		slots = h.fwd.polls
	}
	h.fwd.running.Add(1)
	select {
	case slots <- struct{}{}:
	default:
		h.stats.forwardRefused.Add(1)
		go func() {
			defer h.fwd.running.Done()
			resp := &envelope{Status: http.StatusServiceUnavailable, Header: http.Header{"Content-Type": {"application/json"}}}
			resp.Body = newMessage("error", 0).str("code", "unavailable").str("message", "too many forwarded requests: retry").end()
			h.reply(&e, resp)
		}()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.Wait+time.Second)
	key := servingKey{e.From, e.ID}
	h.fwd.mu.Lock()
	if h.fwd.stopped {
		cancel()
	}
	h.fwd.serving[key] = cancel
	grown(&h.fwd.servingPeak, len(h.fwd.serving))
	h.fwd.mu.Unlock()
	go func() {
		defer h.fwd.running.Done()
		defer func() { <-slots }()
		defer h.fwd.served(key, cancel)
		h.stats.served.Add(1)
		h.reply(&e, h.serveForwarded(ctx, &e))
	}()
}

// forwardedRequest is what the context of a request served for another
// node carries.
type forwardedRequest struct {
	user  string // the identity that node's Authenticate found
	limit int    // the largest response body that may travel back
}

type forwardedKey struct{}

// forwardedInfo returns what another node checked of r, if r was
// forwarded.
func forwardedInfo(r *http.Request) (*forwardedRequest, bool) {
	f, ok := r.Context().Value(forwardedKey{}).(*forwardedRequest)
	return f, ok
}

// responseLimit returns how large a response to r may be, or 0 for no
// limit.
func responseLimit(r *http.Request) int {
	if f, ok := forwardedInfo(r); ok {
		return f.limit
	}
	return 0
}

// serveForwarded serves a request that another node forwarded, with the
// handler of the session it names.
func (h *Hub) serveForwarded(ctx context.Context, e *envelope) *envelope {
	r, err := http.NewRequestWithContext(ctx, e.Method, e.URL, bytes.NewReader(e.Body))
	if err != nil {
		return &envelope{Status: http.StatusBadRequest, Body: []byte("realtime: bad forwarded request\n")}
	}
	r.RequestURI = e.URL
	r.Host = e.Host
	r.RemoteAddr = e.RemoteAddr
	if e.Header != nil {
		r.Header = e.Header
	}
	token := r.Header.Get(SessionHeader)
	if token == "" {
		token = r.URL.Query().Get("session")
	}
	h.fwd.mu.Lock()
	handler := h.fwd.handlers[token]
	h.fwd.mu.Unlock()
	rec := &recorder{header: make(http.Header), limit: forwardedBodyLimit}
	if handler == nil {
		writeJSONError(rec, http.StatusNotFound, "unknown_session", "no such session: reconnect")
		return rec.envelope()
	}
	info := &forwardedRequest{user: e.User, limit: forwardedBodyLimit}
	handler.ServeHTTP(rec, r.WithContext(context.WithValue(ctx, forwardedKey{}, info)))
	return rec.envelope()
}

// reply sends resp to the node that sent req. It does not depend on the
// hub's life: a reply carrying a connection's close message is sent while
// the hub shuts down.
func (h *Hub) reply(req, resp *envelope) {
	resp.ID, resp.Reply = req.ID, true
	if _, err := resp.marshal(); err != nil {
		resp = &envelope{ID: req.ID, Reply: true, Status: http.StatusInternalServerError,
			Body: []byte("realtime: forwarded response too large\n")}
	}
	h.send(h.bp.Node(), req.From, resp)
}

// recorder is the http.ResponseWriter of a forwarded request.
type recorder struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	limit    int
	overflow bool
}

func (rec *recorder) Header() http.Header { return rec.header }

func (rec *recorder) WriteHeader(status int) {
	if rec.status == 0 {
		rec.status = status
	}
}

func (rec *recorder) Write(p []byte) (int, error) {
	rec.WriteHeader(http.StatusOK)
	if rec.body.Len()+len(p) > rec.limit {
		rec.overflow = true
		return 0, errEnvelopeTooLarge
	}
	return rec.body.Write(p)
}

func (rec *recorder) envelope() *envelope {
	if rec.overflow {
		// Not a truncated body: an error the client acts on.
		return &envelope{Status: http.StatusInternalServerError, Header: http.Header{"Content-Type": {"application/json"}},
			Body: newMessage("error", 0).str("code", "internal").str("message", "forwarded response too large").end()}
	}
	rec.WriteHeader(http.StatusOK)
	return &envelope{Status: rec.status, Header: rec.header, Body: rec.body.Bytes()}
}
