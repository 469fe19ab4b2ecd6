package realtime_test

// Cases found by trying to break the hub, kept so they stay fixed.

import (
	"context"
	"strings"
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
