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

// forwardedBodyLimit bounds the body of a forwarded response, so that
// request and response fit a direct message (MaxDirectSize) after JSON's
// base64. A long poll served for another node returns at most this much;
// its client acknowledges it and fetches the rest with its next poll.
const forwardedBodyLimit = 256 << 10

// forwardWait bounds how long a forwarded command or close request may
// take at the node that holds its session.
const forwardWait = 15 * time.Second

// forwardedServeLimit bounds how many forwarded requests one node serves
// at once; beyond it they are refused with 503 and the client retries.
const forwardedServeLimit = 4096

// envelope is a forwarded request (Reply false) or its response.
type envelope struct {
	ID    uint64 `json:"id"`
	From  string `json:"from,omitempty"`
	Reply bool   `json:"reply,omitempty"`

	// The request.
	Method     string        `json:"method,omitempty"`
	URL        string        `json:"url,omitempty"`
	Host       string        `json:"host,omitempty"`
	RemoteAddr string        `json:"remote,omitempty"`
	Wait       time.Duration `json:"wait,omitempty"`

	// The response.
	Status int `json:"status,omitempty"`

	Header http.Header `json:"header,omitempty"`
	Body   []byte      `json:"body,omitempty"`
}

// forwarder holds a hub's session handlers and its forwarded requests in
// both directions.
type forwarder struct {
	mu       sync.Mutex
	handlers map[string]http.Handler // by session secret
	next     uint64
	waiting  map[uint64]chan *envelope

	// life bounds the requests served for other nodes; serving tracks them.
	life    context.Context
	end     context.CancelFunc
	serving sync.WaitGroup
	slots   chan struct{}
}

func (f *forwarder) init() {
	f.handlers = make(map[string]http.Handler)
	f.waiting = make(map[uint64]chan *envelope)
	f.life, f.end = context.WithCancel(context.Background())
	f.slots = make(chan struct{}, forwardedServeLimit)
}

// stop ends the requests served for other nodes and waits for them.
func (f *forwarder) stop() {
	f.end()
	f.serving.Wait()
}

// newSession returns a new session secret naming this node, registered
// to handler.
func (h *Hub) newSession(handler http.Handler) string {
	token := h.bp.Node() + "." + randomToken(16)
	h.fwd.mu.Lock()
	h.fwd.handlers[token] = handler
	h.fwd.mu.Unlock()
	return token
}

func (h *Hub) endSession(token string) {
	h.fwd.mu.Lock()
	delete(h.fwd.handlers, token)
	h.fwd.mu.Unlock()
}

// sessionNode returns the node that a session secret names.
func sessionNode(token string) string {
	node, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	return node
}

// forward sends r to the node that holds the session token names, when
// that is another node, and writes its response. It reports whether it
// handled r. wait bounds how long the other node may take.
func (h *Hub) forward(w http.ResponseWriter, r *http.Request, token string, wait time.Duration) bool {
	node := sessionNode(token)
	if node == "" || node == h.bp.Node() {
		return false
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
		Header:     r.Header,
		Body:       body,
	}
	resp, err := h.roundTrip(r.Context(), node, req, wait+5*time.Second)
	switch {
	case err == nil:
	case r.Context().Err() != nil:
		return true // the client went away
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
func (h *Hub) roundTrip(ctx context.Context, node string, req *envelope, timeout time.Duration) (*envelope, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply := make(chan *envelope, 1)
	h.fwd.mu.Lock()
	h.fwd.next++
	req.ID = h.fwd.next
	h.fwd.waiting[req.ID] = reply
	h.fwd.mu.Unlock()
	defer func() {
		h.fwd.mu.Lock()
		delete(h.fwd.waiting, req.ID)
		h.fwd.mu.Unlock()
	}()

	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if len(data) > MaxDirectSize {
		return nil, errors.New("realtime: forwarded request too large")
	}
	if err := h.bp.Send(ctx, node, data); err != nil {
		return nil, err
	}
	select {
	case resp := <-reply:
		return resp, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// direct handles a message sent to this node: a request forwarded by
// another node, or the response to one of ours.
func (h *Hub) direct(data []byte) {
	var e envelope
	if err := json.Unmarshal(data, &e); err != nil {
		h.log.Error("realtime malformed direct message", slog.Any("err", err))
		return
	}
	if e.Reply {
		h.fwd.mu.Lock()
		reply := h.fwd.waiting[e.ID]
		h.fwd.mu.Unlock()
		if reply != nil {
			reply <- &e // buffered, and only one response per ID
		}
		return
	}
	if e.From == "" {
		return
	}
	select {
	case h.fwd.slots <- struct{}{}:
	default:
		h.reply(&e, &envelope{Status: http.StatusServiceUnavailable,
			Body: []byte("realtime: too many forwarded requests: retry\n")})
		return
	}
	h.fwd.serving.Add(1)
	go func() {
		defer h.fwd.serving.Done()
		defer func() { <-h.fwd.slots }()
		h.stats.served.Add(1)
		h.reply(&e, h.serveForwarded(&e))
	}()
}

// serveForwarded serves a request that another node forwarded, with the
// handler of the session it names.
func (h *Hub) serveForwarded(e *envelope) *envelope {
	ctx, cancel := context.WithTimeout(h.fwd.life, e.Wait+time.Second)
	defer cancel()
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
	handler.ServeHTTP(rec, r.WithContext(context.WithValue(ctx, forwardedKey{}, forwardedBodyLimit)))
	return rec.envelope()
}

// reply sends resp to the node that sent req.
func (h *Hub) reply(req, resp *envelope) {
	resp.ID, resp.Reply = req.ID, true
	data, err := json.Marshal(resp)
	if err == nil && len(data) > MaxDirectSize {
		data, err = json.Marshal(&envelope{ID: req.ID, Reply: true, Status: http.StatusInternalServerError,
			Body: []byte("realtime: forwarded response too large\n")})
	}
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(h.fwd.life, 5*time.Second)
	defer cancel()
	if err := h.bp.Send(ctx, req.From, data); err != nil && ctx.Err() == nil {
		h.log.Warn("realtime forwarded response lost", slog.String("node", req.From), slog.Any("err", err))
	}
}

// forwardedKey marks the context of a request served for another node;
// its value is the largest response body that may travel back.
type forwardedKey struct{}

// responseLimit returns how large a response to r may be, or 0 for no
// limit.
func responseLimit(r *http.Request) int {
	n, _ := r.Context().Value(forwardedKey{}).(int)
	return n
}

// recorder is the http.ResponseWriter of a forwarded request.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	limit  int
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
		return 0, errors.New("realtime: forwarded response too large")
	}
	return rec.body.Write(p)
}

func (rec *recorder) envelope() *envelope {
	rec.WriteHeader(http.StatusOK)
	return &envelope{Status: rec.status, Header: rec.header, Body: rec.body.Bytes()}
}
