package chatapp

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realtimekit/realtime/client"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestTwoUsersChat(t *testing.T) {
	hub, handler, err := New(slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	defer srv.Close()
	defer hub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws := "ws" + strings.TrimPrefix(srv.URL, "http") + "/realtime/ws?name="

	// The page and the client script are served.
	for path, want := range map[string]string{"/": "<html", "/realtime/realtime.js": "export function connect"} {
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}

	// A name is required.
	_, err = client.Dial(ctx, ws, nil)
	require.Error(t, err)

	ann, err := client.Dial(ctx, ws+"ann", nil)
	require.NoError(t, err)
	defer ann.Close()
	_, err = ann.Join(ctx, "room:lobby")
	require.NoError(t, err)
	assert.JSONEq(t, `{"system":"join","name":"ann"}`, string(next(t, ann).Data))

	bob, err := client.Dial(ctx, ws+"bob", nil)
	require.NoError(t, err)
	defer bob.Close()
	_, err = bob.Join(ctx, "room:lobby")
	require.NoError(t, err)
	assert.JSONEq(t, `{"system":"join","name":"bob"}`, string(next(t, ann).Data))
	assert.JSONEq(t, `{"system":"join","name":"bob"}`, string(next(t, bob).Data))

	_, err = bob.Publish(ctx, "room:lobby", postJSON(t, "bob", "hi ann"))
	require.NoError(t, err)
	_, err = ann.Publish(ctx, "room:lobby", postJSON(t, "ann", "hi bob 👋"))
	require.NoError(t, err)
	for _, c := range []*client.Client{ann, bob} {
		assert.JSONEq(t, `{"name":"bob","text":"hi ann"}`, string(next(t, c).Data))
		assert.JSONEq(t, `{"name":"ann","text":"hi bob 👋"}`, string(next(t, c).Data))
	}

	// Nobody posts under another's name, or outside the rooms.
	var se *client.ServerError
	_, err = bob.Publish(ctx, "room:lobby", postJSON(t, "ann", "it is me, ann"))
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "forbidden", se.Code)
	_, err = bob.Join(ctx, "admin")
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "forbidden", se.Code)

	// Leaving is announced, also by disconnecting.
	require.NoError(t, bob.Close())
	assert.JSONEq(t, `{"system":"leave","name":"bob"}`, string(next(t, ann).Data))
}

func postJSON(t *testing.T, name, text string) []byte {
	b, err := json.Marshal(map[string]string{"name": name, "text": text})
	require.NoError(t, err)
	return b
}

func next(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "message", ev.Type, "%+v", ev)
	return ev
}
