package realtime_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

func TestPublishReachesEveryMemberInOrder(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		a, b, outsider := th.dial(t, nil), th.dial(t, nil), th.dial(t, nil)
		for _, c := range []*client.Client{a, b} {
			_, err := c.Join(ctx, "room")
			require.NoError(t, err)
		}
		_, err := outsider.Join(ctx, "elsewhere")
		require.NoError(t, err)

		// The app and a member publish; every member sees both, in one order.
		p1, err := th.Publish(ctx, "room", []byte(`{"from":"app"}`))
		require.NoError(t, err)
		p2, err := a.Publish(ctx, "room", []byte(`{"from":"a"}`))
		require.NoError(t, err)
		assert.Equal(t, p1.Epoch, p2.Epoch)
		assert.Equal(t, p1.Offset+1, p2.Offset)

		for _, c := range []*client.Client{a, b} {
			ev := receiveType(t, c, "message")
			assert.Equal(t, "room", ev.Channel)
			assert.Equal(t, `{"from":"app"}`, string(ev.Data))
			assert.Equal(t, p1, ev.Position)
			ev = receiveType(t, c, "message")
			assert.Equal(t, `{"from":"a"}`, string(ev.Data))
			assert.Equal(t, p2, ev.Position)
		}

		// The outsider got nothing of "room": its next event is its own.
		_, err = th.Publish(ctx, "elsewhere", []byte(`1`))
		require.NoError(t, err)
		ev := receiveType(t, outsider, "message")
		assert.Equal(t, "elsewhere", ev.Channel)
	})
}

func TestJoinReportsPositionBeforeFirstMessage(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		a := th.dial(t, nil)
		_, err := a.Join(ctx, "room")
		require.NoError(t, err)
		var last realtime.Position
		for i := 0; i < 3; i++ {
			last, err = th.Publish(ctx, "room", []byte(strconv.Itoa(i)))
			require.NoError(t, err)
		}
		for i := 0; i < 3; i++ {
			receiveType(t, a, "message")
		}

		b := th.dial(t, nil)
		pos, err := b.Join(ctx, "room")
		require.NoError(t, err)
		assert.Equal(t, last, pos)
		next, err := th.Publish(ctx, "room", []byte(`"after"`))
		require.NoError(t, err)
		ev := receiveType(t, b, "message")
		assert.Equal(t, next, ev.Position)
		assert.Equal(t, pos.Offset+1, ev.Position.Offset)
	})
}

func TestLeaveStopsDelivery(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		_, err := c.Join(ctx, "a")
		require.NoError(t, err)
		_, err = c.Join(ctx, "b")
		require.NoError(t, err)
		require.NoError(t, c.Leave(ctx, "a"))

		_, err = th.Publish(ctx, "a", []byte(`"lost"`))
		require.NoError(t, err)
		_, err = th.Publish(ctx, "b", []byte(`"kept"`))
		require.NoError(t, err)
		ev := receiveType(t, c, "message")
		assert.Equal(t, "b", ev.Channel)

		var se *client.ServerError
		require.ErrorAs(t, c.Leave(ctx, "a"), &se)
		assert.Equal(t, "not_joined", se.Code)
	})
}

func TestServerSideJoinAndLeave(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		th.waitConns(t, 1)
		conn := th.Conn(c.ID())
		require.NotNil(t, conn)

		require.NoError(t, conn.Join(ctx, "news"))
		ev := receiveType(t, c, "joined")
		assert.Equal(t, "news", ev.Channel)
		assert.Equal(t, []string{"news"}, conn.Channels())

		_, err := th.Publish(ctx, "news", []byte(`"extra"`))
		require.NoError(t, err)
		assert.Equal(t, `"extra"`, string(receiveType(t, c, "message").Data))

		require.NoError(t, conn.Leave("news"))
		assert.Equal(t, "news", receiveType(t, c, "left").Channel)
		assert.Empty(t, conn.Channels())
		assert.ErrorIs(t, conn.Leave("news"), realtime.ErrNotJoined)
		assert.Empty(t, th.Members("news"))
	})
}

