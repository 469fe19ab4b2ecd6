package realtime_test

// Cases found by trying to break the hub, kept so they stay fixed.

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

func TestJoiningTwiceDeliversOnce(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	ctx := ctxT(t)
	c := th.dial(t, nil)
	_, err := c.Join(ctx, "a")
	require.NoError(t, err)
	_, err = c.Join(ctx, "a")
	require.NoError(t, err)
	conn := th.Conn(c.ID())
	require.NoError(t, conn.Join(ctx, "a"))
	assert.Equal(t, "joined", receiveType(t, c, "joined").Type)
	assert.Len(t, th.Members("a"), 1)

	for i := 0; i < 2; i++ {
		_, err := th.Publish(ctx, "a", []byte(`1`))
		require.NoError(t, err)
	}
	assert.Equal(t, uint64(1), receiveType(t, c, "message").Position.Offset)
	assert.Equal(t, uint64(2), receiveType(t, c, "message").Position.Offset)
	require.NoError(t, c.Ping(ctx)) // nothing else was queued before the pong
}

func TestInvalidUTF8TravelsAsBytes(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	ctx := ctxT(t)
	sub := th.dialRaw(t)
	sub.send(`{"type":"join","id":1,"channel":"a"}`)
	require.Equal(t, "joined", sub.next()["type"])

	pub := th.dialRaw(t)
	pub.send(`{"type":"join","id":1,"channel":"a"}`)
	require.Equal(t, "joined", pub.next()["type"])
	pub.send("{\"type\":\"publish\",\"channel\":\"a\",\"data\":\"\xff\xfe\"}")
	_, err := th.Publish(ctx, "a", []byte("\"\xff\""))
	require.NoError(t, err)

	for seen := 0; seen < 2; {
		_, frame, err := sub.ws.Read(ctx)
		require.NoError(t, err)
		assert.True(t, utf8.Valid(frame), "frame %q", frame)
		seen += strings.Count(string(frame), `"b64"`)
	}
}

func TestHooksMayChangeMembership(t *testing.T) {
	t.Parallel()
	var th *testHub
	th = newTestHub(t, &realtime.Options{
		OnJoin: func(c *realtime.Conn, channel string) {
			if channel == "door" {
				c.Leave("door")
				c.Join(context.Background(), "room")
			}
		},
		OnLeave: func(c *realtime.Conn, channel string) {
			if channel == "room" {
				c.Join(context.Background(), "lobby") // fails once closing
			}
		},
	}, nil)
	ctx := ctxT(t)
	c := th.dial(t, nil)
	_, err := c.Join(ctx, "door")
	require.NoError(t, err)
	assert.Equal(t, "door", receiveType(t, c, "left").Channel)
	assert.Equal(t, "room", receiveType(t, c, "joined").Channel)

	require.NoError(t, th.Shutdown(ctx))
}

func TestShutdownHonoursContext(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	// A client that never reads cannot finish the close handshake.
	th.dialRaw(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := th.Shutdown(ctx)
	if err != nil {
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	}
	assert.Less(t, time.Since(start), 2*time.Second)
	require.NoError(t, th.Close())
}

func TestShutdownDeliversWhatWasPublished(t *testing.T) {
	t.Parallel()
	forEachTransport(t, func(t *testing.T, tr string) {
		th := newTestHub(t, nil, nil).over(tr)
		ctx := ctxT(t)
		c := th.dial(t, nil)
		_, err := c.Join(ctx, "a")
		require.NoError(t, err)
		const n = 200
		for i := 0; i < n; i++ {
			_, err := th.Publish(ctx, "a", []byte(`1`))
			require.NoError(t, err)
		}
		require.NoError(t, th.Shutdown(ctx))
		for i := 0; i < n; i++ {
			receiveType(t, c, "message")
		}
		_, err = c.Receive(ctx)
		assert.Equal(t, realtime.CloseGoingAway, realtime.CloseCodeOf(err), "%v", err)
	})
}

func TestOneFrameCannotFloodReplies(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	rc := th.dialRaw(t)
	rc.send("[" + strings.Repeat("1,", 20000) + "1]")
	m := rc.next()
	assert.Equal(t, "bad_frame", m["code"])
	assert.Contains(t, m["message"], "commands in one frame")

	rc.send("[" + strings.Repeat(`{"type":"nope"},`, 999) + `{"type":"nope"}]`)
	for i := 0; i < 16; i++ {
		assert.Equal(t, "unknown_type", rc.next()["code"])
	}
	assert.Contains(t, rc.next()["message"], "too many failing commands")
	rc.send(`{"type":"ping","id":1}`)
	assert.Equal(t, "pong", rc.next()["type"])
	assert.Len(t, th.Conns(), 1)
}

func TestConnContextEndsWhenClosing(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	defer hub.Close()
	c, err := hub.Connect(nopTransport{}, realtime.ConnInfo{})
	require.NoError(t, err)
	require.NoError(t, c.Close(realtime.CloseNormal, ""))
	assert.Error(t, c.Context().Err())
	assert.ErrorIs(t, c.Receive(context.Background(), []byte(`{"type":"ping"}`)), realtime.ErrClosed)
	<-c.Done()
}

func TestClientDropsRepliesItStoppedWaitingFor(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{
		AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
			if channel == "slow" {
				time.Sleep(100 * time.Millisecond)
			}
			return nil
		},
	}, nil)
	c := th.dial(t, nil)
	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := c.Join(short, "slow")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool { return len(th.Members("slow")) == 1 }, 5*time.Second, time.Millisecond)
	_, err = th.Publish(ctxT(t), "slow", []byte(`"first"`))
	require.NoError(t, err)
	// The late "joined" reply is not an event; the message is.
	assert.Equal(t, `"first"`, string(receiveType(t, c, "message").Data))
}

