package backplanetest

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// Outage is a broker that a test can take away and bring back, for
// RunOutage. With a [Proxy] between the nodes and the broker, Cut and
// Restore are the proxy's.
type Outage struct {
	// NewNode makes a node on the broker; every node of the test reaches
	// the broker only through what Cut cuts.
	NewNode NewNode
	// Cut makes the broker unreachable; Restore makes it reachable again.
	Cut     func(t *testing.T)
	Restore func(t *testing.T)
}

// RunOutage checks what a backplane does while its broker is unreachable
// and after it comes back:
//   - a publish returns an error within 5 seconds instead of hanging;
//   - Health reports an error during the outage, and nil again after it;
//   - the node's subscriptions come back by themselves, and Receive
//     returns a gap signal (Message.Gap) for the time it was away before
//     any message published after the broker came back.
func RunOutage(t *testing.T, o Outage) {
	newNode := track(t, o.NewNode)
	ctx := ctxFor(t)
	sub, pub := newNode(), newNode()
	require.NoError(t, sub.Subscribe(ctx, "outage"))
	for _, n := range []realtime.Backplane{sub, pub} {
		require.Eventually(t, func() bool { return n.Health(ctx) == nil }, 10*time.Second, 10*time.Millisecond,
			"a node with a live broker must become healthy")
	}
	_, err := pub.Publish(ctx, "outage", []byte("before"))
	require.NoError(t, err)
	got := collect(t, sub, 1)
	require.Equal(t, "before", string(got[0].Data))

	o.Cut(t)
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = pub.Publish(pctx, "outage", []byte("during"))
	cancel()
	assert.Error(t, err, "a publish to an unreachable broker fails")
	assert.Less(t, time.Since(start), 5*time.Second, "and fails promptly")
	assert.Eventually(t, func() bool { return sub.Health(ctx) != nil }, 10*time.Second, 10*time.Millisecond,
		"Health reports the outage")

	o.Restore(t)
	require.Eventually(t, func() bool { return sub.Health(ctx) == nil && pub.Health(ctx) == nil },
		30*time.Second, 20*time.Millisecond, "Health recovers once the broker is back")
	// Publish until one gets through: the publishing side may need a
	// moment longer to reconnect.
	var sent int
	require.Eventually(t, func() bool {
		sent++
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := pub.Publish(pctx, "outage", []byte("after-"+strconv.Itoa(sent)))
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "publishing works again")

	// A gap first, then the message published after the outage.
	var gap bool
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		rctx, cancel := context.WithDeadline(ctx, deadline)
		msgs, err := sub.Receive(rctx)
		cancel()
		require.NoError(t, err, "receiving after the outage")
		for _, m := range msgs {
			switch {
			case m.Gap:
				assert.Contains(t, []string{"", "outage"}, m.Channel, "the gap covers the followed channel")
				gap = true
			case m.Channel == "outage":
				require.True(t, gap, "a gap comes before the first message after the outage, got %q", m.Data)
				assert.Contains(t, string(m.Data), "after-")
				return
			}
		}
	}
	t.Fatalf("no message after the outage (gap seen: %v)", gap)
}