func TestDirectMessages(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		got := make(chan string, 1)
		th := newTestHub(t, &realtime.Options{
			OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
				if string(data) == `"no"` {
					return errors.New("not that")
				}
				got <- string(data)
				return c.Send([]byte(`"echo"`))
			},
		}, nil)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		require.NoError(t, c.Send(ctx, []byte(`{"hello":1}`)))
		assert.Equal(t, `{"hello":1}`, <-got)
		assert.Equal(t, `"echo"`, string(receiveType(t, c, "direct").Data))

		var se *client.ServerError
		require.ErrorAs(t, c.Send(ctx, []byte(`"no"`)), &se)
		assert.Equal(t, "forbidden", se.Code)
		assert.Equal(t, "not that", se.Message)
	})
}

func TestSendRefusedWithoutHook(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		var se *client.ServerError
		require.ErrorAs(t, th.dial(t, nil).Send(ctxT(t), []byte(`1`)), &se)
		assert.Equal(t, "forbidden", se.Code)
	})
}

// countingBackplane records the subscriptions a hub makes on a real
// in-memory backplane.
type countingBackplane struct {
	realtime.Backplane
	mu     sync.Mutex
	subs   map[string]int
	calls  int
	failOn string
}

func (b *countingBackplane) Subscribe(ctx context.Context, channel string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if channel == b.failOn {
		return errors.New("broker refused")
	}
	b.subs[channel]++
	b.calls++
	return b.Backplane.Subscribe(ctx, channel)
}

func (b *countingBackplane) Unsubscribe(ctx context.Context, channel string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.subs[channel]--
	if b.subs[channel] == 0 {
		delete(b.subs, channel)
	}
	return b.Backplane.Unsubscribe(ctx, channel)
}

func (b *countingBackplane) snapshot() (map[string]int, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]int, len(b.subs))
	for k, v := range b.subs {
		m[k] = v
	}
	return m, b.calls
}

func TestBackplaneSubscriptionsAreReferenceCounted(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		bp := &countingBackplane{Backplane: realtime.NewMemoryBackplane(nil), subs: map[string]int{}}
		th := newTestHub(t, &realtime.Options{Backplane: bp}, nil).over(tr)
		ctx := ctxT(t)

		clients := make([]*client.Client, 5)
		for i := range clients {
			clients[i] = th.dial(t, nil)
			_, err := clients[i].Join(ctx, "shared")
			require.NoError(t, err)
			_, err = clients[i].Join(ctx, "own-"+strconv.Itoa(i))
			require.NoError(t, err)
		}
		subs, calls := bp.snapshot()
		assert.Equal(t, 1, subs["shared"])
		assert.Len(t, subs, 6)
		assert.Equal(t, 6, calls)

		for i, c := range clients[:4] {
			require.NoError(t, c.Leave(ctx, "shared"))
			require.NoError(t, c.Leave(ctx, "own-"+strconv.Itoa(i)))
		}
		subs, _ = bp.snapshot()
		assert.Equal(t, map[string]int{"shared": 1, "own-4": 1}, subs)

		// The last member goes by disconnecting.
		require.NoError(t, clients[4].Close())
		th.waitConns(t, 4)
		subs, _ = bp.snapshot()
		assert.Empty(t, subs)
	})
}

func TestJoinFailsWhenBackplaneRefuses(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		bp := &countingBackplane{Backplane: realtime.NewMemoryBackplane(nil), subs: map[string]int{}, failOn: "broken"}
		th := newTestHub(t, &realtime.Options{Backplane: bp}, nil).over(tr)
		c := th.dial(t, nil)
		var se *client.ServerError
		_, err := c.Join(ctxT(t), "broken")
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "unavailable", se.Code)
		assert.Empty(t, th.Members("broken"))
		require.NoError(t, c.Ping(ctxT(t)))
	})
}

