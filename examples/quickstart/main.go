// Command quickstart is the smallest useful realtime server: a hub with
// every transport under /realtime/, and a clock published every second.
package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/realtimekit/realtime"
)

func main() {
	hub, err := realtime.New(nil) // in-memory backplane, default limits
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	// WebSocket, SSE, long-poll, negotiation and the browser client.
	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
	srv := &http.Server{Addr: "localhost:8080", Handler: mux}
	go func() {
		if err := srv.ListenAndServe(); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	tick := time.NewTicker(time.Second)
	for { // the app publishes; every member of "clock" receives
		select {
		case t := <-tick.C:
			hub.Publish(ctx, "clock", []byte(`"`+t.Format(time.TimeOnly)+`"`))
		case <-ctx.Done():
			hub.Shutdown(context.Background()) // first: it ends the streams
			srv.Shutdown(context.Background())
			return
		}
	}
}
