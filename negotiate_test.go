package realtime_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// autoHub serves a hub under /rt/ whose WebSocket endpoint refuses
// upgrades while blockWS is set, as a proxy that strips them would.
func autoHub(t *testing.T, hopts *realtime.HandlerOptions) (*realtime.Hub, string, *atomic.Bool) {
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	var blockWS atomic.Bool
	rt := realtime.NewHandler(hub, hopts)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if blockWS.Load() && strings.HasSuffix(r.URL.Path, "/ws") {
			http.Error(w, "no upgrades here", http.StatusBadGateway)
			return
		}
		rt.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		hub.Close()
		srv.Close()
	})
	return hub, srv.URL + "/rt/", &blockWS
}

func TestAutoNegotiatesAndFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hopts   *realtime.HandlerOptions
		blockWS bool
		want    string
	}{
		{"websocket first", nil, false, client.WebSocket},
		{"not offered", &realtime.HandlerOptions{NoWebSocket: true}, false, client.SSE},
		{"refused on the way", nil, true, client.SSE},
		{"only long-poll", &realtime.HandlerOptions{NoWebSocket: true, NoSSE: true}, false, client.LongPoll},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub, mount, blockWS := autoHub(t, tc.hopts)
			blockWS.Store(tc.blockWS)
			ctx := ctxT(t)
			c, err := client.Dial(ctx, mount, &client.Options{Transport: client.Auto})
			require.NoError(t, err)
			defer c.Close()
			assert.Equal(t, tc.want, c.Transport())
			_, err = c.Join(ctx, "room")
			require.NoError(t, err)
			_, err = hub.Publish(ctx, "room", []byte(`"hi"`))
			require.NoError(t, err)
			ev := receiveType(t, c, "message")
			assert.Equal(t, `"hi"`, string(ev.Data))
		})
	}
}

// A client that negotiated WebSocket and lost it comes back over SSE and
// resumes its channel from its position, with nothing lost.
func TestAutoReconnectsOverAnotherTransport(t *testing.T) {
	t.Parallel()
	hub, mount, blockWS := autoHub(t, nil)
	ctx := ctxT(t)
	c, err := client.Dial(ctx, mount, &client.Options{Transport: client.Auto, Reconnect: true,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, client.WebSocket, c.Transport())
	_, err = c.Join(ctx, "room")
	require.NoError(t, err)
	_, err = hub.Publish(ctx, "room", []byte(`1`))
	require.NoError(t, err)
	receiveType(t, c, "message")

	// WebSocket goes away; two messages are published meanwhile.
	blockWS.Store(true)
	for _, conn := range hub.Conns() {
		conn.CloseNow(realtime.CloseAbnormal, "network lost")
	}
	receiveType(t, c, "disconnected")
	for _, d := range []string{`2`, `3`} {
		_, err = hub.Publish(ctx, "room", []byte(d))
		require.NoError(t, err)
	}
	receiveType(t, c, "connected")
	assert.Equal(t, client.SSE, c.Transport())
	joined := receiveType(t, c, "joined")
	assert.True(t, joined.Resumed)
	assert.True(t, joined.Recovered, "resumed from its position on the new transport")
	for _, want := range []string{`2`, `3`} {
		assert.Equal(t, want, string(receiveType(t, c, "message").Data))
	}
}