func TestClientCloseIsQuietAfterServerVanished(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	c := th.dial(t, nil)
	th.waitConns(t, 1)
	require.NoError(t, th.Close())
	_, err := c.Receive(ctxT(t))
	assert.Error(t, err)
	assert.NoError(t, c.Close())
	assert.NoError(t, c.Close())
}

func TestWebSocketBinaryFrameRefused(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	rc := th.dialRaw(t)
	require.NoError(t, rc.ws.Write(ctxT(t), websocket.MessageBinary, []byte(`{"type":"ping"}`)))
	assert.Equal(t, "bad_frame", rc.next()["code"])
}

// A resumed stream's first events carry the cursor it resumed from, so a
// client that drops again before the joins arrive loses nothing.
func TestResumedStreamKeepsCursorUntilJoined(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	p, err := th.Publish(ctxT(t), "room", []byte(`1`))
	require.NoError(t, err)
	cursor := "room:" + p.Epoch + ":1"

	s := openSSE(t, nil, th.base+"sse", cursor)
	assert.Equal(t, cursor, s.lastID, "the welcome event's id")
	_, open := openPoll(t, th.base+"poll", url.Values{"cursor": {cursor}})
	assert.Equal(t, cursor, open.Cursor)
}

func TestRepeatedJoinKeepsPosition(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	ctx := ctxT(t)
	for i := 0; i < 5; i++ {
		_, err := th.Publish(ctx, "a", []byte(`1`))
		require.NoError(t, err)
	}
	c := th.dial(t, nil)
	first, err := c.Join(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, uint64(5), first.Offset)
	again, err := c.Join(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, first, again)
}

func TestLongPollCursorForgetsLeftChannels(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)
	require.Equal(t, http.StatusAccepted, postCommand(t, base, session, `{"type":"join","channel":"a"}`, nil))
	r := poll(t, base, session, first.Seq)
	require.NotEmpty(t, r.Cursor)
	require.Equal(t, http.StatusAccepted, postCommand(t, base, session, `{"type":"leave","channel":"a"}`, nil))
	r = poll(t, base, session, r.Seq)
	require.Equal(t, "left", r.Messages[0]["type"])
	assert.Empty(t, r.Cursor)
}

func TestCommandsOfOneSessionRunOneAtATime(t *testing.T) {
	t.Parallel()
	var running, most atomic.Int32
	th := newTestHub(t, &realtime.Options{
		OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			return nil
		},
	}, nil)
	s := openSSE(t, nil, th.base+"sse", "")
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.Equal(t, http.StatusAccepted, s.post(`{"type":"send","data":1}`))
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), most.Load())
}

func TestLongPollChecksOriginAndIdentity(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{
		Authenticate: func(r *http.Request) (realtime.Identity, error) {
			return realtime.Identity{UserID: r.Header.Get("X-User")}, nil
		},
	}, nil)
	base := th.base + "poll"
	req, _ := http.NewRequest(http.MethodGet, base, nil)
	req.Header.Set("X-User", "alice")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var open pollReply
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&open))
	resp.Body.Close()
	session := open.Messages[0]["session"].(string)

	for _, h := range []http.Header{
		{"X-User": {"bob"}},
		{"X-User": {"alice"}, "Origin": {"https://evil.test"}},
	} {
		req, _ := http.NewRequest(http.MethodGet, base+"?session="+session+"&ack=1", nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%v", h)
	}
}
