// Package backplanetest checks that a realtime.Backplane keeps the
// contract the Hub relies on. A backplane's own tests call [Run] with a
// function that makes nodes on one broker:
//
//	func TestConformance(t *testing.T) {
//		backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
//			broker := startBroker(t) // a fresh namespace for this test
//			return func() realtime.Backplane { return mybackplane.New(broker) }
//		})
//	}
//
// This is the way to build a custom backplane: write it against the
// realtime.Backplane documentation, then make these pass, under -race:
//
//   - [Run]: the contract, node by node, against the live broker;
//   - [RunCluster]: three whole hubs on the backplane behind a
//     round-robin proxy, with clients of every transport, recovery on
//     another node and no sticky sessions;
//   - [RunOutage]: the broker taken away and brought back, for example
//     through a [Proxy] between the nodes and the broker.
//
// The backplanes of this module, and the PostgreSQL one in
// examples/pgbackplane, run all three.
package backplanetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// NewNode returns the Backplane of a new hub node. Every node that one
// NewNode returns shares one broker, and no other test's messages.
type NewNode func() realtime.Backplane

// Factory is called once per test case to get nodes on a fresh broker or
// namespace.
type Factory func(t *testing.T) NewNode

// Run runs the conformance suite as subtests of t. The subtests run one
// after another, so that each can check that Close leaves nothing
// behind.
func Run(t *testing.T, factory Factory) {
	for _, tc := range []struct {
		name string
		f    func(t *testing.T, node NewNode)
	}{
		{"DeliversToSubscribersOnly", deliversToSubscribersOnly},
		{"OrderUnderConcurrentPublishers", orderUnderConcurrentPublishers},
		{"UnsubscribeStopsDelivery", unsubscribeStopsDelivery},
		{"ChurnLeavesNothingBehind", churnLeavesNothingBehind},
		{"PayloadsKeepEveryByte", payloadsKeepEveryByte},
		{"HistoryRecoversOrRefuses", historyRecoversOrRefuses},
		{"DirectMessagesReachTheirNode", directMessagesReachTheirNode},
		{"HealthyWhileConnected", healthyWhileConnected},
		{"CallsEndWithContext", callsEndWithContext},
		{"CloseEndsEverything", closeEndsEverything},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f(t, track(t, factory(t)))
		})
	}
}

