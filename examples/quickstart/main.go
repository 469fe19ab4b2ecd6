// Command quickstart is the smallest useful realtime server: a hub on a
// mux, the browser client script, and a clock published every second.
package main

import (
	"context"
	"log"
	"net/http"
	"time"

	"github.com/realtimekit/realtime"
)

func main() {
	hub, err := realtime.New(nil) // in-memory backplane, default limits
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Shutdown(context.Background())

	mux := http.NewServeMux()
	mux.Handle("/realtime/ws", realtime.NewWebSocketHandler(hub, nil))
	mux.Handle("/realtime/realtime.js", realtime.ClientScriptHandler())

	go func() { // the app publishes; every member of "clock" receives
		for t := range time.Tick(time.Second) {
			hub.Publish(context.Background(), "clock", []byte(`"`+t.Format(time.TimeOnly)+`"`))
		}
	}()
	log.Fatal(http.ListenAndServe("localhost:8080", mux))
}
