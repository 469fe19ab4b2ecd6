// Package chatapp is the multi-room chat that the chat and cluster
// examples serve: it wires a hub's hooks (who may join and post, presence
// notices) and mounts the hub into an http.ServeMux beside the page.
package chatapp

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
	"time"
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
}

// notice is what the server publishes when someone comes or goes.
type notice struct {
	System string `json:"system"`
	Name   string `json:"name"`
}

// New returns the chat's hub on bp (nil for the in-memory backplane of
// one process) and the handler that serves the page, under /realtime/ the
// client script and the transports, and at /readyz the hub's readiness.
func New(logger *slog.Logger, bp realtime.Backplane) (*realtime.Hub, http.Handler, error) {
	var hub *realtime.Hub
	announce := func(channel string, n notice) {
		data, _ := json.Marshal(n)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := hub.Publish(ctx, channel, data)
		if err != nil && !errors.Is(err, realtime.ErrClosed) {
			logger.Warn("chat notice not published", "channel", channel, "err", err)
		}
	}

	hub, err := realtime.New(&realtime.Options{
		Logger:       logger,
		Backplane:    bp,
		Authenticate: authenticate,
		AuthorizeJoin: func(ctx context.Context, c *realtime.Conn, channel string) error {
			if !roomChannel.MatchString(channel) {
				return errors.New("rooms are named room:<letters, digits, - or _>")
			}
			return nil
		},
		AuthorizePublish: authorizePost,
		OnJoin: func(c *realtime.Conn, channel string) {
			announce(channel, notice{System: "join", Name: c.Identity().UserID})
		},
		OnLeave: func(c *realtime.Conn, channel string) {
			announce(channel, notice{System: "leave", Name: c.Identity().UserID})
		},
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
	// The client script, negotiation and every transport.
	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
	mux.Handle("/readyz", hub.ReadyHandler())
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
