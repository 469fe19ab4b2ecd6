package realtime

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A forwarded long poll whose client goes away stops at the node holding
// its session at once, rather than holding its place there for the poll
// timeout.
func TestForwardedPollsEndWhenTheirClientsLeave(t *testing.T) {
	broker := NewMemoryBroker(nil)
	h0, err := New(&Options{Backplane: broker.Backplane()})
	require.NoError(t, err)
	defer h0.Close()
	h1, err := New(&Options{Backplane: broker.Backplane()})
	require.NoError(t, err)
	defer h1.Close()
	lp := &LongPollOptions{PollTimeout: 20 * time.Second}
	p0, p1 := NewLongPollHandler(h0, lp), NewLongPollHandler(h1, lp)

	const n = 200
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		rec := httptest.NewRecorder()
		p0.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/poll", nil))
		var r struct {
			Seq      uint64
			Messages []map[string]any
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &r))
		session := r.Messages[0]["session"].(string)
		go func() {
			defer func() { done <- struct{}{} }()
			q := "/poll?" + url.Values{"session": {session}, "ack": {strconv.FormatUint(r.Seq, 10)}}.Encode()
			p1.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, q, nil).WithContext(ctx))
		}()
	}
	serving := func() int {
		h0.fwd.mu.Lock()
		defer h0.fwd.mu.Unlock()
		return len(h0.fwd.serving)
	}
	require.Eventually(t, func() bool { return serving() == n }, 10*time.Second, 5*time.Millisecond)
	cancel()
	for i := 0; i < n; i++ {
		<-done
	}
	require.Eventually(t, func() bool { return serving() == 0 }, 5*time.Second, 5*time.Millisecond,
		"polls still served for clients that left: %d", serving())
}

// Stopping the forwarder ends the requests it serves for other nodes,
// whose contexts it owns through its serving map alone.
func TestForwarderStopEndsServedRequests(t *testing.T) {
	broker := NewMemoryBroker(nil)
	h0, err := New(&Options{Backplane: broker.Backplane()})
	require.NoError(t, err)
	defer h0.Close()
	h1, err := New(&Options{Backplane: broker.Backplane()})
	require.NoError(t, err)
	defer h1.Close()
	lp := &LongPollOptions{PollTimeout: 20 * time.Second}
	p0, p1 := NewLongPollHandler(h0, lp), NewLongPollHandler(h1, lp)

	const n = 20
	done := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		rec := httptest.NewRecorder()
		p0.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/poll", nil))
		var r struct {
			Seq      uint64
			Messages []map[string]any
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &r))
		session := r.Messages[0]["session"].(string)
		go func() {
			defer func() { done <- struct{}{} }()
			q := "/poll?" + url.Values{"session": {session}, "ack": {strconv.FormatUint(r.Seq, 10)}}.Encode()
			p1.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, q, nil))
		}()
	}
	serving := func() int {
		h0.fwd.mu.Lock()
		defer h0.fwd.mu.Unlock()
		return len(h0.fwd.serving)
	}
	require.Eventually(t, func() bool { return serving() == n }, 10*time.Second, 5*time.Millisecond)

	stopped := make(chan struct{})
	go func() {
		h0.fwd.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatalf("the forwarder's stop still waits for %d polls it serves", serving())
	}
	require.Zero(t, serving())
	for i := 0; i < n; i++ {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("a forwarded poll was not answered after the forwarder stopped")
		}
	}
}
