package realtime

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"
)

// Ready returns nil while the hub can serve new clients: it is not
// shutting down and its backplane reports health (see
// [Backplane.Health]). Otherwise it says why.
func (h *Hub) Ready(ctx context.Context) error {
	h.mu.RLock()
	closing := h.closing
	h.mu.RUnlock()
	if closing {
		return errors.New("realtime: the hub is shutting down")
	}
	if err := h.bp.Health(ctx); err != nil {
		return err
	}
	return nil
}

// ReadyHandler returns an http.Handler for a load balancer's readiness
// probe: it answers 200 while [Hub.Ready] returns nil, and 503 Service
// Unavailable with the reason while the backplane cannot deliver (its
// broker is unreachable, or subscriptions are being restored) or the hub
// is shutting down. A node that fails it still serves the clients it
// has; the load balancer only stops sending it new ones. Each probe waits
// at most 2 seconds for the backplane.
//
// Mount it beside the hub's handlers, for example at "/readyz". Liveness
// is another matter: a process whose broker is down is alive, and
// restarting it helps nobody.
func (h *Hub) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := h.Ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
}

// Stats counts what a hub has seen since it started, for metrics and
// alerts. Counters only grow; Connections and Channels are current
// values.
type Stats struct {
	// Connections and Channels are the connections open and the channels
	// with local members now.
	Connections int
	Channels    int

	// Gaps counts the backplane's signals that it lost messages (see
	// [Message.Gap]): the broker was unreachable, or could not keep up
	// with this node. Each sent the affected members a "gap" message.
	Gaps uint64

	// SlowConsumers counts connections closed because their queue
	// overflowed; Dropped counts messages that the DropMessages policy
	// left out.
	SlowConsumers uint64
	Dropped       uint64

	// Forwarded counts SSE and long-poll requests that reached this node
	// for a connection held by another and were forwarded there through
	// the backplane; Served counts those this node served for others.
	// ForwardFailures counts forwarded requests that got no answer, and
	// ForwardRefused those this node refused to serve for others because
	// too many were in progress.
	Forwarded       uint64
	Served          uint64
	ForwardFailures uint64
	ForwardRefused  uint64
}

// stats holds a hub's counters.
type stats struct {
	gaps, slow, dropped, forwarded, served, forwardFailures, forwardRefused atomic.Uint64
}

// Stats returns the hub's counters now.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	s := Stats{Connections: len(h.conns), Channels: len(h.channels)}
	h.mu.RUnlock()
	s.Gaps = h.stats.gaps.Load()
	s.SlowConsumers = h.stats.slow.Load()
	s.Dropped = h.stats.dropped.Load()
	s.Forwarded = h.stats.forwarded.Load()
	s.Served = h.stats.served.Load()
	s.ForwardFailures = h.stats.forwardFailures.Load()
	s.ForwardRefused = h.stats.forwardRefused.Load()
	return s
}
