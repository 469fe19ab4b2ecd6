// Command pgbackplane runs a chat node whose hub shares its channels with
// other nodes through PostgreSQL LISTEN/NOTIFY: a custom
// realtime.Backplane written outside the library, on its exported API
// alone. Start two nodes on one database and chat across them:
//
//	go run ./examples/pgbackplane -addr localhost:8080
//	go run ./examples/pgbackplane -addr localhost:8081
//
// Read pgbackplane.go first (the Backplane, its options and its SQL in
// queries.go), then listen.go (the listener connection) and wire.go (the
// notification format). chat.go is the chat on top; this file runs a node
// and shuts it down on a signal.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultDSN is the database of a local PostgreSQL with trust
// authentication; REALTIME_PG_DSN overrides it, and -dsn both.
const defaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

func main() {
	addr := flag.String("addr", "localhost:8080", "address to listen on")
	dsn := flag.String("dsn", cmp.Or(os.Getenv("REALTIME_PG_DSN"), defaultDSN), "PostgreSQL connection string")
	prefix := flag.String("prefix", "realtime_chat", "prefix of the backplane's tables and notification channels")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*addr, *dsn, *prefix, logger); err != nil {
		logger.Error("pgbackplane chat failed", "err", err)
		os.Exit(1)
	}
}

func run(addr, dsn, prefix string, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	// Closed last: the backplane uses the pool until the hub closes it.
	defer pool.Close()
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	bp, err := New(startCtx, pool, &Options{Prefix: prefix, Logger: logger})
	if err != nil {
		return err
	}
	hub, handler, err := newChat(bp, logger)
	if err != nil {
		bp.Close()
		return err
	}

	srv := &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	logger.Info("pgbackplane chat listening", "url", "http://"+addr, "node", bp.Node())

	select {
	case err := <-errc:
		hub.Close()
		return err
	case <-ctx.Done():
	}

	// The hub first: http.Server.Shutdown does not wait for WebSockets.
	// Closing the hub closes the backplane.
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
