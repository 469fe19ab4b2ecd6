package realtime_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// A hub mounted into a mux, a Go client joining a channel, and the
// application publishing to it.
func ExampleNew() {
	hub, err := realtime.New(nil)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/realtime/ws", realtime.NewWebSocketHandler(hub, nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/realtime/ws"
	c, err := client.Dial(ctx, url, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Join(ctx, "news"); err != nil {
		log.Fatal(err)
	}

	if _, err := hub.Publish(ctx, "news", []byte(`{"headline":"hello"}`)); err != nil {
		log.Fatal(err)
	}
	ev, err := c.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ev.Type, ev.Channel, string(ev.Data), ev.Position.Offset)

	// Shutdown tells the client the server is going away.
	if err := hub.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = c.Receive(ctx)
	fmt.Println(realtime.CloseCodeOf(err) == realtime.CloseGoingAway)
	// Output:
	// message news {"headline":"hello"} 1
	// true
}

// The authorisation hooks decide who joins and publishes where; a refusal
// reaches the client as an error with a code, and the connection stays.
func ExampleOptions_authorization() {
	hub, err := realtime.New(&realtime.Options{
		Authenticate: func(r *http.Request) (realtime.Identity, error) {
			return realtime.Identity{UserID: r.URL.Query().Get("user")}, nil
		},
		AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
			if channel == "user:"+c.Identity().UserID {
				return nil
			}
			return fmt.Errorf("only your own inbox")
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()
	mux := http.NewServeMux()
	mux.Handle("/ws", realtime.NewWebSocketHandler(hub, nil))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws?user=ann", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.Join(ctx, "user:bob")
	fmt.Println(err)
	_, err = c.Join(ctx, "user:ann")
	fmt.Println(err)
	// Output:
	// realtime server: forbidden (channel user:bob): only your own inbox
	// <nil>
}

// Direct messages go to one connection; OnMessage receives what a client
// sends to the application.
func ExampleConn_Send() {
	hub, err := realtime.New(&realtime.Options{
		OnMessage: func(ctx context.Context, c *realtime.Conn, data []byte) error {
			return c.Send([]byte(`{"echo":` + string(data) + `}`))
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()
	srv := httptest.NewServer(realtime.NewWebSocketHandler(hub, nil))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(ctx, []byte(`"ping"`)); err != nil {
		log.Fatal(err)
	}
	ev, err := c.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ev.Type, string(ev.Data))
	// Output:
	// direct {"echo":"ping"}
}
