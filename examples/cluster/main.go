// Command cluster runs several chat nodes that share one broker, so that
// users on different nodes talk to each other:
//
//	go run ./examples/cluster -backplane redis://127.0.0.1:6379
//	go run ./examples/cluster -backplane nats://127.0.0.1:4222
//
// Node i listens on the port after node i-1 (8080, 8081, 8082 by
// default; -addr moves them, -nodes changes how many): open
// http://localhost:8080 in one tab and http://localhost:8081 in another.
// Each node is the chat of examples/chat on its own hub; only the
// backplane joins them. Every node answers /readyz for a load balancer.
// With -backplane memory the nodes share an in-memory broker inside this
// one process; -prefix names the namespace on a real broker.
//
// A load balancer in front of the nodes needs no sticky sessions: an SSE
// or long-poll request that reaches the wrong node is forwarded to the
// right one through the backplane. The example runs one that sends each
// request to the next node in turn, at http://localhost:8090 (-balancer);
// open http://localhost:8090/?transport=longpoll to see a chat whose
// every poll lands on another node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
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
	lb := flag.String("balancer", "localhost:8090", "address of a round-robin load balancer in front of the nodes (\"\" for none)")
	prefix := flag.String("prefix", "realtime-cluster", "namespace of the keys, subjects and streams on the broker")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*nodes, *addr, *backplane, *lb, *prefix, logger); err != nil {
		logger.Error("cluster failed", "err", err)
		os.Exit(1)
	}
}

func run(n int, addr, backplane, lb, prefix string, logger *slog.Logger) error {
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
	newBackplane, closeBroker, err := broker(backplane, prefix)
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
	if lb != "" {
		srv := &http.Server{Addr: lb, Handler: balancer(cl), ReadHeaderTimeout: 10 * time.Second}
		go func() { cl.errc <- srv.ListenAndServe() }()
		defer srv.Close()
		logger.Info("round-robin load balancer listening", "url", "http://"+lb)
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
	cl := &cluster{errc: make(chan error, n+1)}
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

// shutdown stops every node at once: its hub first, since
// http.Server.Shutdown does not wait for WebSockets, then its server.
func (cl *cluster) shutdown(ctx context.Context) {
	var wg sync.WaitGroup
	for _, nd := range cl.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.hub.Shutdown(ctx)
			nd.srv.Shutdown(ctx)
		}()
	}
	wg.Wait()
}

// balancer is a load balancer without sticky sessions: it sends each
// request to the next node in turn.
func balancer(cl *cluster) http.Handler {
	var targets []*url.URL
	for _, nd := range cl.nodes {
		targets = append(targets, &url.URL{Scheme: "http", Host: nd.addr})
	}
	var next atomic.Uint64
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(targets[next.Add(1)%uint64(len(targets))])
			r.Out.Host = r.In.Host // the hub checks Origin against it
		},
		FlushInterval: -1, // SSE events pass at once
	}
}

// broker connects to the broker that spec names and returns a function
// making one node's backplane on it, under prefix, and one closing the
// connection.
func broker(spec, prefix string) (func() (realtime.Backplane, error), func(), error) {
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
			return redisbackplane.New(client, &redisbackplane.Options{Prefix: prefix})
		}, func() { client.Close() }, nil
	case "nats", "tls":
		nc, err := nats.Connect(spec, nats.MaxReconnects(-1))
		if err != nil {
			return nil, nil, fmt.Errorf("-backplane: %w", err)
		}
		return func() (realtime.Backplane, error) {
			return natsbackplane.New(nc, &natsbackplane.Options{Prefix: prefix})
		}, func() { nc.Close() }, nil
	}
	return nil, nil, fmt.Errorf("-backplane %q: want memory, redis://host:port or nats://host:port", spec)
}
