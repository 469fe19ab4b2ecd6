// Command tcptransport shows that transports are pluggable: one realtime
// hub serves browsers over HTTP (WebSocket, SSE, long-poll) and plain TCP
// clients speaking newline-delimited JSON, such as devices and
// command-line tools, and both meet in the same channels.
//
// The TCP transport in tcp.go is written with nothing but the exported
// API of package realtime, as a third party would write one. Read it
// first; this file wires it next to the standard HTTP handler and runs
// both until SIGINT or SIGTERM.
//
// Run it from the repository root:
//
//	go run ./examples/tcptransport
//
// Flags: -http (default localhost:8080) and -tcp (default localhost:7070)
// choose the addresses, -v logs every connection.
//
// Open http://localhost:8080 in a browser: the page joins the channel
// "lobby". Then talk to the same hub from a terminal with
//
//	nc localhost 7070
//
// and paste these lines, one at a time. The first names you (this
// example trusts the name; a real server would check a token there):
//
//	{"type":"hello","user":"ann"}
//	{"type":"join","id":1,"channel":"lobby"}
//	{"type":"publish","id":2,"channel":"lobby","data":{"user":"ann","text":"hi from nc"}}
//	{"type":"ping","id":3}
//
// Each answer is one line holding a JSON array of messages; what the
// browser publishes arrives as "message" lines. When the server stops,
// the last line is a "close" message with code 1001.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/realtimekit/realtime"
)

//go:embed index.html
var indexHTML []byte

func main() {
	httpAddr := flag.String("http", "localhost:8080", "address for browsers (HTTP, WebSocket, SSE, long-poll)")
	tcpAddr := flag.String("tcp", "localhost:7070", "address for TCP clients (newline-delimited JSON)")
	verbose := flag.Bool("v", false, "log every connection")
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *httpAddr, *tcpAddr, logger)
	stop()
	if err != nil {
		logger.Error("tcptransport failed", slog.Any("err", err))
		os.Exit(1)
	}
}

// run serves on the two addresses until ctx ends, then shuts down.
func run(ctx context.Context, httpAddr, tcpAddr string, logger *slog.Logger) error {
	var lc net.ListenConfig
	httpLn, err := lc.Listen(ctx, "tcp", httpAddr)
	if err != nil {
		return err
	}
	tcpLn, err := lc.Listen(ctx, "tcp", tcpAddr)
	if err != nil {
		httpLn.Close()
		return err
	}
	a, err := newApp(logger)
	if err != nil {
		httpLn.Close()
		tcpLn.Close()
		return err
	}
	logger.Info("tcptransport listening",
		slog.String("http", "http://"+httpLn.Addr().String()),
		slog.String("tcp", tcpLn.Addr().String()))
	return a.serve(ctx, httpLn, tcpLn)
}

// app is one hub with its two front doors.
type app struct {
	hub  *realtime.Hub
	http *http.Server
	tcp  *Server
	log  *slog.Logger
}

// newApp creates the hub, the HTTP server that mounts the standard
// handler and the page, and the TCP server.
func newApp(logger *slog.Logger) (*app, error) {
	hub, err := realtime.New(&realtime.Options{Logger: logger})
	if err != nil {
		return nil, err
	}
	tcp, err := NewServer(hub, &Options{
		Authenticate: authenticateHello,
		Logger:       logger,
	})
	if err != nil {
		hub.Close()
		return nil, err
	}

	mux := http.NewServeMux()
	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(indexHTML)
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return &app{hub: hub, http: srv, tcp: tcp, log: logger}, nil
}

// serve serves HTTP on httpLn and TCP on tcpLn until ctx ends or either
// server fails, then shuts everything down. It returns once every
// goroutine it started has ended.
func (a *app) serve(ctx context.Context, httpLn, tcpLn net.Listener) error {
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- a.http.Serve(httpLn) })
	wg.Go(func() { errc <- a.tcp.Serve(tcpLn) })

	var err error
	select {
	case <-ctx.Done():
		a.log.Info("tcptransport shutting down")
	case err = <-errc: // one server failed: stop the other too
	}
	err = errors.Join(serveError(err), a.shutdown())
	wg.Wait()
	close(errc)
	for e := range errc {
		err = errors.Join(err, serveError(e))
	}
	return err
}

// shutdown stops the hub and both servers, within 10 seconds.
func (a *app) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The hub first: it tells every connection, WebSocket and TCP alike,
	// that the server is going away (close code 1001) and waits for them,
	// which http.Server.Shutdown would not do for WebSockets. Clients that
	// connect meanwhile are refused with the same code.
	var errs []error
	if err := a.hub.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("hub shutdown: %w", err))
	}
	if err := a.tcp.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("tcp shutdown: %w", err))
	}
	if err := a.http.Shutdown(ctx); err != nil {
		a.http.Close()
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	return errors.Join(errs...)
}

// serveError drops the errors that Serve returns after a shutdown.
func serveError(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, ErrServerClosed) {
		return nil
	}
	return err
}

var userName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// authenticateHello admits a TCP client that names itself in its first
// line, {"type":"hello","user":"ann"}. It trusts the name, as a demo may;
// a real server would check a token or a client certificate here.
func authenticateHello(ctx context.Context, remote net.Addr, line []byte) (realtime.Identity, error) {
	var hello struct {
		Type string `json:"type"`
		User string `json:"user"`
	}
	if err := json.Unmarshal(line, &hello); err != nil || hello.Type != "hello" {
		return realtime.Identity{}, errors.New(`send {"type":"hello","user":"NAME"} first`)
	}
	if !userName.MatchString(hello.User) {
		return realtime.Identity{}, errors.New("user names are 1 to 32 letters, digits, - or _")
	}
	return realtime.Identity{UserID: hello.User}, nil
}
