package natsbackplane_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
	"github.com/realtimekit/realtime/natsbackplane"
)

// startNode runs a hub on its own NATS backplane node behind an httptest
// server and returns the hub and its WebSocket URL.
func startNode(t *testing.T, prefix string) (*realtime.Hub, string) {
	t.Helper()
	bp, err := natsbackplane.New(connect(t), &natsbackplane.Options{Prefix: prefix})
	require.NoError(t, err)
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		assert.NoError(t, hub.Close())
		srv.Close()
	})
	return hub, "ws" + strings.TrimPrefix(srv.URL, "http") + "/rt/ws"
}

// TestHubsOnThreeNodesAgreeOnOrder publishes from clients and hubs on
// three nodes at once; every client on every node must see every message
// once, all in the same order, with each publisher's messages in its own
// order.
func TestHubsOnThreeNodesAgreeOnOrder(t *testing.T) {
	prefix := uniquePrefix(t, connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var hubs []*realtime.Hub
	var clients []*client.Client
	for range 3 {
		hub, url := startNode(t, prefix)
		hubs = append(hubs, hub)
		for range 2 {
			c, err := client.Dial(ctx, url, nil)
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			_, err = c.Join(ctx, "room.1")
			require.NoError(t, err)
			clients = append(clients, c)
		}
	}

	const each = 40
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for n := range each {
				_, err := c.Publish(ctx, "room.1", fmt.Appendf(nil, `"client%d/%d"`, i, n))
				assert.NoError(t, err)
			}
		})
	}
	for i, h := range hubs {
		wg.Go(func() {
			for n := range each {
				_, err := h.Publish(ctx, "room.1", fmt.Appendf(nil, `"hub%d/%d"`, i, n))
				assert.NoError(t, err)
			}
		})
	}
	wg.Wait()

	total := each * (len(clients) + len(hubs))
	var first []client.Event
	for i, c := range clients {
		var got []client.Event
		for len(got) < total {
			ev, err := c.Receive(ctx)
			require.NoError(t, err, "client %d after %d of %d", i, len(got), total)
			require.NotEqual(t, "gap", ev.Type, "client %d: no message is lost", i)
			if ev.Type == "message" {
				got = append(got, ev)
			}
		}
		next := map[string]int{}
		for k, ev := range got {
			if k > 0 {
				require.Equal(t, got[k-1].Position.Offset+1, ev.Position.Offset, "client %d: offsets rise by one", i)
				require.Equal(t, got[k-1].Position.Epoch, ev.Position.Epoch)
			}
			who, n, _ := bytes.Cut(bytes.Trim(ev.Data, `"`), []byte("/"))
			require.Equal(t, fmt.Sprint(next[string(who)]), string(n), "client %d: %s out of order", i, who)
			next[string(who)]++
		}
		if first == nil {
			first = got
		} else {
			require.Equal(t, first, got, "client %d saw another order", i)
		}
	}
	for _, h := range hubs {
		assert.Zero(t, h.Stats().Gaps)
	}
}
