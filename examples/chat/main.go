// Command chat serves a multi-room chat on a realtime hub: open
// http://localhost:8080 in two browser tabs and talk.
//
// Read ../internal/chatapp/chat.go first: it wires the hub's hooks (who
// may join and post, presence notices) and mounts the hub into an
// http.ServeMux. This file runs the server and shuts it down on a signal.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/realtimekit/realtime/examples/internal/chatapp"
)

func main() {
	addr := flag.String("addr", "localhost:8080", "address to listen on")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, logger); err != nil {
		logger.Error("chat failed", "err", err)
		os.Exit(1)
	}
}

func run(addr string, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	hub, handler, err := chatapp.New(logger, nil)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	logger.Info("chat listening", "url", "http://"+addr)

	select {
	case err := <-errc:
		hub.Close()
		return err
	case <-ctx.Done():
	}

	// The hub first: http.Server.Shutdown does not wait for WebSockets.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hub.Shutdown(shutdownCtx); err != nil {
		logger.Warn("hub shutdown", "err", err)
	}
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
