package realtime_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/client"
)

// sseEvent is one parsed event of a stream.
type sseEvent struct {
	id   string
	msgs []map[string]any
}

// sseStream is a raw event stream, read as a browser's EventSource would.
type sseStream struct {
	t       testing.TB
	url     string
	resp    *http.Response
	r       *bufio.Reader
	session string
	lastID  string
	pending []map[string]any
	retry   string
}

// openSSE opens a stream at url; lastID, if not empty, is sent as
// Last-Event-ID.
func openSSE(t testing.TB, hc *http.Client, url, lastID string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)
	s := &sseStream{t: t, url: url, resp: resp, r: bufio.NewReader(resp.Body)}
	welcome := s.next()
	require.Equal(t, "welcome", welcome["type"])
	s.session = welcome["session"].(string)
	return s
}

// event reads the next event with data.
func (s *sseStream) event() sseEvent {
	s.t.Helper()
	var ev sseEvent
	var data []byte
	for {
		line, err := s.r.ReadString('\n')
		require.NoError(s.t, err)
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if data == nil {
				continue
			}
			require.NoError(s.t, json.Unmarshal(data, &ev.msgs), "%s", data)
			s.lastID = ev.id
			return ev
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			data = append(data, value...)
		case "id":
			ev.id = value
		case "retry":
			s.retry = value
		}
	}
}

// next returns the next message.
func (s *sseStream) next() map[string]any {
	s.t.Helper()
	for len(s.pending) == 0 {
		s.pending = s.event().msgs
	}
	m := s.pending[0]
	s.pending = s.pending[1:]
	return m
}

// post sends a command frame and returns the response status.
func (s *sseStream) post(frame string) int {
	s.t.Helper()
	return postCommand(s.t, s.url, s.session, frame, nil)
}

func postCommand(t testing.TB, url, session, frame string, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(frame))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if session != "" {
		req.Header.Set(realtime.SessionHeader, session)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestSSEStreamHeaders(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	s := openSSE(t, nil, th.base+"sse", "")
	h := s.resp.Header
	assert.Equal(t, "text/event-stream", h.Get("Content-Type"))
	assert.Contains(t, h.Get("Cache-Control"), "no-cache")
	assert.Equal(t, "no", h.Get("X-Accel-Buffering"))
	assert.Equal(t, "2000", s.retry)
	assert.NotEmpty(t, s.session)
}

// The case: a client that reconnects its stream with the last id
// it saw gets exactly what was published meanwhile, within the history;
// beyond it, an explicit "not recovered" for the channel (F07).
func TestSSEResumesWithLastEventID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		published int
		recovered bool
		byQuery   bool
	}{
		{"500 within history", 500, true, false},
		{"500 within history, id in query", 500, true, true},
		{"5000 beyond history", 5000, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bp := realtime.NewMemoryBackplane(&realtime.MemoryOptions{HistorySize: 1000})
			th := newTestHub(t, &realtime.Options{Backplane: bp}, nil)
			ctx := ctxT(t)
			s := openSSE(t, nil, th.base+"sse", "")
			require.Equal(t, http.StatusAccepted, s.post(`{"type":"join","id":1,"channel":"room"}`))
			require.Equal(t, "joined", s.next()["type"])
			first, err := th.Publish(ctx, "room", []byte(`"seen"`))
			require.NoError(t, err)
			require.Equal(t, "seen", s.next()["data"])
			lastID := s.lastID
			require.Contains(t, lastID, "room:")
			s.resp.Body.Close()
			th.waitConns(t, 0)

			var want []realtime.Position
			for i := 0; i < tc.published; i++ {
				p, err := th.Publish(ctx, "room", []byte(strconv.Itoa(i)))
				require.NoError(t, err)
				want = append(want, p)
			}

			url := th.base + "sse"
			header := lastID
			if tc.byQuery {
				url += "?lastEventId=" + urlQueryEscape(lastID)
				header = ""
			}
			s2 := openSSE(t, nil, url, header)
			joined := s2.next()
			require.Equal(t, "joined", joined["type"])
			assert.Equal(t, "room", joined["channel"])
			assert.NotContains(t, joined, "id")
			assert.Equal(t, tc.recovered, joined["recovered"])
			if !tc.recovered {
				assert.Equal(t, float64(want[len(want)-1].Offset), joined["offset"])
				return
			}
			assert.Equal(t, float64(first.Offset), joined["offset"])
			for i, p := range want {
				m := s2.next()
				require.Equal(t, "message", m["type"])
				require.Equal(t, float64(p.Offset), m["offset"], "message %d", i)
				require.Equal(t, float64(i), m["data"])
			}
			// Nothing twice: the next message is a new one.
			p, err := th.Publish(ctx, "room", []byte(`"new"`))
			require.NoError(t, err)
			m := s2.next()
			assert.Equal(t, float64(p.Offset), m["offset"])
		})
	}
}

func urlQueryEscape(s string) string {
	r := strings.NewReplacer("%", "%25", ":", "%3A", ",", "%2C", "+", "%2B", "&", "%26", "=", "%3D", "#", "%23")
	return r.Replace(s)
}

