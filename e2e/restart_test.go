package e2e

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServerRestart restarts the server on the in-memory backplane with 20
// clients connected (F17): the hub shuts down, and a new hub, which knows
// nothing of the old one's channels, starts on the same address. Every
// client must be told to resync its channel, come back connected and
// resubscribed, and the reconnects must be spread by the jittered backoff
// rather than arrive together.
//
// The clients' minBackoff is 3 s, so full jitter spreads the first
// reconnects over at least 3 s (random(0, minBackoff * 2^attempt)); 20
// clients all within 1 s of each other would happen with a probability
// near 20 * (1/3)^19, about 2e-8. Without jitter they come within a few
// hundred milliseconds, the time the browser takes to open 20 connections.
func TestServerRestart(t *testing.T) {
	const (
		channel    = "news"
		minBackoff = 3 * time.Second
	)
	srv := startHub(t, serverConfig{})
	pages := []struct {
		transport string // "" negotiates
		clients   int
	}{
		// SSE and long-poll hold an HTTP/1.1 connection each: stay below
		// the browser's six per origin (see TestManyTabs).
		{"", 14}, {"sse", 3}, {"longpoll", 3},
	}
	var tabs []*tab
	var names [][]string
	total := 0
	for _, p := range pages {
		tb := newTab(t, "page-"+cmp.Or(p.transport, "negotiated"), nil)
		tb.open(srv.URL, "")
		var ns []string
		for i := range p.clients {
			name := fmt.Sprintf("c%d", i)
			tb.connect(name, connectOpts(p.transport, fmt.Sprintf("minBackoff: %d", minBackoff.Milliseconds())), channel)
			ns = append(ns, name)
		}
		tabs = append(tabs, tb)
		names = append(names, ns)
		total += p.clients
	}
	for i, tb := range tabs {
		for _, name := range names[i] {
			tb.waitJoined(name, connectTimeout)
		}
	}
	srv.publish(t, channel, "before")
	for i, tb := range tabs {
		for _, name := range names[i] {
			tb.wait(fmt.Sprintf(`e2e.clients[%q].msgs[%q].length === 1`, name, channel), 10*time.Second, name+" to get the first message")
		}
	}

	stopped := time.Now()
	srv.stop()
	down := time.Since(stopped)
	srv2 := startHub(t, serverConfig{addr: srv.addr})
	t.Logf("the server was down for %v", time.Since(stopped).Round(time.Millisecond))

	for i, tb := range tabs {
		for _, name := range names[i] {
			tb.wait(fmt.Sprintf(`(() => { const c = e2e.clients[%q];
				return c.rt.state === 'connected' && c.resyncs.some((r) => r.channel === %q); })()`, name, channel),
				2*minBackoff+connectTimeout, name+" to be connected again and told to resync")
		}
	}
	srv2.publish(t, channel, "after")
	for i, tb := range tabs {
		for _, name := range names[i] {
			tb.wait(fmt.Sprintf(`e2e.clients[%q].msgs[%q].length === 2`, name, channel), 10*time.Second, name+" to get the message after the restart")
		}
	}

	// When each client came back, as the new server saw it.
	var back []time.Duration
	for _, c := range srv2.connectEvents() {
		back = append(back, c.at.Sub(stopped))
	}
	slices.Sort(back)
	require.Len(t, back, total, "one connection per client on the new server")
	spread := back[len(back)-1] - back[0]
	t.Logf("shutdown took %v; clients reconnected from %v to %v after it began (spread %v): %v",
		down.Round(time.Millisecond), back[0].Round(time.Millisecond), back[len(back)-1].Round(time.Millisecond),
		spread.Round(time.Millisecond), roundAll(back))
	t.Logf("reconnects per 500 ms: %v", histogram(back, 500*time.Millisecond))
	assert.Greater(t, spread, minBackoff/3, "the jitter spreads the reconnects")

	var delays []float64
	for i, tb := range tabs {
		for _, name := range names[i] {
			s := tb.summary(name)
			assert.Equal(t, "connected", s.State, "%s/%s", tb.name, name)
			if pages[i].transport != "" {
				assert.Equal(t, pages[i].transport, s.Transport, "%s/%s", tb.name, name)
			}
			for _, r := range s.Resyncs {
				assert.Equal(t, channel, r.Channel, "%s/%s: resync", tb.name, name)
			}
			assert.Equal(t, 2, s.Counts[channel], "%s/%s: one message before, one after", tb.name, name)
			for _, st := range s.States {
				if st.State == "reconnecting" {
					delays = append(delays, st.Delay)
				}
			}
		}
		assert.Empty(t, tb.pageErrors(), "%s: page errors", tb.name)
	}
	slices.Sort(delays)
	t.Logf("backoff delays chosen by the clients (ms): %v", delays)
	tabs[0].screenshot("restart")
}

// histogram counts ds in buckets of width w from 0.
func histogram(ds []time.Duration, w time.Duration) []int {
	var h []int
	for _, d := range ds {
		i := int(d / w)
		for len(h) <= i {
			h = append(h, 0)
		}
		h[i]++
	}
	return h
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(time.Millisecond)
	}
	return out
}
