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
	m  map[string]*Conn
}

func (s *sessions) add(token string, c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*Conn)
	}
	s.m[token] = c
}

func (s *sessions) get(token string) *Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[token]
}

func (s *sessions) remove(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, token)
}

// serveCommands handles a POST of client commands to the connection that
// the session header names. Replies travel on the connection itself; the
// POST answers 202 once the commands have run.
func (h *Hub) serveCommands(w http.ResponseWriter, r *http.Request, s *sessions) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		http.Error(w, "realtime: commands must be sent as application/json", http.StatusUnsupportedMediaType)
		return
	}
	c := h.sessionConn(w, r, s)
	if c == nil {
		return
	}
	frame, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(h.opts.MaxMessageSize)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "realtime: frame larger than the message size limit", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "realtime: reading the request failed", http.StatusBadRequest)
		return
	}
	if err := c.Receive(r.Context(), frame); err != nil {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "the session has ended: reconnect")
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// serveClose handles a DELETE that ends the connection the session header
// names, as a client's WebSocket close frame would (CloseNormal).
func (h *Hub) serveClose(w http.ResponseWriter, r *http.Request, s *sessions) {
	c := h.sessionConn(w, r, s)
	if c == nil {
		return
	}
	c.Close(CloseNormal, "closed by client")
	w.WriteHeader(http.StatusNoContent)
}

// sessionConn finds the connection a request addresses, checking origin,
// session and identity, or writes the refusal and returns nil.
func (h *Hub) sessionConn(w http.ResponseWriter, r *http.Request, s *sessions) *Conn {
	if err := h.CheckOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return nil
	}
	token := r.Header.Get(SessionHeader)
	if token == "" {
		http.Error(w, "realtime: missing "+SessionHeader+" header", http.StatusBadRequest)
		return nil
	}
	c := s.get(token)
	if c == nil {
		writeJSONError(w, http.StatusNotFound, "unknown_session", "no such session: reconnect")
		return nil
	}
	if h.opts.Authenticate != nil {
		id, err := h.opts.Authenticate(r)
		if err != nil || id.UserID != c.Identity().UserID {
			http.Error(w, "realtime: the session belongs to another identity", http.StatusForbidden)
			return nil
		}
	}
	return c
}

func writeJSONError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(newMessage("error", 0).str("code", code).str("message", message).end())
}
