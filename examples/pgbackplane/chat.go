package main

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/examples/internal/chatapp"
)

// newChat returns the chat of examples/chat on a hub on bp, and the
// handler that serves it, with the node's name at /node.
func newChat(bp realtime.Backplane, logger *slog.Logger) (*realtime.Hub, http.Handler, error) {
	hub, chat, err := chatapp.New(logger, bp)
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /node", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"node": bp.Node()})
	})
	mux.Handle("/", chat)
	return hub, mux, nil
}
