package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestUsersOnDifferentNodesTalk runs three nodes on each backplane, with
// a user on each node over a different transport.
func TestUsersOnDifferentNodesTalk(t *testing.T) {
	brokers := map[string]string{
		"memory": "memory",
		"redis":  envOr("REALTIME_REDIS_URL", "redis://127.0.0.1:6379"),
		"nats":   envOr("REALTIME_NATS_URL", "nats://127.0.0.1:4222"),
	}
	for name, spec := range brokers {
		t.Run(name, func(t *testing.T) {
			newBackplane, closeBroker, err := broker(spec, "realtime-cluster-test")
			if err == nil {
				err = reachable(newBackplane)
			}
			if err != nil {
				msg := "no broker at " + spec + ": " + err.Error() + " (scripts/test.sh starts one)"
				if os.Getenv("CI") != "" {
					t.Fatal(msg)
				}
				t.Skip(msg)
			}
			defer closeBroker()
			cl, err := start(3, func(int) (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
				newBackplane, slog.New(slog.DiscardHandler))
			require.NoError(t, err)
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				cl.shutdown(ctx)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			for _, nd := range cl.nodes {
				require.Eventually(t, func() bool {
					resp, err := http.Get("http://" + nd.addr + "/readyz")
					if err != nil {
						return false
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					return resp.StatusCode == http.StatusOK
				}, 10*time.Second, 20*time.Millisecond, "node %s becomes ready", nd.addr)
			}

			lb := httptest.NewServer(balancer(cl))
			defer lb.Close()

			// A user on each node, and two behind the load balancer, whose
			// requests land on every node in turn.
			users := []struct{ name, transport, path, host string }{
				{"ann", client.WebSocket, "ws", cl.nodes[0].addr},
				{"bob", client.SSE, "sse", cl.nodes[1].addr},
				{"cy", client.LongPoll, "poll", cl.nodes[2].addr},
				{"dee", client.LongPoll, "poll", strings.TrimPrefix(lb.URL, "http://")},
				{"eve", client.SSE, "sse", strings.TrimPrefix(lb.URL, "http://")},
			}
			var clients []*client.Client
			for _, u := range users {
				base := "http://" + u.host + "/realtime/" + u.path + "?name=" + u.name
				if u.transport == client.WebSocket {
					base = "ws" + base[len("http"):]
				}
				c, err := client.Dial(ctx, base, &client.Options{Transport: u.transport})
				require.NoError(t, err, u.name)
				defer c.Close()
				_, err = c.Join(ctx, "room:lobby")
				require.NoError(t, err, u.name)
				clients = append(clients, c)
			}
			// Each hears the others arrive; then ann's post, sent on node
			// 0, reaches nodes 1 and 2.
			post, _ := json.Marshal(map[string]string{"name": "ann", "text": "hello, other nodes"})
			_, err = clients[0].Publish(ctx, "room:lobby", post)
			require.NoError(t, err)
			for i, c := range clients {
				for {
					ev, err := c.Receive(ctx)
					require.NoError(t, err, users[i].name)
					if ev.Type == "message" && string(ev.Data) == string(post) {
						break
					}
					assert.NotEqual(t, "gap", ev.Type)
				}
			}
		})
	}
}

// reachable reports an error if a backplane cannot become healthy soon.
func reachable(newBackplane func() (realtime.Backplane, error)) error {
	bp, err := newBackplane()
	if err != nil {
		return err
	}
	defer bp.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for {
		err := bp.Health(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