func TestAuthenticateRefusesBeforeUpgrade(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{
		Authenticate: func(r *http.Request) (realtime.Identity, error) {
			switch r.URL.Query().Get("token") {
			case "good":
				return realtime.Identity{UserID: "ann"}, nil
			case "banned":
				return realtime.Identity{}, fmt.Errorf("%w: banned", realtime.ErrForbidden)
			default:
				return realtime.Identity{}, errors.New("missing token")
			}
		},
	}, nil)

	for _, tc := range []struct {
		token string
		want  int
		body  string
	}{
		{"", http.StatusUnauthorized, "missing token"},
		{"banned", http.StatusForbidden, "banned"},
	} {
		_, resp, err := websocket.Dial(ctxT(t), th.url+"?token="+tc.token,
			&websocket.DialOptions{Subprotocols: []string{realtime.Subprotocol}})
		require.Error(t, err)
		require.NotNil(t, resp)
		assert.Equal(t, tc.want, resp.StatusCode)
		body, _ := io.ReadAll(resp.Body)
		assert.Contains(t, string(body), tc.body)
	}

	c, err := client.Dial(ctxT(t), th.url+"?token=good", nil)
	require.NoError(t, err)
	defer c.Close()
	th.waitConns(t, 1)
	assert.Equal(t, "ann", th.Conn(c.ID()).Identity().UserID)
}

func TestOriginPolicy(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{OriginPatterns: []string{"*.example.com"}}, nil)
	for _, tc := range []struct {
		origin string
		want   bool
	}{
		{"", true},
		{strings.Replace(th.srv.URL, "127.0.0.1", "127.0.0.1", 1), true},
		{"https://app.example.com", true},
		{"https://evil.test", false},
		{"null", false},
	} {
		h := http.Header{}
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		ws, resp, err := websocket.Dial(ctxT(t), th.url, &websocket.DialOptions{
			HTTPHeader: h, Subprotocols: []string{realtime.Subprotocol},
		})
		if tc.want {
			require.NoError(t, err, tc.origin)
			ws.CloseNow()
			continue
		}
		require.Error(t, err, tc.origin)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, tc.origin)
	}
}

func TestSubprotocolRequired(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	_, resp, err := websocket.Dial(ctxT(t), th.url, nil)
	require.Error(t, err)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	assert.Contains(t, string(body), realtime.Subprotocol)
}

func TestAuthorizationHooks(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, &realtime.Options{
			AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
				if strings.HasPrefix(channel, "private") {
					return errors.New("members only")
				}
				return nil
			},
			AuthorizePublish: func(ctx context.Context, c *realtime.Conn, channel string, data []byte) error {
				if channel == "announcements" {
					return errors.New("read-only channel")
				}
				return nil
			},
		}, nil)
		ctx := ctxT(t)
		c := th.dial(t, nil)

		var se *client.ServerError
		_, err := c.Join(ctx, "private-1")
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "forbidden", se.Code)
		assert.Equal(t, "members only", se.Message)
		assert.Equal(t, "private-1", se.Channel)

		_, err = c.Join(ctx, "announcements")
		require.NoError(t, err)
		_, err = c.Publish(ctx, "announcements", []byte(`1`))
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "read-only channel", se.Message)

		// The hook may allow publishing without membership.
		_, err = c.Publish(ctx, "anywhere", []byte(`1`))
		require.NoError(t, err)
	})
}

func TestDefaultPublishPolicyIsMembersOnly(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		var se *client.ServerError
		_, err := c.Publish(ctx, "room", []byte(`1`))
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "forbidden", se.Code)
		_, err = c.Join(ctx, "room")
		require.NoError(t, err)
		_, err = c.Publish(ctx, "room", []byte(`1`))
		require.NoError(t, err)
	})
}

func TestChannelLimits(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, &realtime.Options{MaxChannels: 3}, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		for i := 0; i < 3; i++ {
			_, err := c.Join(ctx, "ch"+strconv.Itoa(i))
			require.NoError(t, err)
		}
		// Joining again is not another channel.
		_, err := c.Join(ctx, "ch0")
		require.NoError(t, err)

		var se *client.ServerError
		_, err = c.Join(ctx, "ch3")
		require.ErrorAs(t, err, &se)
		assert.Equal(t, "too_many_channels", se.Code)

		for _, name := range []string{"", "has space", "semi;colon", strings.Repeat("x", 129), "ünï"} {
			_, err = c.Join(ctx, name)
			require.ErrorAs(t, err, &se, "%q", name)
			assert.Equal(t, "bad_channel", se.Code, "%q", name)
		}
		_, err = th.Publish(ctx, "has space", nil)
		assert.ErrorIs(t, err, realtime.ErrBadChannel)
	})
}

