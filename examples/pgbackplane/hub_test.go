package main

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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime/client"
)

// startChat runs the example's chat on its own node behind an httptest
// server and returns the server's URL and the node.
func startChat(t *testing.T, pool *pgxpool.Pool, prefix string) (string, *Backplane) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bp, err := New(ctx, pool, &Options{Prefix: prefix})
	require.NoError(t, err)
	hub, handler, err := newChat(bp, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	t.Cleanup(func() {
		assert.NoError(t, hub.Close())
		srv.Close()
	})
	return srv.URL, bp
}

// TestChatAcrossNodes has two users talk on two chat nodes that share one
// database.
func TestChatAcrossNodes(t *testing.T) {
	pool := testPool(t, nil)
	prefix := uniquePrefix(t, pool)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url1, bp1 := startChat(t, pool, prefix)
	url2, _ := startChat(t, pool, prefix)

	// The page, the node's name and the client script are served.
	for path, want := range map[string]string{
		"/":                     "<html",
		"/node":                 bp1.Node(),
		"/realtime/realtime.js": "export function connect",
		"/readyz":               "ready",
	} {
		resp, err := http.Get(url1 + path)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}

	ws := func(url, name string) *client.Client {
		c, err := client.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/realtime/ws?name="+name, nil)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = c.Join(ctx, "room:lobby")
		require.NoError(t, err)
		return c
	}
	ann, bob := ws(url1, "ann"), ws(url2, "bob")

	_, err := ann.Publish(ctx, "room:lobby", postJSON(t, post{Name: "ann", Text: "hi bob"}))
	require.NoError(t, err)
	_, err = bob.Publish(ctx, "room:lobby", postJSON(t, post{Name: "bob", Text: "hi ann 👋"}))
	require.NoError(t, err)
	for _, c := range []*client.Client{ann, bob} {
		assert.Equal(t, post{Name: "ann", Text: "hi bob"}, nextPost(t, c))
		assert.Equal(t, post{Name: "bob", Text: "hi ann 👋"}, nextPost(t, c))
	}

	// Nobody posts under another's name.
	var se *client.ServerError
	_, err = bob.Publish(ctx, "room:lobby", postJSON(t, post{Name: "ann", Text: "it is me"}))
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "forbidden", se.Code)
}

// post is what the chat page publishes into a room.
type post struct {
	Name string `json:"name"`
	Text string `json:"text"`
}

// nextPost returns the next post c receives, passing over the notices of
// who comes and goes.
func nextPost(t *testing.T, c *client.Client) post {
	t.Helper()
	for {
		var p post
		require.NoError(t, json.Unmarshal(nextMessage(t, c).Data, &p))
		if p.Text != "" {
			return p
		}
	}
}

func postJSON(t *testing.T, p post) []byte {
	b, err := json.Marshal(p)
	require.NoError(t, err)
	return b
}

func nextMessage(t *testing.T, c *client.Client) client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "message", ev.Type, "%+v", ev)
	return ev
}
