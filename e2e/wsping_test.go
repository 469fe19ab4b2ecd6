package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/realtimekit/realtime"
)

// TestWebSocketPingsAndLargeFrames has a browser, over HTTP and over
// HTTPS, take messages of every length encoding while the server pings it
// every few milliseconds with a short pong timeout: the browser's pongs
// keep it connected, and the frames it gets between the pings are whole.
func TestWebSocketPingsAndLargeFrames(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tls), func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{tls: tls,
				opts: realtime.Options{MaxMessageSize: 200 << 10},
				hopts: &realtime.HandlerOptions{
					WebSocket: &realtime.WebSocketOptions{PingInterval: 5 * time.Millisecond, PongTimeout: 300 * time.Millisecond},
				}})
			tb := newTab(t, "alice", nil)
			tb.open(srv.URL, "")
			tb.connect("c", connectOpts("websocket"), "room")
			tb.waitJoined("c", connectTimeout)
			sizes := []int{10, 200, 70 << 10, 150 << 10, 65535 - 20}
			for i, n := range sizes {
				srv.publish(t, "room", map[string]any{"i": i, "s": strings.Repeat("b", n)})
				time.Sleep(100 * time.Millisecond)
			}
			tb.wait(fmt.Sprintf(`e2e.clients.c.msgs.room.length >= %d`, len(sizes)), 10*time.Second, "every message")
			for i, n := range sizes {
				got := eval[float64](tb, fmt.Sprintf(`e2e.clients.c.msgs.room[%d].data.s.length`, i))
				assert.Equal(t, float64(n), got, "message %d", i)
			}
			srv.mu.Lock()
			assert.Empty(t, srv.disconnects, "no connection dropped")
			srv.mu.Unlock()
		})
	}
}