func TestPublishTooLarge(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{MaxMessageSize: 1024}, nil)
	_, err := th.Publish(ctxT(t), "room", make([]byte, 1025))
	assert.ErrorIs(t, err, realtime.ErrTooLarge)
}

func TestOptionsValidated(t *testing.T) {
	t.Parallel()
	for _, o := range []realtime.Options{
		{MaxChannels: -1},
		{SlowConsumer: 7},
		{QueueBytes: 100, MaxMessageSize: 1000},
	} {
		_, err := realtime.New(&o)
		assert.Error(t, err, "%+v", o)
	}
}

func TestHooksSeeLifecycle(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		var mu sync.Mutex
		var events []string
		record := func(s string) {
			mu.Lock()
			events = append(events, s)
			mu.Unlock()
		}
		th := newTestHub(t, &realtime.Options{
			OnConnect:    func(c *realtime.Conn) { record("connect") },
			OnJoin:       func(c *realtime.Conn, ch string) { record("join " + ch) },
			OnLeave:      func(c *realtime.Conn, ch string) { record("leave " + ch) },
			OnDisconnect: func(c *realtime.Conn, r realtime.CloseError) { record("disconnect " + strconv.Itoa(int(r.Code))) },
		}, nil)
		c := th.dial(t, nil)
		_, err := c.Join(ctxT(t), "x")
		require.NoError(t, err)
		require.NoError(t, c.Close())
		th.waitConns(t, 0)
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, []string{"connect", "join x", "leave x", "disconnect 1000"}, events)
	})
}

func TestAppCloseSendsCodeAfterQueuedMessages(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		c := th.dial(t, nil)
		th.waitConns(t, 1)
		conn := th.Conn(c.ID())
		require.NoError(t, conn.Send([]byte(`"bye"`)))
		require.NoError(t, conn.Close(realtime.CloseDisconnected, "kicked"))
		assert.Equal(t, `"bye"`, string(receiveType(t, c, "direct").Data))
		_, err := c.Receive(ctxT(t))
		assert.Equal(t, realtime.CloseDisconnected, realtime.CloseCodeOf(err))
		<-conn.Done()
		assert.Equal(t, realtime.CloseError{Code: realtime.CloseDisconnected, Reason: "kicked"}, conn.Reason())
		assert.ErrorIs(t, conn.Send([]byte(`1`)), realtime.ErrClosed)
	})
}

func TestManyNodesShareOneOrder(t *testing.T) {
	t.Parallel()
	broker := realtime.NewMemoryBroker(nil)
	nodes := []*testHub{
		newTestHub(t, &realtime.Options{Backplane: broker.Backplane()}, nil),
		newTestHub(t, &realtime.Options{Backplane: broker.Backplane()}, nil),
	}
	ctx := ctxT(t)
	var clients []*client.Client
	for _, n := range nodes {
		for i := 0; i < 2; i++ {
			c := n.dial(t, nil)
			_, err := c.Join(ctx, "room")
			require.NoError(t, err)
			clients = append(clients, c)
		}
	}

	const perNode = 200
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perNode; j++ {
				_, err := n.Publish(ctx, "room", []byte(fmt.Sprintf(`"%d-%d"`, i, j)))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()

	var first []string
	for ci, c := range clients {
		var got []string
		var last uint64
		for len(got) < 2*perNode {
			ev := receiveType(t, c, "message")
			require.Equal(t, last+1, ev.Position.Offset, "client %d", ci)
			last = ev.Position.Offset
			got = append(got, string(ev.Data))
		}
		if first == nil {
			first = got
		}
		assert.Equal(t, first, got, "client %d saw another order", ci)
	}
}

func TestPublishAfterShutdownFails(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	require.NoError(t, hub.Shutdown(ctxT(t)))
	require.NoError(t, hub.Shutdown(ctxT(t)), "Shutdown is idempotent")
	require.NoError(t, hub.Close())
	_, err = hub.Publish(ctxT(t), "room", []byte(`1`))
	assert.ErrorIs(t, err, realtime.ErrClosed)
	_, err = hub.Connect(nopTransport{}, realtime.ConnInfo{})
	assert.ErrorIs(t, err, realtime.ErrClosed)
}

type nopTransport struct{}

func (nopTransport) Name() string                                      { return "nop" }
func (nopTransport) Write(ctx context.Context, f realtime.Frame) error { return nil }
func (nopTransport) Close(realtime.CloseCode, string) error            { return nil }

var _ atomic.Int64
var _ = time.Second

func TestNegotiateListsTransports(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts *realtime.HandlerOptions
		want string
	}{
		{nil, `{"protocol":"realtime.v1","transports":[{"name":"websocket","path":"ws"},{"name":"sse","path":"sse"},{"name":"longpoll","path":"poll"}]}`},
		{&realtime.HandlerOptions{NoWebSocket: true}, `{"protocol":"realtime.v1","transports":[{"name":"sse","path":"sse"},{"name":"longpoll","path":"poll"}]}`},
	} {
		th := newTestHubWith(t, nil, tc.opts)
		resp, err := http.Get(th.base + "negotiate")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		assert.JSONEq(t, tc.want, string(body))
		resp, err = http.Get(th.base + "ws")
		require.NoError(t, err)
		resp.Body.Close()
		if tc.opts != nil {
			assert.Equal(t, http.StatusNotFound, resp.StatusCode)
		}
	}
}

