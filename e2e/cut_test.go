package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConnectionsCut publishes 200 messages while a proxy between the
// pages and the hub cuts every TCP connection after every 50 messages
// (three times); the hub keeps running. Every page, one per transport,
// must end with all 200 in order, none twice, recovered from the hub's
// history (no resync).
func TestConnectionsCut(t *testing.T) {
	const (
		total    = 200
		cutEvery = 50
		channel  = "feed"
	)
	srv := startHub(t, serverConfig{})
	proxy := startTCPProxy(t, srv.addr)
	transports := []string{"websocket", "sse", "longpoll"}
	tabs := make([]*tab, len(transports))
	for i, tr := range transports {
		tabs[i] = newTab(t, tr, nil)
		tabs[i].open(proxy.URL, "")
		tabs[i].connect("c", connectOpts(tr), channel)
	}
	for _, tb := range tabs {
		tb.waitJoined("c", connectTimeout)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	var cuts []int
	pace := time.NewTicker(5 * time.Millisecond) // 50 messages in a quarter second
	defer pace.Stop()
	for i := 1; i <= total; i++ {
		if i%cutEvery == 1 && i > 1 {
			// Every page is back (so that the cut hits every one of
			// them); then cut, and publish the next messages while
			// they reconnect.
			for _, tb := range tabs {
				tb.wait(`e2e.clients.c.rt.state === 'connected'`, connectTimeout, "the page to be connected again before the next cut")
			}
			cuts = append(cuts, proxy.cut())
		}
		_, err := srv.Publish(ctx, channel, fmt.Appendf(nil, "%d", i))
		require.NoError(t, err)
		<-pace.C
	}
	t.Logf("published %d messages in %v; the cuts closed %v connections", total, time.Since(start).Round(time.Millisecond), cuts)

	want := make([]int, total)
	for i := range want {
		want[i] = i + 1
	}
	for _, tb := range tabs {
		// A third reconnect in a row may wait up to 4 s (500 ms * 2^3).
		if err := tb.poll(fmt.Sprintf(`e2e.clients.c.msgs[%q].length >= %d && e2e.clients.c.rt.state === 'connected'`, channel, total), 45*time.Second); err != nil {
			t.Errorf("%s: not every message arrived: %v", tb.name, err)
		}
	}
	t.Logf("all pages complete %v after the first publish", time.Since(start).Round(time.Millisecond))
	for _, tb := range tabs {
		got := eval[[]int](tb, fmt.Sprintf(`e2e.data('c', %q)`, channel))
		s := tb.summary("c")
		assert.Equal(t, want, got, "%s: all %d messages, in order, none twice", tb.name, total)
		assert.Equal(t, tb.name, s.Transport, "%s: transport", tb.name)
		assert.Empty(t, s.Resyncs, "%s: the hub had every message in its history", tb.name)
		assert.Empty(t, s.Gaps, "%s: gaps", tb.name)
		assert.Empty(t, tb.pageErrors(), "%s: page errors", tb.name)
		t.Logf("%s: %d reconnects, connection %s", tb.name, s.count("reconnecting"), s.ID)
	}
	for _, tb := range tabs[:2] {
		// A long-poll client may ride out a cut by polling again; a
		// stream cannot.
		assert.GreaterOrEqual(t, tb.summary("c").count("reconnecting"), len(cuts), "%s reconnected after every cut", tb.name)
	}
}
