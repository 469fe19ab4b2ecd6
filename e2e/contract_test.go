package e2e

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// TestClose checks close() over each transport: the state ends 'closed'
// without a reconnect, the server learns at once that the client left
// normally (1000: a close frame, or the DELETE that SSE and long-poll
// send, instead of a dropped stream or an expired session), and a publish
// afterwards rejects with a RealtimeError.
func TestClose(t *testing.T) {
	for _, transport := range []string{"websocket", "sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{})
			tb := newTab(t, "page", nil)
			tb.open(srv.URL, "")
			tb.connect("c", connectOpts(transport), "room")
			tb.waitJoined("c", connectTimeout)
			id := tb.summary("c").ID

			start := time.Now()
			eval[bool](tb, `(e2e.clients.c.rt.close(), true)`)
			tb.wait(`e2e.clients.c.rt.state === 'closed'`, 5*time.Second, "state closed")
			require.Eventually(t, func() bool { _, ok := srv.disconnect(id); return ok }, 5*time.Second, 5*time.Millisecond,
				"the server learns of the close")
			reason, _ := srv.disconnect(id)
			t.Logf("the server saw %v after %v", reason, time.Since(start).Round(time.Millisecond))
			assert.Equal(t, realtime.CloseNormal, reason.Code)

			r := eval[publishResult](tb, `e2e.publish('c', 'room', 'late')`)
			assert.False(t, r.OK)
			assert.True(t, r.IsRealtimeError, "rejects with a RealtimeError: %+v", r)
			assert.NotEmpty(t, r.Code)
			s := tb.summary("c")
			assert.Zero(t, s.count("reconnecting"))
			assert.Equal(t, "closed", s.States[len(s.States)-1].State)
			assert.Empty(t, tb.pageErrors())
		})
	}
}

// TestErrors checks that what the server refuses reaches the app with a
// code, over each transport: a join the application refuses, a publish to
// a channel the client is not in, and a connection its authentication
// refuses.
func TestErrors(t *testing.T) {
	for _, transport := range []string{"", "websocket", "sse", "longpoll"} {
		t.Run(cmp.Or(transport, "negotiated"), func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{opts: realtime.Options{
				Authenticate: func(r *http.Request) (realtime.Identity, error) {
					if n := r.URL.Query().Get("name"); n != "" {
						return realtime.Identity{UserID: n}, nil
					}
					return realtime.Identity{}, errors.New("who are you?")
				},
				AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
					if channel == "secret" {
						return errors.New("members only")
					}
					return nil
				},
			}})
			tb := newTab(t, "page", nil)
			tb.open(srv.URL, "")
			tb.connect("ann", connectOpts(transport, "params: {name: 'ann'}"), "open", "secret")
			tb.wait(`e2e.clients.ann.joins.open > 0 && e2e.clients.ann.subErrors.length > 0`, connectTimeout,
				"ann to join 'open' and be refused 'secret'")
			s := tb.summary("ann")
			require.Len(t, s.SubErrors, 1)
			assert.Equal(t, jsError{Code: "forbidden", Message: "members only", Channel: "secret"}, s.SubErrors[0])
			assert.Equal(t, "connected", s.State, "a refused join leaves the connection up")

			r := eval[publishResult](tb, `e2e.publish('ann', 'elsewhere', 1)`)
			assert.False(t, r.OK)
			assert.True(t, r.IsRealtimeError, "%+v", r)
			assert.Equal(t, "forbidden", r.Code, "publishing to a channel ann is not in")
			assert.Equal(t, "elsewhere", r.Channel)

			tb.connect("nobody", connectOpts(transport), "open")
			tb.wait(`e2e.clients.nobody.errors.length > 0`, connectTimeout, "the refusal to reach the app")
			s = tb.summary("nobody")
			assert.Equal(t, "unauthorized", s.Errors[0].Code, "%+v", s.Errors)
			t.Logf("refused connection: error %+v, state %s", s.Errors[0], s.State)
			assert.Empty(t, tb.pageErrors())
		})
	}
}