// Without history, a resume that missed a message is reported as not
// recovered; one that missed nothing is recovered.
func TestResumeWithoutHistory(t *testing.T) {
	t.Parallel()
	bp := realtime.NewMemoryBackplane(&realtime.MemoryOptions{HistorySize: -1})
	th := newTestHub(t, &realtime.Options{Backplane: bp}, nil)
	ctx := ctxT(t)
	keep := th.dial(t, nil) // keeps the channel followed
	_, err := keep.Join(ctx, "room")
	require.NoError(t, err)
	p1, err := th.Publish(ctx, "room", []byte(`1`))
	require.NoError(t, err)

	rc := th.dialRaw(t)
	rc.send(`{"type":"join","id":1,"channel":"room","since":{"epoch":"` + p1.Epoch + `","offset":1}}`)
	m := rc.next()
	assert.Equal(t, true, m["recovered"], "nothing was missed")

	_, err = th.Publish(ctx, "room", []byte(`2`))
	require.NoError(t, err)
	rc2 := th.dialRaw(t)
	rc2.send(`{"type":"join","id":1,"channel":"room","since":{"epoch":"` + p1.Epoch + `","offset":1}}`)
	m = rc2.next()
	assert.Equal(t, false, m["recovered"])
	assert.Equal(t, float64(2), m["offset"])
}

// The Go client's reconnect: a connection cut while messages are published
// comes back and gets every message once, in order, over each transport.
func TestClientReconnectsAndResumes(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, &client.Options{Reconnect: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
		_, err := c.Join(ctx, "room")
		require.NoError(t, err)

		const total = 300
		var next uint64 = 1
		connected := 1
		published := make(chan error, 1)
		go func() {
			for i := 1; i <= total; i++ {
				if _, err := th.Publish(ctx, "room", []byte(strconv.Itoa(i))); err != nil {
					published <- err
					return
				}
				if i%100 == 0 {
					// Cut the connection under the client's feet.
					if conn := th.Conn(c.ID()); conn != nil {
						conn.CloseNow(realtime.CloseAbnormal, "cut by the test")
					}
				}
			}
			published <- nil
		}()
		for next <= total {
			ev, err := c.Receive(ctx)
			require.NoError(t, err)
			switch ev.Type {
			case "message":
				require.Equal(t, next, ev.Position.Offset, "lost or repeated")
				require.Equal(t, strconv.FormatUint(next, 10), string(ev.Data))
				next++
			case "joined":
				require.True(t, ev.Resumed)
				require.True(t, ev.Recovered, "history holds all %d", total)
			case "connected":
				connected++
			case "disconnected":
			default:
				t.Fatalf("unexpected %+v", ev)
			}
		}
		require.NoError(t, <-published)
		assert.GreaterOrEqual(t, connected, 2, "the test never cut the connection")
	})
}
