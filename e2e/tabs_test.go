package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Browsers open at most six HTTP/1.1 connections per origin and browser
// profile, shared by all its tabs (F12). An SSE stream holds one for as
// long as it lives, a long-poll holds one while it waits, and the commands
// of both (POST) need one more. So over HTTP/1.1 at most five tabs of one
// origin can use SSE and still send commands; a sixth stream takes the
// last connection and every POST of every tab waits, and a seventh stream
// does not even open. A forced transport does not fall back (API
// contract), so the client cannot work around that; what works is:
//
//   - the default negotiation, which picks WebSocket: WebSockets do not
//     count against the six (TestManyTabs/http1_negotiated);
//   - HTTP/2, where every stream of the origin shares one connection
//     (TestManyTabs/http2_sse);
//   - at most five SSE tabs per origin on HTTP/1.1 (TestManyTabs/http1_sse_five).
//
// The tabs of each case share one browser context, as the tabs of one
// person's browser do.
func TestManyTabs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tls       bool
		transport string
		tabs      int
		want      string
		proto     string // of the requests to the hub
	}{
		{"http1 negotiated", false, "", 8, "websocket", "HTTP/1.1"},
		{"http2 sse", true, "sse", 8, "sse", "HTTP/2.0"},
		{"http1 sse five", false, "sse", 5, "sse", "HTTP/1.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{tls: tc.tls})
			var tabs []*tab
			for i := range tc.tabs {
				var share *tab
				if i > 0 {
					share = tabs[0]
				}
				tb := newTab(t, fmt.Sprintf("tab%d", i+1), share)
				tb.open(srv.URL, "")
				tb.connect("c", connectOpts(tc.transport), "room")
				tabs = append(tabs, tb)
			}
			for _, tb := range tabs {
				tb.waitJoined("c", connectTimeout)
			}

			// A message from the server reaches every tab at once: no
			// stream is buffered or stalled.
			sent := float64(time.Now().UnixNano()) / 1e6
			srv.publish(t, "room", "server")
			var worst time.Duration
			for _, tb := range tabs {
				tb.wait(`e2e.clients.c.msgs.room.length >= 1`, 5*time.Second, "the server's message")
				got := eval[float64](tb, `e2e.clients.c.msgs.room[0].t`)
				worst = max(worst, time.Duration((got-sent)*1e6))
			}
			t.Logf("%d tabs over %s: the server's message reached the last tab in %v", tc.tabs, tc.want, worst.Round(time.Millisecond))
			assert.Less(t, worst, time.Second, "delivered at once")

			// Every tab can send commands while every tab holds its
			// stream.
			for _, tb := range tabs {
				r := eval[publishResult](tb, fmt.Sprintf(`e2e.publish('c', 'room', %q)`, tb.name))
				require.True(t, r.OK, "publish from %s: %+v", tb.name, r)
			}
			for _, tb := range tabs {
				tb.wait(fmt.Sprintf(`e2e.clients.c.msgs.room.length >= %d`, 1+tc.tabs), 10*time.Second, "every tab's message")
				s := tb.summary("c")
				assert.Equal(t, tc.want, s.Transport, tb.name)
				assert.Equal(t, 1+tc.tabs, s.Counts["room"], tb.name)
				assert.Zero(t, s.count("reconnecting"), "%s: reconnects", tb.name)
			}
			for _, r := range srv.requestLog() {
				if strings.HasPrefix(r, "GET /realtime/sse ") || strings.HasPrefix(r, "POST /realtime/sse ") {
					assert.True(t, strings.HasSuffix(r, " "+tc.proto), "request %q over %s", r, tc.proto)
				}
			}
		})
	}
}