// TestOffline checks the online/offline contract over each transport.
// The browser reports itself offline (navigator.onLine false, an 'offline'
// event) and then the hub drops every connection (going away); the network
// itself still works, so any attempt the client makes while offline
// reaches the hub.
// Two clients:
//
//   - "eager" has a backoff of at most 100 ms: while offline it must wait
//     for the network rather than burn attempts, so it is still
//     'reconnecting' after a second offline and the hub saw no attempt;
//   - "patient" has a backoff of 20 s: it must reconnect as soon as the
//     browser is online again, not when its backoff ends.
//
// Both resume the channel with nothing lost.
func TestOffline(t *testing.T) {
	// How long the page stays offline; an eager client that ignored the
	// network state would make several attempts meanwhile.
	const offlineFor = time.Second
	for _, transport := range []string{"websocket", "sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{})
			tb := newTab(t, "page", nil)
			tb.open(srv.URL, "")
			tb.connect("eager", connectOpts(transport, "minBackoff: 50", "maxBackoff: 100"), "room")
			tb.connect("patient", connectOpts(transport, "minBackoff: 20000", "maxBackoff: 20000"), "room")
			tb.waitJoined("eager", connectTimeout)
			tb.waitJoined("patient", connectTimeout)

			setOffline(t, tb, true)
			tb.wait(`navigator.onLine === false`, 5*time.Second, "navigator.onLine to be false")
			for _, c := range srv.Conns() {
				c.Close(realtime.CloseGoingAway, "test")
			}
			tb.wait(`e2e.clients.eager.rt.state === 'reconnecting' && e2e.clients.patient.rt.state === 'reconnecting'`,
				10*time.Second, "the clients to lose their connections")
			srv.publish(t, "room", 1)
			connects := len(srv.connectEvents())
			// An absence can only be seen over time: stay offline a while.
			<-time.After(offlineFor)
			eager := tb.summary("eager")
			assert.Equal(t, "reconnecting", eager.State, "no attempt while offline for %v: %+v", offlineFor, eager.States)
			assert.Len(t, srv.connectEvents(), connects, "no connection while offline")

			online := time.Now()
			setOffline(t, tb, false)
			tb.wait(`['eager', 'patient'].every((n) => e2e.clients[n].rt.state === 'connected' && e2e.clients[n].msgs.room.length === 1)`,
				5*time.Second, "the clients to reconnect at once when online, and resume")
			t.Logf("connected again %v after going online", time.Since(online).Round(time.Millisecond))
			for _, name := range []string{"eager", "patient"} {
				s := tb.summary(name)
				assert.Empty(t, s.Resyncs, name)
				assert.Equal(t, transport, s.Transport, name)
			}
			assert.Empty(t, tb.pageErrors())
		})
	}
}

// setOffline makes the browser report that it is offline, or online
// again (navigator.onLine, and the 'offline' and 'online' events).
// Requests still go through.
func setOffline(t testing.TB, tb *tab, offline bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, target *chromedp.Target) error {
		_, err := cdp.Call(ctx, target, network.OverrideNetworkState,
			network.OverrideNetworkStateParams{Offline: offline, DownloadThroughput: -1, UploadThroughput: -1})
		return err
	}))
	require.NoError(t, err, "going offline=%v", offline)
}

// TestRequestTimeout has the server take 3 s to authorize a publish; a
// client whose requestTimeout is 500 ms gets a 'timeout' error for it
// instead of waiting, and the connection stays up and works.
func TestRequestTimeout(t *testing.T) {
	for _, transport := range []string{"websocket", "sse", "longpoll"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			srv := startHub(t, serverConfig{opts: realtime.Options{
				AuthorizePublish: func(ctx context.Context, c *realtime.Conn, channel string, data []byte) error {
					if channel == "slow" {
						select {
						case <-time.After(3 * time.Second):
						case <-ctx.Done():
						}
					}
					return nil
				},
			}})
			tb := newTab(t, "page", nil)
			tb.open(srv.URL, "")
			tb.connect("c", connectOpts(transport, "requestTimeout: 500"), "slow", "fast")
			tb.waitJoined("c", connectTimeout)
			start := time.Now()
			r := eval[publishResult](tb, `e2e.publish('c', 'slow', 1)`)
			elapsed := time.Since(start)
			assert.False(t, r.OK)
			assert.Equal(t, "timeout", r.Code, "%+v", r)
			assert.Equal(t, "slow", r.Channel)
			assert.Less(t, elapsed, 2500*time.Millisecond, "the publish gave up at its timeout")
			// The connection is fine: once the server is done with the slow
			// command (commands of a connection run in order), the next one
			// is answered.
			time.Sleep(3 * time.Second)
			r = eval[publishResult](tb, `e2e.publish('c', 'fast', 2)`)
			assert.True(t, r.OK, "%+v", r)
			assert.Equal(t, "connected", tb.summary("c").State)
			assert.Empty(t, tb.pageErrors())
		})
	}
}
