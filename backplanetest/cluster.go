package backplanetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// RunCluster runs whole hubs on the backplane: three nodes, each a
// realtime.Hub with every transport mounted, behind a reverse proxy that
// sends each request to the next node in turn, with no sticky sessions.
// Clients of every transport connect through the proxy and straight to
// each node; two publishers on different nodes send at once; every client
// must receive every message once, all in one order. SSE commands and
// long polls that land on a node other than their session's reach it
// through [realtime.Backplane.Send].
//
// It also checks that a request for a session whose node has gone is
// refused with "unknown_session", so that its client reconnects: at once
// where Send reports ErrUnknownNode, after the poll timeout (3 seconds
// here) where it cannot tell.
//
// Run it beside [Run] in a backplane's tests.
func RunCluster(t *testing.T, factory Factory) {
	t.Run("EveryClientSeesEveryMessageInOneOrder", func(t *testing.T) {
		everyClientSeesEveryMessageInOneOrder(t, track(t, factory(t)))
	})
	t.Run("RecoveryOnAnotherNode", func(t *testing.T) {
		recoveryOnAnotherNode(t, track(t, factory(t)))
	})
	t.Run("SessionOfAGoneNodeIsUnknown", func(t *testing.T) {
		sessionOfAGoneNodeIsUnknown(t, track(t, factory(t)))
	})
}

// node is one hub of a test cluster, served on loopback.
type node struct {
	hub *realtime.Hub
	srv *httptest.Server
}

// cluster is n hubs behind a round-robin proxy.
type cluster struct {
	nodes []*node
	proxy *httptest.Server
}

func newCluster(t *testing.T, newNode NewNode, n int) *cluster {
	cl := &cluster{}
	var backends []*url.URL
	for i := 0; i < n; i++ {
		hub, err := realtime.New(&realtime.Options{Backplane: newNode()})
		require.NoError(t, err)
		mux := http.NewServeMux()
		// A short poll timeout bounds how long a poll forwarded to a node
		// that is gone waits, on backplanes that cannot tell at once.
		mux.Handle("/rt/", realtime.NewHandler(hub, &realtime.HandlerOptions{
			LongPoll: &realtime.LongPollOptions{PollTimeout: 3 * time.Second},
		}))
		srv := httptest.NewServer(mux)
		t.Cleanup(func() {
			srv.CloseClientConnections()
			hub.Close()
			srv.Close()
		})
		u, _ := url.Parse(srv.URL)
		backends = append(backends, u)
		cl.nodes = append(cl.nodes, &node{hub: hub, srv: srv})
	}
	var next atomic.Uint64
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(backends[next.Add(1)%uint64(len(backends))])
			r.Out.Host = r.In.Host
		},
		FlushInterval: -1, // SSE events pass at once
		// Requests cut short by a test's end are not news.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	cl.proxy = httptest.NewServer(proxy)
	t.Cleanup(func() {
		cl.proxy.CloseClientConnections()
		cl.proxy.Close()
	})
	return cl
}

// endpoint returns the URL of transport's endpoint under base.
func endpoint(base, transport string) string {
	switch transport {
	case client.SSE:
		return base + "/rt/sse"
	case client.LongPoll:
		return base + "/rt/poll"
	}
	return "ws" + strings.TrimPrefix(base, "http") + "/rt/ws"
}

