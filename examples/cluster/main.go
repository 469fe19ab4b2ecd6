// Command cluster runs several chat nodes that share one broker, so that
// users on different nodes talk to each other:
//
//	go run ./examples/cluster -backplane redis://127.0.0.1:6379
//	go run ./examples/cluster -backplane nats://127.0.0.1:4222
//
// Node i listens on the port after node i-1 (8080, 8081, 8082 by
// default): open http://localhost:8080 in one tab and
// http://localhost:8081 in another. Each node is the chat of
// examples/chat on its own hub; only the backplane joins them. Every node
// answers /readyz for a load balancer. With -backplane memory the nodes
// share an in-memory broker inside this one process.
//
// A load balancer in front of the nodes needs no sticky sessions: an SSE
// or long-poll request that reaches the wrong node is forwarded to the
// right one through the backplane.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/examples/internal/chatapp"
	"github.com/realtimekit/realtime/natsbackplane"
	"github.com/realtimekit/realtime/redisbackplane"
)

func main() {
	nodes := flag.Int("nodes", 3, "how many nodes to run")
	addr := flag.String("addr", "localhost:8080", "address of the first node; the others take the next ports")
	backplane := flag.String("backplane", "memory", "memory, redis://host:port or nats://host:port")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*nodes, *addr, *backplane, logger); err != nil {
		logger.Error("cluster failed", "err", err)
		os.Exit(1)
	}
}

func run(n int, addr, backplane string, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return fmt.Errorf("port of -addr: %w", err)
	}
	newBackplane, closeBroker, err := broker(backplane)
	if err != nil {
		return err
	}
	defer closeBroker()

	cl, err := start(n, func(i int) (net.Listener, error) {
		return net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port+i)))
	}, newBackplane, logger)
	if err != nil {
		return err
	}
	for i, nd := range cl.nodes {
		logger.Info("chat node listening", "node", i, "url", "http://"+nd.addr, "backplane", backplane)
	}
	select {
	case err = <-cl.errc:
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl.shutdown(shutdownCtx)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// cluster is the running nodes.
type cluster struct {
	nodes []node
	errc  chan error // the first server that fails
}

type node struct {
	hub  *realtime.Hub
	srv  *http.Server
	addr string
}

// start runs n chat nodes, node i on the listener listen(i) returns and
// on a backplane of its own from newBackplane.
func start(n int, listen func(i int) (net.Listener, error), newBackplane func() (realtime.Backplane, error), logger *slog.Logger) (*cluster, error) {
	cl := &cluster{errc: make(chan error, n)}
	for i := 0; i < n; i++ {
		ln, err := listen(i)
		if err != nil {
			cl.shutdown(context.Background())
			return nil, err
		}
		bp, err := newBackplane()
		if err != nil {
			ln.Close()
			cl.shutdown(context.Background())
			return nil, err
		}
		hub, handler, err := chatapp.New(logger.With("node", i), bp)
		if err != nil {
			ln.Close()
			bp.Close()
			cl.shutdown(context.Background())
			return nil, err
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
		cl.nodes = append(cl.nodes, node{hub, srv, ln.Addr().String()})
		go func() { cl.errc <- srv.Serve(ln) }()
	}
	return cl, nil
}

// shutdown stops every node: its hub first, since http.Server.Shutdown
// does not wait for WebSockets, then its server.
func (cl *cluster) shutdown(ctx context.Context) {
	for _, nd := range cl.nodes {
		nd.hub.Shutdown(ctx)
		nd.srv.Shutdown(ctx)
	}
}

// broker connects to the broker that spec names and returns a function
// making one node's backplane on it, and one closing the connection.
func broker(spec string) (func() (realtime.Backplane, error), func(), error) {
	if spec == "memory" {
		b := realtime.NewMemoryBroker(nil)
		return func() (realtime.Backplane, error) { return b.Backplane(), nil }, func() {}, nil
	}
	u, err := url.Parse(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("-backplane: %w", err)
	}
	switch u.Scheme {
	case "redis", "rediss":
		opts, err := redis.ParseURL(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("-backplane: %w", err)
		}
		client := redis.NewClient(opts)
		return func() (realtime.Backplane, error) {
			return redisbackplane.New(client, nil)
		}, func() { client.Close() }, nil
	case "nats", "tls":
		nc, err := nats.Connect(spec, nats.MaxReconnects(-1))
		if err != nil {
			return nil, nil, fmt.Errorf("-backplane: %w", err)
		}
		return func() (realtime.Backplane, error) {
			return natsbackplane.New(nc, nil)
		}, func() { nc.Close() }, nil
	}
	return nil, nil, fmt.Errorf("-backplane %q: want memory, redis://host:port or nats://host:port", spec)
}
