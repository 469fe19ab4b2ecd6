package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// connectOpts returns the connect() options, as a JS object literal, for
// the hub mounted at /realtime/ with transport forced ("" negotiates) and
// any further fields, such as "minBackoff: 3000".
func connectOpts(transport string, fields ...string) string {
	all := []string{"url: '/realtime/'"}
	if transport != "" {
		all = append(all, fmt.Sprintf("transport: %q", transport))
	}
	return "{" + strings.Join(append(all, fields...), ", ") + "}"
}

// TestExchange has two pages (two browser contexts, as two users) talk
// through one channel over each forced transport, and with negotiation,
// which must pick WebSocket.
func TestExchange(t *testing.T) {
	for _, tc := range []struct{ name, force, want string }{
		{"websocket", "websocket", "websocket"},
		{"sse", "sse", "sse"},
		{"longpoll", "longpoll", "longpoll"},
		{"negotiated", "", "websocket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{})
			a, b := newTab(t, "alice", nil), newTab(t, "bob", nil)
			for _, tb := range []*tab{a, b} {
				tb.open(srv.URL, "")
				tb.connect("c", connectOpts(tc.force), "room")
			}
			for _, tb := range []*tab{a, b} {
				tb.waitJoined("c", connectTimeout)
			}

			const n = 5
			for i := 1; i <= n; i++ {
				for _, tb := range []*tab{a, b} {
					r := eval[publishResult](tb, fmt.Sprintf(`e2e.publish('c', 'room', {from: %q, n: %d})`, tb.name, i))
					require.True(t, r.OK, "publish from %s: %+v", tb.name, r)
					assert.NotEmpty(t, r.Epoch, "publish from %s resolves with the epoch", tb.name)
					assert.Positive(t, r.Offset, "publish from %s resolves with the offset", tb.name)
				}
			}
			for _, tb := range []*tab{a, b} {
				tb.wait(fmt.Sprintf(`e2e.clients.c.msgs.room.length >= %d`, 2*n), 10*time.Second, "every message")
			}

			for _, tb := range []*tab{a, b} {
				var got []struct {
					From string `json:"from"`
					N    int    `json:"n"`
				}
				raw := eval[json.RawMessage](tb, `e2e.data('c', 'room')`)
				require.NoError(t, json.Unmarshal(raw, &got))
				assert.Len(t, got, 2*n, "%s receives each message once", tb.name)
				next := map[string]int{"alice": 1, "bob": 1}
				for _, m := range got {
					assert.Equal(t, next[m.From], m.N, "%s: messages from %s in order: %v", tb.name, m.From, got)
					next[m.From] = m.N + 1
				}
				s := tb.summary("c")
				assert.Equal(t, tc.want, s.Transport, "%s: transport", tb.name)
				assert.Equal(t, "connected", s.State)
				assert.NotEmpty(t, s.ID, "%s: rt.id is the welcome's conn", tb.name)
				assert.Empty(t, s.Errors, "%s: errors", tb.name)
				assert.Empty(t, tb.pageErrors(), "%s: page errors", tb.name)
				last := s.States[len(s.States)-1]
				assert.Equal(t, stateEvent{State: "connected", Transport: tc.want}, stateEvent{State: last.State, Transport: last.Transport},
					"%s: the last state event names the transport", tb.name)
			}
			for _, c := range srv.connectEvents() {
				assert.Equal(t, tc.want, c.transport, "the server saw a %s connection", c.transport)
			}
			if tc.name == "negotiated" {
				a.screenshot("exchange-negotiated")
			}
		})
	}
}

// TestFallback puts a misbehaving reverse proxy between the page and the
// hub: one that refuses WebSocket upgrades (it strips the Upgrade header,
// so the hub answers 426) makes the client settle on SSE; one that also
// buffers event streams until they end, as nginx does with buffering on,
// makes it settle on long-polling (F10). Messages flow both ways at the
// end.
func TestFallback(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proxy proxyConfig
		want  string
	}{
		{"upgrade refused", proxyConfig{stripUpgrade: true}, "sse"},
		{"upgrade refused and SSE buffered", proxyConfig{stripUpgrade: true, bufferSSE: true}, "longpoll"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{})
			proxy := startHTTPProxy(t, srv.URL, tc.proxy)
			tb := newTab(t, "page", nil)
			tb.open(proxy.URL, "")
			start := time.Now()
			// connectTimeout as in the contract's default, stated so
			// that the bound below follows from it.
			tb.connect("c", connectOpts("", "connectTimeout: 5000"), "room")
			tb.waitJoined("c", 3*5*time.Second)
			t.Logf("settled on %s after %v", tb.summary("c").Transport, time.Since(start).Round(time.Millisecond))

			srv.publish(t, "room", map[string]string{"from": "server"})
			r := eval[publishResult](tb, `e2e.publish('c', 'room', {from: 'page'})`)
			require.True(t, r.OK, "publish: %+v", r)
			tb.wait(`e2e.clients.c.msgs.room.length >= 2`, 10*time.Second, "both messages")

			s := tb.summary("c")
			assert.Equal(t, tc.want, s.Transport)
			assert.Equal(t, "connected", s.State)
			assert.Equal(t, 2, s.Counts["room"])
			assert.Empty(t, s.Errors, "a transport that does not work is no error for the app")
			assert.Empty(t, tb.pageErrors())
			assert.Contains(t, srv.requestLog(), "GET /realtime/ws HTTP/1.1", "the WebSocket was tried first")
			for _, c := range srv.connectEvents() {
				if c.transport != tc.want {
					// A buffered SSE stream does reach the hub: it is
					// the proxy that holds it back.
					assert.Equal(t, "sse", c.transport, "only SSE may have been tried before %s", tc.want)
				}
			}
		})
	}
}

// TestNegotiation checks that the client follows the hub's negotiate
// answer: a hub that offers no WebSocket gets no WebSocket attempt, and the
// negotiated client settles on the first transport offered. A url ending
// in /ws (the old form) still names the mount point.
func TestNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hopts realtime.HandlerOptions
		url   string
		want  string
	}{
		{"no websocket offered", realtime.HandlerOptions{NoWebSocket: true}, "/realtime/", "sse"},
		{"only longpoll offered", realtime.HandlerOptions{NoWebSocket: true, NoSSE: true}, "/realtime/", "longpoll"},
		{"old url form", realtime.HandlerOptions{}, "/realtime/ws", "websocket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hopts := tc.hopts
			hopts.SSE = &realtime.SSEOptions{Retry: 100 * time.Millisecond}
			srv := startHub(t, serverConfig{hopts: &hopts})
			tb := newTab(t, "page", nil)
			tb.open(srv.URL, "")
			tb.connect("c", fmt.Sprintf(`{url: %q}`, tc.url), "room")
			tb.waitJoined("c", connectTimeout)
			srv.publish(t, "room", "hello")
			tb.wait(`e2e.clients.c.msgs.room.length === 1`, 5*time.Second, "the message")

			s := tb.summary("c")
			assert.Equal(t, tc.want, s.Transport)
			log := srv.requestLog()
			assert.Contains(t, log, "GET /realtime/negotiate HTTP/1.1")
			for _, r := range log {
				if tc.hopts.NoWebSocket {
					assert.NotContains(t, r, "/realtime/ws", "a transport the hub does not offer is not tried")
				}
				if tc.hopts.NoSSE {
					assert.NotContains(t, r, "/realtime/sse", "a transport the hub does not offer is not tried")
				}
			}
			assert.Empty(t, s.Errors)
			assert.Empty(t, tb.pageErrors())
		})
	}
}