// track closes every node made for the test when it ends.
func track(t *testing.T, newNode NewNode) NewNode {
	return func() realtime.Backplane {
		bp := newNode()
		t.Cleanup(func() { bp.Close() })
		return bp
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// collect receives from bp until it has n messages, or fails after a
// while.
func collect(t *testing.T, bp realtime.Backplane, n int) []realtime.Message {
	t.Helper()
	ctx := ctxFor(t)
	var got []realtime.Message
	for len(got) < n {
		msgs, err := bp.Receive(ctx)
		require.NoError(t, err, "after %d of %d messages", len(got), n)
		got = append(got, msgs...)
	}
	require.Len(t, got, n, "more messages than published")
	return got
}

// quiet checks that bp delivers nothing more within a short while.
func quiet(t *testing.T, bp realtime.Backplane) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	msgs, err := bp.Receive(ctx)
	assert.Empty(t, msgs, "unexpected messages")
	assert.Error(t, err)
}

func deliversToSubscribersOnly(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a, b, c := node(), node(), node()
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.NoError(t, b.Subscribe(ctx, "x"))
	require.NoError(t, c.Subscribe(ctx, "y"))

	pos, err := c.Publish(ctx, "x", []byte("to x"))
	require.NoError(t, err)
	for _, n := range []realtime.Backplane{a, b} {
		got := collect(t, n, 1)[0]
		assert.Equal(t, "x", got.Channel)
		assert.Equal(t, "to x", string(got.Data))
		assert.Equal(t, pos, got.Position)
	}
	quiet(t, c)
}

func orderUnderConcurrentPublishers(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	subs := []realtime.Backplane{node(), node()}
	for _, s := range subs {
		require.NoError(t, s.Subscribe(ctx, "x"))
	}
	const publishers, each = 4, 200
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pub := node()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := pub.Publish(ctx, "x", []byte(fmt.Sprintf("%d/%d", p, i)))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()

	var first []realtime.Message
	for _, s := range subs {
		got := collect(t, s, publishers*each)
		next := map[string]int{}
		for i, m := range got {
			if i > 0 && m.Position.Epoch == got[i-1].Position.Epoch {
				require.Equal(t, got[i-1].Position.Offset+1, m.Position.Offset, "offsets rise by one")
			}
			p, n, _ := bytes.Cut(m.Data, []byte("/"))
			want := strconv.Itoa(next[string(p)])
			require.Equal(t, want, string(n), "publisher %s out of order", p)
			next[string(p)]++
		}
		if first == nil {
			first = got
		} else {
			require.Equal(t, first, got, "subscribers saw different orders")
		}
	}
}

func unsubscribeStopsDelivery(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a, b := node(), node()
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.NoError(t, b.Subscribe(ctx, "x"))
	require.NoError(t, a.Unsubscribe(ctx, "x"))
	_, err := b.Publish(ctx, "x", []byte("after"))
	require.NoError(t, err)
	collect(t, b, 1)
	quiet(t, a)
}

// churnLeavesNothingBehind joins and leaves 10,000 channels; afterwards a
// publish to any of them reaches nobody, and one to a channel still
// followed arrives alone.
func churnLeavesNothingBehind(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a, pub := node(), node()
	require.NoError(t, a.Subscribe(ctx, "kept"))
	const channels = 10000
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < channels; i += 8 {
				name := "churn-" + strconv.Itoa(i)
				if !assert.NoError(t, a.Subscribe(ctx, name)) ||
					!assert.NoError(t, a.Unsubscribe(ctx, name)) {
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := 0; i < channels; i += 997 {
		_, err := pub.Publish(ctx, "churn-"+strconv.Itoa(i), []byte("lost"))
		require.NoError(t, err)
	}
	_, err := pub.Publish(ctx, "kept", []byte("kept"))
	require.NoError(t, err)
	got := collect(t, a, 1)
	assert.Equal(t, "kept", got[0].Channel)
	quiet(t, a)
}

func payloadsKeepEveryByte(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a := node()
	require.NoError(t, a.Subscribe(ctx, "bytes"))
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	big := bytes.Repeat([]byte("0123456789abcdef\x00\xff"), (64<<10)/18+1)[:64<<10]
	payloads := [][]byte{every, []byte("漢字 😀"), {}, big}
	for _, p := range payloads {
		_, err := a.Publish(ctx, "bytes", p)
		require.NoError(t, err)
	}
	for i, m := range collect(t, a, len(payloads)) {
		assert.True(t, bytes.Equal(payloads[i], m.Data), "payload %d differs", i)
	}
}

func historyRecoversOrRefuses(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a := node()
	require.NoError(t, a.Subscribe(ctx, "h"))
	var pos []realtime.Position
	for i := 0; i < 5; i++ {
		p, err := a.Publish(ctx, "h", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		pos = append(pos, p)
	}
	collect(t, a, 5)

	_, latest, err := a.History(ctx, "h", realtime.Position{})
	require.NoError(t, err)
	assert.Equal(t, pos[4], latest)

	msgs, latest, err := a.History(ctx, "h", pos[1])
	if errors.Is(err, realtime.ErrUnrecoverable) {
		t.Log("the backplane keeps no history: recovery always says not recovered")
		assert.Empty(t, msgs)
	} else {
		require.NoError(t, err)
		assert.Equal(t, pos[4], latest)
		require.Len(t, msgs, 3)
		for i, m := range msgs {
			assert.Equal(t, pos[2+i], m.Position)
			assert.Equal(t, strconv.Itoa(2+i), string(m.Data))
		}
	}
	_, _, err = a.History(ctx, "h", realtime.Position{Epoch: "never-issued", Offset: 3})
	assert.ErrorIs(t, err, realtime.ErrUnrecoverable)
}

func callsEndWithContext(t *testing.T, node NewNode) {
	a := node()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	_, err := a.Receive(ctx)
	assert.Error(t, err)
	assert.Error(t, a.Subscribe(ctx, "x"))
	assert.Less(t, time.Since(start), 5*time.Second)
}

func closeEndsEverything(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a := node()
	require.NoError(t, a.Subscribe(ctx, "x"))
	received := make(chan error, 1)
	go func() {
		_, err := a.Receive(ctx)
		received <- err
	}()
	require.NoError(t, a.Close())
	select {
	case err := <-received:
		assert.ErrorIs(t, err, realtime.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Receive did not return after Close")
	}
	start := time.Now()
	_, err := a.Publish(ctx, "x", []byte("late"))
	assert.ErrorIs(t, err, realtime.ErrClosed)
	assert.Less(t, time.Since(start), 5*time.Second, "a publish after Close must fail promptly")
}

var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// directMessagesReachTheirNode sends node-addressed messages, of every
// byte value and up to realtime.MaxDirectSize, to another node and to the
// sender itself, and one to a node that does not exist.
func directMessagesReachTheirNode(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a, b, c := node(), node(), node()
	names := map[string]bool{}
	for _, n := range []realtime.Backplane{a, b, c} {
		require.Regexp(t, nodeName, n.Node())
		require.Equal(t, n.Node(), n.Node(), "a node's name never changes")
		names[n.Node()] = true
	}
	require.Len(t, names, 3, "node names must differ")
	for _, n := range []realtime.Backplane{a, b, c} {
		require.Eventually(t, func() bool { return n.Health(ctx) == nil }, 10*time.Second, 10*time.Millisecond,
			"a node with a live broker must become healthy")
	}
	// A channel subscription of the same name changes nothing.
	require.NoError(t, c.Subscribe(ctx, b.Node()))

	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	big := bytes.Repeat([]byte("\x00direct\xff"), realtime.MaxDirectSize/8+1)[:realtime.MaxDirectSize]
	payloads := [][]byte{every, []byte("漢字 😀"), big}
	for _, p := range payloads {
		require.NoError(t, a.Send(ctx, b.Node(), p))
	}
	got := collect(t, b, len(payloads))
	seen := 0
	for _, m := range got {
		assert.True(t, m.Direct, "a sent message has Direct set")
		assert.Empty(t, m.Channel)
		for _, p := range payloads {
			if bytes.Equal(p, m.Data) {
				seen++
				break
			}
		}
	}
	assert.Equal(t, len(payloads), seen, "every payload arrives byte-identical")

	require.NoError(t, a.Send(ctx, a.Node(), []byte("to myself")))
	self := collect(t, a, 1)[0]
	assert.True(t, self.Direct)
	assert.Equal(t, "to myself", string(self.Data))

	err := a.Send(ctx, "no-such-node", []byte("lost"))
	if err != nil {
		assert.ErrorIs(t, err, realtime.ErrUnknownNode)
	}
	for _, bad := range []string{"", "a.b", "a*", "a b", strings.Repeat("A", 65), strings.Repeat("A", 7000)} {
		assert.ErrorIs(t, a.Send(ctx, bad, []byte("lost")), realtime.ErrUnknownNode, "a name no node can have: %.20q", bad)
	}
	require.NoError(t, a.Health(ctx), "bad names leave the backplane healthy")
	quiet(t, a)
	quiet(t, b)
	quiet(t, c)
}

// healthyWhileConnected checks that a working node reports health, and a
// closed one does not.
func healthyWhileConnected(t *testing.T, node NewNode) {
	ctx := ctxFor(t)
	a := node()
	require.NoError(t, a.Subscribe(ctx, "x"))
	require.Eventually(t, func() bool { return a.Health(ctx) == nil }, 10*time.Second, 20*time.Millisecond,
		"a node with a live broker must become healthy")
	require.NoError(t, a.Close())
	assert.Error(t, a.Health(ctx), "a closed node is not healthy")
}