// F07: an id the server never issued, or one from another epoch, is told
// apart per channel; a malformed one is an error.
func TestSSEResumeWithUnknownIDIsNotRecovered(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	ctx := ctxT(t)
	_, err := th.Publish(ctx, "a", []byte(`1`))
	require.NoError(t, err)

	s := openSSE(t, nil, th.base+"sse", "a:made-up:7,b::3")
	got := map[any]any{}
	for range 2 {
		m := s.next()
		require.Equal(t, "joined", m["type"])
		got[m["channel"]] = m["recovered"]
	}
	assert.Equal(t, map[any]any{"a": false, "b": false}, got)

	s2 := openSSE(t, nil, th.base+"sse", "garbage-without-colons")
	m := s2.next()
	assert.Equal(t, "error", m["type"])
	assert.Equal(t, "bad_request", m["code"])
}

// F08: a client that presents an id from before the last event it got
// resumes from what that id says it has: nothing lost, nothing repeated
// after it.
func TestSSEResumeFromOlderID(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	ctx := ctxT(t)
	s := openSSE(t, nil, th.base+"sse", "")
	require.Equal(t, http.StatusAccepted, s.post(`{"type":"join","channel":"room"}`))
	require.Equal(t, "joined", s.next()["type"])
	var ids []string
	for i := 1; i <= 10; i++ {
		_, err := th.Publish(ctx, "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		m := s.next()
		require.Equal(t, float64(i), m["data"])
		if len(s.pending) == 0 {
			ids = append(ids, s.lastID)
		}
	}
	require.NotEmpty(t, ids)
	older := "room:" + strings.Split(ids[len(ids)-1], ":")[1] + ":5"

	s2 := openSSE(t, nil, th.base+"sse", older)
	assert.Equal(t, true, s2.next()["recovered"])
	for i := 6; i <= 10; i++ {
		assert.Equal(t, float64(i), s2.next()["data"])
	}
}

func TestSSECommandRules(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{
		MaxMessageSize: 1024,
		Authenticate: func(r *http.Request) (realtime.Identity, error) {
			return realtime.Identity{UserID: r.URL.Query().Get("user") + r.Header.Get("X-User")}, nil
		},
	}, nil)
	url := th.base + "sse"
	s := openSSE(t, nil, url+"?user=ann", "")
	asAnn := http.Header{"X-User": {"ann"}}

	assert.Equal(t, http.StatusAccepted, postCommand(t, url, s.session, `{"type":"ping","id":1}`, asAnn))
	assert.Equal(t, "pong", s.next()["type"])

	assert.Equal(t, http.StatusBadRequest, postCommand(t, url, "", `{"type":"ping"}`, asAnn))
	assert.Equal(t, http.StatusNotFound, postCommand(t, url, "no-such-session", `{"type":"ping"}`, asAnn))
	assert.Equal(t, http.StatusForbidden, postCommand(t, url, s.session, `{"type":"ping"}`, http.Header{"X-User": {"bob"}}))
	assert.Equal(t, http.StatusForbidden, postCommand(t, url, s.session, `{"type":"ping"}`,
		http.Header{"X-User": {"ann"}, "Origin": {"https://evil.test"}}))
	assert.Equal(t, http.StatusUnsupportedMediaType, postCommand(t, url, s.session, `{}`,
		http.Header{"X-User": {"ann"}, "Content-Type": {"text/plain"}}))

	// Bad input over POST gets error messages on the stream, as on WebSocket.
	assert.Equal(t, http.StatusAccepted, postCommand(t, url, s.session, `{"type":`, asAnn))
	assert.Equal(t, "bad_frame", s.next()["code"])
	assert.Equal(t, http.StatusAccepted, postCommand(t, url, s.session, `{"type":"x","id":2}`, asAnn))
	assert.Equal(t, "unknown_type", s.next()["code"])

	// As on WebSocket, an oversized frame ends the connection with 1009.
	assert.Equal(t, http.StatusRequestEntityTooLarge, postCommand(t, url, s.session, strings.Repeat(" ", 2000), asAnn))
	m := s.next()
	assert.Equal(t, "close", m["type"])
	assert.Equal(t, float64(realtime.CloseTooLarge), m["code"])

	// The stream of another origin is refused too.
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Origin", "https://evil.test")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode)
}

