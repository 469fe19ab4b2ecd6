package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// TestClusterWithoutStickySessions serves the page and the hub from three
// nodes on one broker behind a reverse proxy that sends each request to
// the next node in turn (F09). Browsers forced onto SSE and long-polling,
// whose requests therefore land on every node, exchange messages with
// each other and with the server: each gets every message once, in
// order, and never sees "unknown session".
func TestClusterWithoutStickySessions(t *testing.T) {
	for _, transport := range []string{"sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			broker := realtime.NewMemoryBroker(nil)
			var nodes []*hubServer
			var backends []*url.URL
			for i := 0; i < 3; i++ {
				s := startHub(t, serverConfig{opts: realtime.Options{Backplane: broker.Backplane()}})
				nodes = append(nodes, s)
				u, err := url.Parse(s.URL)
				require.NoError(t, err)
				backends = append(backends, u)
			}
			var next atomic.Uint64
			proxy := httptest.NewServer(&httputil.ReverseProxy{
				Rewrite: func(r *httputil.ProxyRequest) {
					r.SetURL(backends[next.Add(1)%uint64(len(backends))])
					r.Out.Host = r.In.Host // as a load balancer keeps it
				},
				FlushInterval: -1,
				ErrorLog:      log.New(io.Discard, "", 0),
			})
			t.Cleanup(proxy.Close)

			a, b := newTab(t, "alice", nil), newTab(t, "bob", nil)
			for _, tb := range []*tab{a, b} {
				tb.open(proxy.URL, "")
				tb.connect("c", connectOpts(transport), "room")
			}
			for _, tb := range []*tab{a, b} {
				tb.waitJoined("c", connectTimeout)
			}

			const n = 10
			for i := 1; i <= n; i++ {
				for _, tb := range []*tab{a, b} {
					r := eval[publishResult](tb, fmt.Sprintf(`e2e.publish('c', 'room', {from: %q, n: %d})`, tb.name, i))
					require.True(t, r.OK, "publish from %s: %+v", tb.name, r)
				}
				nodes[i%3].publish(t, "room", map[string]any{"from": "server", "n": i})
			}
			for _, tb := range []*tab{a, b} {
				tb.wait(fmt.Sprintf(`e2e.clients.c.msgs.room.length >= %d`, 3*n), 20*time.Second, "every message")
			}
			var orders [][]string
			for _, tb := range []*tab{a, b} {
				var got []struct {
					From string `json:"from"`
					N    int    `json:"n"`
				}
				raw := eval[json.RawMessage](tb, `e2e.data('c', 'room')`)
				require.NoError(t, json.Unmarshal(raw, &got))
				assert.Len(t, got, 3*n, "%s receives each message once", tb.name)
				want := map[string]int{"alice": 1, "bob": 1, "server": 1}
				var order []string
				for _, m := range got {
					assert.Equal(t, want[m.From], m.N, "%s: messages from %s in order", tb.name, m.From)
					want[m.From] = m.N + 1
					order = append(order, fmt.Sprintf("%s/%d", m.From, m.N))
				}
				orders = append(orders, order)
				s := tb.summary("c")
				assert.Equal(t, transport, s.Transport)
				assert.Equal(t, "connected", s.State)
				assert.Equal(t, 1, s.count("connected"), "%s never reconnected: %+v", tb.name, s.States)
				assert.Empty(t, s.Errors, "%s: errors", tb.name)
				assert.Empty(t, tb.pageErrors(), "%s: page errors", tb.name)
			}
			assert.Equal(t, orders[0], orders[1], "both browsers see one order")
			var forwarded uint64
			for _, s := range nodes {
				forwarded += s.Stats().Forwarded
			}
			assert.Positive(t, forwarded, "requests were forwarded between nodes")
		})
	}
}
