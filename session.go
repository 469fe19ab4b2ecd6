package realtime

import (
	"errors"
	"io"
	"mime"
	"net/http"
	"sync"
)

// SessionHeader carries the session secret of an SSE or long-poll
// connection on the POSTs that send its commands. Being a custom header,
// it makes a browser preflight cross-origin POSTs, so another site cannot
// forge commands.
const SessionHeader = "Realtime-Session"

// sessions maps the session secrets of one transport to connections.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
	// peak is the largest size of m since it was made (see shrunk).
	peak int
}

type session struct {
	// ready is closed once conn is set (nil if the connection could not
	// be made): the welcome that carries the secret may reach the client
	// before Hub.Connect returns.
	ready chan struct{}
	conn  *Conn
	// receive serialises the POSTs of the session: Conn.Receive takes one
	// frame at a time.
	receive sync.Mutex
}

// reserve registers a new session of owner, a transport handler of h,
// before its connection exists, and returns its secret; the caller sets
// the connection with session.set. The secret names this node, so that
// other nodes forward the session's requests here.
func (s *sessions) reserve(h *Hub, owner http.Handler) (string, *session) {
	token := h.newSession(owner)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*session)
	}
	ss := &session{ready: make(chan struct{})}
	s.m[token] = ss
	grown(&s.peak, len(s.m))
	return token, ss
}

// set records the session's connection, or its absence.
func (ss *session) set(c *Conn) {
	ss.conn = c
	close(ss.ready)
}

func (s *sessions) get(token string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[token]
}

func (s *sessions) remove(h *Hub, token string) {
	h.endSession(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, token)
	s.m = shrunk(s.m, &s.peak)
}

// serveCommands handles a POST of client commands to the connection that
// the session header names. Replies travel on the connection itself; the
// POST answers 202 once the commands have run.
func (h *Hub) serveCommands(w http.ResponseWriter, r *http.Request, s *sessions) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		http.Error(w, "realtime: commands must be sent as application/json", http.StatusUnsupportedMediaType)
		return
	}
	ss := h.session(w, r, s, r.Header.Get(SessionHeader))
	if ss == nil {
		return
	}
	c := ss.conn
	frame, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(h.opts.MaxMessageSize)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			// As on WebSocket, an oversized frame ends the connection.
			c.CloseNow(CloseTooLarge, "frame larger than the message size limit")
			http.Error(w, "realtime: frame larger than the message size limit", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "realtime: reading the request failed", http.StatusBadRequest)
		return
	}
	ss.receive.Lock()
	err = c.Receive(r.Context(), frame)
	ss.receive.Unlock()
	if err != nil {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "the session has ended: reconnect")
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// serveClose handles a DELETE that ends the connection the session header
// names, as a client's WebSocket close frame would (CloseNormal).
func (h *Hub) serveClose(w http.ResponseWriter, r *http.Request, s *sessions) {
	ss := h.session(w, r, s, r.Header.Get(SessionHeader))
	if ss == nil {
		return
	}
	ss.conn.Close(CloseNormal, "closed by client")
	w.WriteHeader(http.StatusNoContent)
}

// session finds the session a request addresses with token, checking
// origin and identity, or writes the refusal and returns nil.
//
// For a request that another node forwarded, that node has checked the
// origin and run Authenticate on the request as the client sent it; the
// identity it found is compared here.
func (h *Hub) session(w http.ResponseWriter, r *http.Request, s *sessions, token string) *session {
	fwd, forwarded := forwardedInfo(r)
	if !forwarded {
		if err := h.CheckOrigin(r); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return nil
		}
	}
	if token == "" {
		http.Error(w, "realtime: missing session", http.StatusBadRequest)
		return nil
	}
	ss := s.get(token)
	if ss != nil {
		select {
		case <-ss.ready:
		case <-r.Context().Done():
			ss = nil
		}
	}
	if ss == nil || ss.conn == nil {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "no such session: reconnect")
		return nil
	}
	if h.opts.Authenticate != nil {
		var id Identity
		var err error
		if forwarded {
			id.UserID = fwd.user
		} else {
			id, err = h.opts.Authenticate(r)
		}
		if err != nil || id.UserID != ss.conn.Identity().UserID {
			http.Error(w, "realtime: the session belongs to another identity", http.StatusForbidden)
			return nil
		}
	}
	return ss
}

func writeJSONError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(newMessage("error", 0).str("code", code).str("message", message).end())
}