// F11 and the case: an SSE stream behind WriteTimeout 2 s stays up
// for 10 s of heartbeats, and a long poll longer than the timeout returns.
func TestStreamsOutliveServerWriteTimeout(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, &realtime.HandlerOptions{
		SSE:      &realtime.SSEOptions{Heartbeat: 250 * time.Millisecond},
		LongPoll: &realtime.LongPollOptions{PollTimeout: 3 * time.Second},
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.WriteTimeout = 2 * time.Second
	srv.Start()
	defer srv.Close()
	defer hub.Close() // first: the server waits for open streams

	s := openSSE(t, nil, srv.URL+"/rt/sse", "")
	require.Equal(t, http.StatusAccepted, s.post(`{"type":"join","channel":"room"}`))
	require.Equal(t, "joined", s.next()["type"])
	heartbeats := 0
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		line, err := s.r.ReadString('\n')
		require.NoError(t, err, "the stream broke after %d heartbeats", heartbeats)
		if line == ": ping\n" {
			heartbeats++
		}
	}
	assert.GreaterOrEqual(t, heartbeats, 20)
	_, err = hub.Publish(ctxT(t), "room", []byte(`"still here"`))
	require.NoError(t, err)
	assert.Equal(t, "still here", s.next()["data"])

	// A poll waiting 3 s is not cut at 2 s.
	c, err := client.Dial(ctxT(t), srv.URL+"/rt/poll", &client.Options{Transport: client.LongPoll})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Join(ctxT(t), "room")
	require.NoError(t, err)
	time.Sleep(3500 * time.Millisecond) // one empty poll completes meanwhile
	_, err = hub.Publish(ctxT(t), "room", []byte(`"after a long poll"`))
	require.NoError(t, err)
	assert.Equal(t, `"after a long poll"`, string(receiveType(t, c, "message").Data))
}

// F12: SSE over HTTP/2 delivers at once, with the Go client too.
func TestSSEOverHTTP2(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/rt/", realtime.NewHandler(hub, nil))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	defer hub.Close() // first: the server waits for open streams

	s := openSSE(t, srv.Client(), srv.URL+"/rt/sse", "")
	assert.Equal(t, 2, s.resp.ProtoMajor)

	c, err := client.Dial(ctxT(t), srv.URL+"/rt/sse", &client.Options{Transport: client.SSE, HTTPClient: srv.Client()})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Join(ctxT(t), "room")
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		_, err = hub.Publish(ctxT(t), "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
		assert.Equal(t, strconv.Itoa(i), string(receiveType(t, c, "message").Data))
	}
}

// F10: middleware that wraps the ResponseWriter with an Unwrap method lets
// events flow; one that hides the Flusher gets a clear error, not a stall.
func TestSSEThroughMiddleware(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	sse := realtime.NewSSEHandler(hub, nil)
	mux := http.NewServeMux()
	mux.Handle("/good", wrap(sse, true))
	mux.Handle("/bad", wrap(sse, false))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer hub.Close() // first: the server waits for open streams

	s := openSSE(t, nil, srv.URL+"/good", "")
	require.Equal(t, http.StatusAccepted, s.post(`{"type":"ping","id":1}`))
	assert.Equal(t, "pong", s.next()["type"])

	resp, err := http.Get(srv.URL + "/bad")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	assert.Contains(t, string(body), "cannot flush")
}

// counting is a middleware's writer: it counts bytes, as a metrics or
// compression middleware would wrap them.
type counting struct {
	http.ResponseWriter
	n      int
	unwrap bool
}

func (c *counting) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.ResponseWriter.Write(p)
}

type unwrapping struct{ *counting }

func (u unwrapping) Unwrap() http.ResponseWriter { return u.ResponseWriter }

func wrap(h http.Handler, withUnwrap bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &counting{ResponseWriter: w}
		if withUnwrap {
			h.ServeHTTP(unwrapping{c}, r)
			return
		}
		h.ServeHTTP(struct {
			http.ResponseWriter
		}{c}, r)
	})
}

var _ = bytes.MinRead

// An HTTP/1.1 event stream is served on the hijacked connection: headers
// that middleware set come along, the body ends with the connection, and
// the request's handler has returned while the stream goes on.
func TestSSEOverHTTP1KeepsMiddlewareHeaders(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(nil)
	require.NoError(t, err)
	defer hub.Close()
	returned := make(chan struct{}, 1)
	sse := realtime.NewSSEHandler(hub, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "https://app.example")
		w.Header().Set("X-Trace", "abc")
		sse.ServeHTTP(w, r)
		returned <- struct{}{}
	}))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	assert.Equal(t, "https://app.example", resp.Header.Get("Access-Control-Allow-Origin"))
	assert.Equal(t, "abc", resp.Header.Get("X-Trace"))
	assert.True(t, resp.Close, "the stream ends with its connection")
	select {
	case <-returned:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not return once the stream was open")
	}
	// The stream still works: the welcome arrives, then a direct message.
	br := bufio.NewReader(resp.Body)
	var data []string
	for len(data) < 1 {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			data = append(data, d)
		}
	}
	assert.Contains(t, data[0], `"welcome"`)
	require.Eventually(t, func() bool { return len(hub.Conns()) == 1 }, 5*time.Second, 5*time.Millisecond)
	require.NoError(t, hub.Conns()[0].Send([]byte(`"hi"`)))
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		if strings.Contains(line, `"direct"`) {
			break
		}
	}
	resp.Body.Close()
	require.Eventually(t, func() bool { return len(hub.Conns()) == 0 }, 5*time.Second, 5*time.Millisecond,
		"the connection ends when the client leaves")
}
