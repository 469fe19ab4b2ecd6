package realtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// getBody makes one GET and returns its status and body.
func getBody(t testing.TB, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func pollQuery(session string, ack uint64) string {
	return "?" + url.Values{"session": {session}, "ack": {strconv.FormatUint(ack, 10)}}.Encode()
}

// A message of the largest size allowed travels through a forwarded poll.
func TestForwardedPollCarriesTheLargestMessage(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, &realtime.Options{MaxMessageSize: realtime.MaxMessageSizeLimit})
	b0, b1 := hubs[0].base+"poll", hubs[1].base+"poll"
	session, first := openPoll(t, b0, nil)
	require.Equal(t, http.StatusAccepted, postCommand(t, b0, session, `{"type":"join","id":1,"channel":"room"}`, nil))
	r := poll(t, b0, session, first.Seq)
	require.Equal(t, "joined", r.Messages[0]["type"])

	// Binary, so base64 grows it by a third.
	big := make([]byte, realtime.MaxMessageSizeLimit)
	for i := range big {
		big[i] = byte(i)
	}
	_, err := hubs[1].Publish(ctxT(t), "room", big)
	require.NoError(t, err)
	var got pollReply
	require.Eventually(t, func() bool {
		got = poll(t, b1, session, r.Seq)
		return got.Status == http.StatusOK && len(got.Messages) == 1
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, "message", got.Messages[0]["type"])
	assert.NotEmpty(t, got.Messages[0]["b64"])

	_, err = realtime.New(&realtime.Options{MaxMessageSize: realtime.MaxMessageSizeLimit + 1})
	assert.Error(t, err, "MaxMessageSize above the limit")
}

// A partial forwarded response carries the cursor of its own last batch,
// which may be longer than the session's cursor now; the response is
// measured with it and never comes back empty.
func TestForwardedPollCursorOfAPartialResponse(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, &realtime.Options{QueueBytes: 8 << 20})
	b0, b1 := hubs[0].base+"poll", hubs[1].base+"poll"
	session, first := openPoll(t, b0, nil)
	ack := first.Seq
	var names []string
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("c%02d-%s", i, strings.Repeat("n", 100))
		names = append(names, name)
		require.Equal(t, http.StatusAccepted, postCommand(t, b0, session, fmt.Sprintf(`{"type":"join","id":%d,"channel":%q}`, i+1, name), nil))
	}
	for joined := 0; joined < len(names); {
		r := poll(t, b0, session, ack)
		ack = r.Seq
		for _, m := range r.Messages {
			if m["type"] == "joined" {
				joined++
			}
		}
	}
	// About 400 KiB wait, then the session leaves all channels but one:
	// its cursor shrinks, the waiting batches keep their long ones.
	pad := strings.Repeat("y", 900)
	for i := 0; i < 450; i++ {
		_, err := hubs[0].Publish(ctxT(t), names[0], []byte(`"`+pad+`"`))
		require.NoError(t, err)
	}
	for i, n := range names[1:] {
		require.Equal(t, http.StatusAccepted, postCommand(t, b0, session, fmt.Sprintf(`{"type":"leave","id":%d,"channel":%q}`, 100+i, n), nil))
	}
	received := 0
	for polls := 0; received < 450 && polls < 50; polls++ {
		st, body := getBody(t, b1+pollQuery(session, ack))
		require.Equal(t, http.StatusOK, st, body)
		var r pollReply
		require.NoError(t, json.Unmarshal([]byte(body), &r), "a forwarded poll answers JSON: %.200q", body)
		for _, m := range r.Messages {
			if m["type"] == "message" {
				received++
			}
		}
		ack = r.Seq
	}
	assert.Equal(t, 450, received)
}

// A session secret naming a node that cannot exist is unknown at once,
// and the backplane is left alone.
func TestForwardingRefusesImpossibleNodes(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, nil)
	for _, token := range []string{strings.Repeat("A", 7000) + ".b", ".b", "a*b.c", "zz> .x", "ü.x"} {
		st, body := getBody(t, hubs[0].base+"poll"+pollQuery(token, 1))
		assert.Equal(t, http.StatusNotFound, st, "%.40q: %s", token, body)
		assert.Contains(t, body, "unknown_session")
	}
	assert.Zero(t, hubs[0].Stats().Forwarded)
	assert.NoError(t, hubs[0].Ready(ctxT(t)))
}

