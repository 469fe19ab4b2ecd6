package realtime

import (
	"net/http"
	"strings"
)

// HandlerOptions configures [NewHandler]. The zero value of every field
// means its default; nil means all defaults.
type HandlerOptions struct {
	// NoWebSocket, NoSSE and NoLongPoll leave a transport out. By default
	// all three are offered.
	NoWebSocket, NoSSE, NoLongPoll bool

	WebSocket *WebSocketOptions
	SSE       *SSEOptions
	LongPoll  *LongPollOptions
}

// NewHandler returns one handler that serves everything a client needs
// from h, under any prefix: mount it with a trailing slash, for example
// mux.Handle("/realtime/", realtime.NewHandler(hub, nil)). Below the
// prefix it serves
//
//	ws           the WebSocket transport     (NewWebSocketHandler)
//	sse          the SSE transport           (NewSSEHandler)
//	poll         the long-poll transport     (NewLongPollHandler)
//	negotiate    which transports are offered, as JSON (see PROTOCOL.md)
//	realtime.js  the browser client          (ClientScriptHandler)
//	realtime.d.ts  its TypeScript declarations
//
// Each transport can also be mounted alone with its own constructor.
func NewHandler(h *Hub, opts *HandlerOptions) http.Handler {
	var o HandlerOptions
	if opts != nil {
		o = *opts
	}
	m := &mountHandler{routes: map[string]http.Handler{
		"realtime.js":   ClientScriptHandler(),
		"realtime.d.ts": embeddedFile("web/realtime.d.ts", "application/typescript; charset=utf-8"),
	}}
	neg := []byte(`{"protocol":"` + Subprotocol + `","transports":[`)
	offered := 0
	offer := func(name, path string, h http.Handler) {
		if offered > 0 {
			neg = append(neg, ',')
		}
		offered++
		m.routes[path] = h
		neg = append(neg, `{"name":"`+name+`","path":"`+path+`"}`...)
	}
	if !o.NoWebSocket {
		offer("websocket", "ws", NewWebSocketHandler(h, o.WebSocket))
	}
	if !o.NoSSE {
		offer("sse", "sse", NewSSEHandler(h, o.SSE))
	}
	if !o.NoLongPoll {
		offer("longpoll", "poll", NewLongPollHandler(h, o.LongPoll))
	}
	neg = append(neg, "]}"...)
	m.routes["negotiate"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(neg)
	})
	return m
}

type mountHandler struct {
	routes map[string]http.Handler
}

func (m *mountHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	last := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	if h := m.routes[last]; h != nil {
		h.ServeHTTP(w, r)
		return
	}
	http.NotFound(w, r)
}
