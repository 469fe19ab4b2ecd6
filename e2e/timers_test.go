package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestThrottledTimers is F15: a tab in the background has its timers
// throttled to about one a minute, and may be frozen outright.
//
// First the page's timers fire late: the test page (with ?warp) makes
// every timer the client sets run a minute later than asked, as far as
// the client can tell from Date.now and performance.now, while the server
// answers at once. The client must not declare the server dead from its
// own late timers: it keeps its connection (same id, no state change) and
// still receives.
//
// Then the page is hidden and frozen (Page.setWebLifecycleState), every
// connection is cut and messages are published meanwhile. When the page
// is active and visible again the client reconnects by itself and ends with
// every message, in order, none twice.
func TestThrottledTimers(t *testing.T) {
	for _, transport := range []string{"websocket", "sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			const channel = "tick"
			srv := startHub(t, serverConfig{})
			proxy := startTCPProxy(t, srv.addr)
			tb := newTab(t, "page", nil)
			tb.open(proxy.URL, "warp")
			tb.connect("c", connectOpts(transport), channel)
			tb.waitJoined("c", connectTimeout)
			before := tb.summary("c")
			require.NotEmpty(t, before.ID)

			// Late timers: each one seems to fire lag ms after it was due.
			// scale makes the test take seconds of real time, not minutes.
			const fires = 6
			start := time.Now()
			eval[bool](tb, `(e2e.warp.lag = 60000, e2e.warp.scale = 0.2, e2e.warp.on = true)`)
			tb.wait(fmt.Sprintf(`e2e.warp.fired >= %d`, fires), 60*time.Second, "the client's timers to fire late")
			eval[bool](tb, `(e2e.warp.on = false, true)`)
			seemed := time.Duration(eval[float64](tb, `e2e.warp.offset`)) * time.Millisecond
			t.Logf("%d late timers in %v, the page's clock moved %v more", eval[int](tb, `e2e.warp.fired`),
				time.Since(start).Round(time.Millisecond), seemed.Round(time.Second))

			during := tb.summary("c")
			assert.Equal(t, "connected", during.State)
			assert.Equal(t, before.ID, during.ID, "the same connection")
			assert.Equal(t, before.States, during.States, "no state change from late timers")
			assert.NotNil(t, srv.Conn(before.ID), "the server still has the connection")
			srv.publish(t, channel, 1)
			tb.wait(fmt.Sprintf(`e2e.clients.c.msgs[%q].length === 1`, channel), 5*time.Second, "a message after the late timers")

			// Hidden, frozen, cut off; then active and visible again.
			eval[bool](tb, `e2e.setHidden(true)`)
			setLifecycle(t, tb, page.SetWebLifecycleStateStateFrozen)
			cut := proxy.cut()
			for i := 2; i <= 4; i++ {
				srv.publish(t, channel, i)
			}
			if transport != "longpoll" {
				// A long-poll session outlives its requests; a stream
				// ends with its connection.
				require.Eventually(t, func() bool { return srv.Conn(before.ID) == nil }, 10*time.Second, 10*time.Millisecond,
					"the server saw the cut")
			}
			woke := time.Now()
			setLifecycle(t, tb, page.SetWebLifecycleStateStateActive)
			eval[bool](tb, `e2e.setHidden(false)`)
			tb.wait(fmt.Sprintf(`e2e.clients.c.msgs[%q].length >= 4 && e2e.clients.c.rt.state === 'connected'`, channel),
				20*time.Second, "every message after waking up")
			t.Logf("cut %d connections while frozen; all messages %v after waking up", cut, time.Since(woke).Round(time.Millisecond))

			after := tb.summary("c")
			assert.Equal(t, []int{1, 2, 3, 4}, eval[[]int](tb, fmt.Sprintf(`e2e.data('c', %q)`, channel)), "in order, none twice")
			assert.Empty(t, after.Resyncs, "recovered from history")
			assert.Equal(t, transport, after.Transport)
			if transport != "longpoll" {
				assert.NotEqual(t, before.ID, after.ID, "a new connection")
				assert.Positive(t, after.count("reconnecting"))
			}
			assert.Empty(t, tb.pageErrors())
			var posts int
			for _, r := range srv.requestLog() {
				if strings.HasPrefix(r, "POST ") {
					posts++
				}
			}
			t.Logf("states: %v; %d command POSTs", after.States, posts)
		})
	}
}

// setLifecycle freezes or resumes the tab's page.
func setLifecycle(t testing.TB, tb *tab, state page.SetWebLifecycleStateState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, target *chromedp.Target) error {
		_, err := cdp.Call(ctx, target, page.SetWebLifecycleState, page.SetWebLifecycleStateParams{State: state})
		return err
	}))
	require.NoError(t, err, "Page.setWebLifecycleState %s", state)
}