// When the node that forwarded a poll shuts down, the poll answers at
// once with "retry" instead of waiting for a reply that cannot come.
func TestShutdownOfAForwardingNodeAnswersItsPolls(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, nil)
	b0, b1 := hubs[0].base+"poll", hubs[1].base+"poll"
	session, first := openPoll(t, b0, nil)
	type result struct {
		status int
		body   string
		after  time.Duration
	}
	out := make(chan result, 1)
	start := time.Now()
	go func() {
		st, body := getBody(t, b1+pollQuery(session, first.Seq))
		out <- result{st, body, time.Since(start)}
	}()
	require.Eventually(t, func() bool { return hubs[0].Stats().Served == 1 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, hubs[1].Shutdown(ctx))
	r := <-out
	assert.Less(t, r.after, 5*time.Second)
	assert.Equal(t, http.StatusServiceUnavailable, r.status, r.body)
	assert.Contains(t, r.body, "unavailable")
}

// When the node holding a session shuts down, a poll forwarded to it gets
// the close message, as a local one does.
func TestShutdownOfTheOwningNodeAnswersForwardedPolls(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, nil)
	b0, b1 := hubs[0].base+"poll", hubs[1].base+"poll"
	session, first := openPoll(t, b0, nil)
	out := make(chan string, 1)
	go func() {
		_, body := getBody(t, b1+pollQuery(session, first.Seq))
		out <- body
	}()
	require.Eventually(t, func() bool { return hubs[0].Stats().Served == 1 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, hubs[0].Shutdown(ctx))
	select {
	case body := <-out:
		assert.Contains(t, body, `"close"`)
		assert.Contains(t, body, `1001`)
	case <-time.After(10 * time.Second):
		t.Fatal("the forwarded poll got no answer")
	}
}

type userKey struct{}

// Authenticate runs where the request arrives, with what middleware put
// in its context: a forwarded request is judged as a local one.
func TestForwardedRequestsAreAuthenticatedWhereTheyArrive(t *testing.T) {
	t.Parallel()
	broker := realtime.NewMemoryBroker(nil)
	var bases []string
	for i := 0; i < 2; i++ {
		h, err := realtime.New(&realtime.Options{
			Backplane: broker.Backplane(),
			Authenticate: func(r *http.Request) (realtime.Identity, error) {
				u, _ := r.Context().Value(userKey{}).(string)
				if u == "" {
					return realtime.Identity{}, errors.New("no user")
				}
				return realtime.Identity{UserID: u}, nil
			},
		})
		require.NoError(t, err)
		mux := http.NewServeMux()
		mux.Handle("/rt/", realtime.NewHandler(h, nil))
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c, err := r.Cookie("sid"); err == nil {
				r = r.WithContext(context.WithValue(r.Context(), userKey{}, strings.TrimSuffix(c.Value, "-secret")))
			}
			mux.ServeHTTP(w, r)
		}))
		t.Cleanup(func() { h.Close(); srv.Close() })
		bases = append(bases, srv.URL+"/rt/poll")
	}
	alice := http.Header{"Cookie": {"sid=alice-secret"}}
	req, _ := http.NewRequest(http.MethodGet, bases[0], nil)
	req.Header = alice.Clone()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var r pollReply
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&r))
	resp.Body.Close()
	session := r.Messages[0]["session"].(string)

	assert.Equal(t, http.StatusAccepted, postCommand(t, bases[0], session, `{"type":"join","id":1,"channel":"a"}`, alice))
	assert.Equal(t, http.StatusAccepted, postCommand(t, bases[1], session, `{"type":"join","id":2,"channel":"b"}`, alice))
	bob := http.Header{"Cookie": {"sid=bob-secret"}}
	assert.Equal(t, http.StatusForbidden, postCommand(t, bases[1], session, `{"type":"join","id":3,"channel":"c"}`, bob))
	assert.Equal(t, http.StatusForbidden, postCommand(t, bases[1], session, `{"type":"join","id":4,"channel":"d"}`, nil))
}
