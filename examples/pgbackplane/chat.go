package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/realtimekit/realtime"
)

//go:embed static
var static embed.FS

// roomChannel is the form of the channels that hold chat rooms.
var roomChannel = regexp.MustCompile(`^room:[A-Za-z0-9_-]{1,32}$`)

// post is what a browser publishes into a room.
type post struct {
	Name string `json:"name"`
	Text string `json:"text"`
	Node string `json:"node,omitempty"`
}

// newChat returns a hub on bp and the handler that serves the chat page,
// the node's name at /node and, under /realtime/, the client script and
// the transports.
func newChat(bp realtime.Backplane, logger *slog.Logger) (*realtime.Hub, http.Handler, error) {
	hub, err := realtime.New(&realtime.Options{
		Backplane:    bp,
		Logger:       logger,
		Authenticate: authenticate,
		AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
			if !roomChannel.MatchString(channel) {
				return errors.New("rooms are named room:<letters, digits, - or _>")
			}
			return nil
		},
		AuthorizePublish: authorizePost,
	})
	if err != nil {
		return nil, nil, err
	}

	assets, err := fs.Sub(static, "static")
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServerFS(assets))
	mux.HandleFunc("GET /node", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"node": bp.Node()})
	})
	// Ready while the backplane can deliver: for a load balancer.
	mux.Handle("/ready", hub.ReadyHandler())
	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
	return hub, mux, nil
}

// authenticate takes the user's name from the query. A real application
// would read a session cookie or a token here.
func authenticate(r *http.Request) (realtime.Identity, error) {
	name := strings.TrimSpace(r.URL.Query().Get("name"))
	if name == "" || utf8.RuneCountInString(name) > 32 {
		return realtime.Identity{}, errors.New("chat: a name of 1 to 32 characters is required")
	}
	return realtime.Identity{UserID: name}, nil
}

// authorizePost lets members post under their own name only.
func authorizePost(ctx context.Context, c *realtime.Conn, channel string, data []byte) error {
	if !slices.Contains(c.Channels(), channel) {
		return errors.New("join the room before posting")
	}
	var p post
	if err := json.Unmarshal(data, &p); err != nil {
		return errors.New(`a post is {"name": ..., "text": ...}`)
	}
	n := utf8.RuneCountInString(strings.TrimSpace(p.Text))
	switch {
	case p.Name != c.Identity().UserID:
		return errors.New("you can post under your own name only")
	case n == 0 || n > 500:
		return errors.New("a post has 1 to 500 characters")
	}
	return nil
}