func everyClientSeesEveryMessageInOneOrder(t *testing.T, newNode NewNode) {
	cl := newCluster(t, newNode, 3)
	ctx := ctxFor(t)

	type member struct {
		name string
		c    *client.Client
	}
	var members []member
	transports := []string{client.WebSocket, client.SSE, client.LongPoll}
	dial := func(name, base, transport string) {
		c, err := client.Dial(ctx, endpoint(base, transport), &client.Options{Transport: transport, Buffer: 4096})
		require.NoError(t, err, name)
		t.Cleanup(func() { c.Close() })
		_, err = c.Join(ctx, "room")
		require.NoError(t, err, name)
		members = append(members, member{name, c})
	}
	for _, tr := range transports {
		dial("proxy/"+tr, cl.proxy.URL, tr)
		for i, n := range cl.nodes {
			dial(fmt.Sprintf("node%d/%s", i, tr), n.srv.URL, tr)
		}
	}
	require.Eventually(t, func() bool {
		total := 0
		for _, n := range cl.nodes {
			total += len(n.hub.Members("room"))
		}
		return total == len(members)
	}, 10*time.Second, 10*time.Millisecond, "every client becomes a member")

	// Two publishers on different nodes: the application on node 0, and
	// an SSE client through the proxy, whose publishes reach its node
	// through whichever node the proxy picks.
	var pubClient *client.Client
	for _, m := range members {
		if m.name == "proxy/"+client.SSE {
			pubClient = m.c
		}
	}

	const each = 100
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < each; i++ {
			_, err := cl.nodes[0].hub.Publish(ctx, "room", []byte(fmt.Sprintf("hub/%d", i)))
			if !assert.NoError(t, err) {
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < each; i++ {
			_, err := pubClient.Publish(ctx, "room", []byte(fmt.Sprintf("client/%d", i)))
			if !assert.NoError(t, err) {
				return
			}
		}
	}()
	wg.Wait()

	var first []string
	for _, m := range members {
		var got []string
		next := map[string]int{}
		for len(got) < 2*each {
			ev, err := m.c.Receive(ctx)
			require.NoError(t, err, "%s after %d messages", m.name, len(got))
			if ev.Type != "message" {
				require.NotEqual(t, "gap", ev.Type, "%s: gap", m.name)
				continue
			}
			got = append(got, string(ev.Data))
			who, n, _ := strings.Cut(string(ev.Data), "/")
			require.Equal(t, fmt.Sprint(next[who]), n, "%s: %s's messages out of order or repeated", m.name, who)
			next[who]++
		}
		if first == nil {
			first = got
		} else {
			require.Equal(t, first, got, "%s saw another order than %s", m.name, members[0].name)
		}
	}

	var forwarded, served uint64
	for _, n := range cl.nodes {
		s := n.hub.Stats()
		forwarded += s.Forwarded
		served += s.Served
	}
	assert.Positive(t, forwarded, "requests through the proxy were forwarded between nodes")
	assert.Equal(t, forwarded, served, "every forwarded request was served")
}

func sessionOfAGoneNodeIsUnknown(t *testing.T, newNode NewNode) {
	cl := newCluster(t, newNode, 2)
	ctx := ctxFor(t)
	for _, n := range cl.nodes {
		require.Eventually(t, func() bool { return n.hub.Ready(ctx) == nil }, 10*time.Second, 10*time.Millisecond)
	}

	// A long-poll session on node 1, then node 1 goes away.
	resp, err := http.Get(cl.nodes[1].srv.URL + "/rt/poll")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	i := bytes.Index(body, []byte(`"session":"`))
	require.GreaterOrEqual(t, i, 0, "the welcome carries the session: %s", body)
	session, _, _ := strings.Cut(string(body[i+len(`"session":"`):]), `"`)
	cl.nodes[1].srv.CloseClientConnections()
	require.NoError(t, cl.nodes[1].hub.Close())

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		var req *http.Request
		if method == http.MethodGet {
			req, _ = http.NewRequestWithContext(ctx, method, cl.nodes[0].srv.URL+"/rt/poll?ack=1&session="+url.QueryEscape(session), nil)
		} else {
			req, _ = http.NewRequestWithContext(ctx, method, cl.nodes[0].srv.URL+"/rt/poll", strings.NewReader(`[{"type":"ping","id":1}]`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(realtime.SessionHeader, session)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusNotFound, resp.StatusCode, "%s: %s", method, body)
		assert.Contains(t, string(body), "unknown_session", method)
	}
}

// pollResponse is a long-poll response body.
type pollResponse struct {
	Seq      uint64           `json:"seq"`
	Cursor   string           `json:"cursor"`
	Messages []map[string]any `json:"messages"`
}

// longPoll makes one long-poll GET to base with query q.
func longPoll(t *testing.T, base string, q url.Values) pollResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxFor(t), http.MethodGet, base+"/rt/poll?"+q.Encode(), nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var r pollResponse
	require.NoError(t, json.Unmarshal(body, &r), "%s", body)
	return r
}

// pollUntil polls session on base until want messages of type "message"
// or "joined" have come, and returns them with the last cursor.
func pollUntil(t *testing.T, base, session string, ack uint64, first []map[string]any, want int) ([]map[string]any, string) {
	t.Helper()
	var got []map[string]any
	keep := func(msgs []map[string]any) {
		for _, m := range msgs {
			if m["type"] == "message" || m["type"] == "joined" {
				got = append(got, m)
			}
		}
	}
	keep(first)
	cursor := ""
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < want && time.Now().Before(deadline) {
		r := longPoll(t, base, url.Values{"session": {session}, "ack": {strconv.FormatUint(ack, 10)}})
		keep(r.Messages)
		ack = r.Seq
		if r.Cursor != "" {
			cursor = r.Cursor
		}
	}
	require.Len(t, got, want, "messages: %v", got)
	return got, cursor
}

// recoveryOnAnotherNode has a long-poll client leave node 0 and come back
// on node 1 with its cursor: it gets exactly what it missed, or is told it
// cannot when the backplane keeps no history. A cursor no node issued is
// refused for its channel (F07).
func recoveryOnAnotherNode(t *testing.T, newNode NewNode) {
	cl := newCluster(t, newNode, 2)
	ctx := ctxFor(t)
	a, b := cl.nodes[0].srv.URL, cl.nodes[1].srv.URL

	open := longPoll(t, a, nil)
	session, _ := open.Messages[0]["session"].(string)
	require.NotEmpty(t, session, "welcome: %v", open.Messages)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, a+"/rt/poll", strings.NewReader(`{"type":"join","id":1,"channel":"room"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(realtime.SessionHeader, session)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	for i := 0; i < 3; i++ {
		_, err := cl.nodes[1].hub.Publish(ctx, "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}
	_, cursor := pollUntil(t, a, session, open.Seq, nil, 4) // joined, 0, 1, 2
	require.Contains(t, cursor, "room:")

	// The client goes; 5 more messages are published meanwhile.
	req, _ = http.NewRequestWithContext(ctx, http.MethodDelete, a+"/rt/poll", nil)
	req.Header.Set(realtime.SessionHeader, session)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	for i := 3; i < 8; i++ {
		_, err := cl.nodes[0].hub.Publish(ctx, "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}

	// Does this backplane keep history?
	probe := newNode()
	pos, err := probe.Publish(ctx, "probe", []byte("x"))
	require.NoError(t, err)
	_, err = probe.Publish(ctx, "probe", []byte("y"))
	require.NoError(t, err)
	_, _, err = probe.History(ctx, "probe", pos)
	keepsHistory := !errors.Is(err, realtime.ErrUnrecoverable)

	back := longPoll(t, b, url.Values{"cursor": {cursor}})
	session, _ = back.Messages[0]["session"].(string)
	if keepsHistory {
		got, _ := pollUntil(t, b, session, back.Seq, back.Messages, 6)
		assert.Equal(t, "joined", got[0]["type"])
		assert.Equal(t, true, got[0]["recovered"], "recovered on another node: %v", got[0])
		for i, m := range got[1:] {
			assert.EqualValues(t, 3+i, m["data"], "exactly the missed messages, in order")
		}
	} else {
		got, _ := pollUntil(t, b, session, back.Seq, back.Messages, 1)
		assert.Equal(t, false, got[0]["recovered"], "without history: %v", got[0])
	}

	// A position no node issued.
	never := longPoll(t, b, url.Values{"cursor": {"room:never-issued:3"}})
	session, _ = never.Messages[0]["session"].(string)
	got, _ := pollUntil(t, b, session, never.Seq, never.Messages, 1)
	assert.Equal(t, "joined", got[0]["type"])
	assert.Equal(t, "room", got[0]["channel"])
	assert.Equal(t, false, got[0]["recovered"], "a never-issued cursor is not recovered: %v", got[0])
}
