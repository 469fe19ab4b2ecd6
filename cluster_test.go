package realtime_test

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// newCluster starts n hubs on one in-memory broker, each behind its own
// server.
func newCluster(t *testing.T, n int, opts *realtime.Options) []*testHub {
	broker := realtime.NewMemoryBroker(nil)
	var hubs []*testHub
	for i := 0; i < n; i++ {
		var o realtime.Options
		if opts != nil {
			o = *opts
		}
		o.Backplane = broker.Backplane()
		hubs = append(hubs, newTestHub(t, &o, nil))
	}
	return hubs
}

// F09: a long-poll client whose requests land on every node in turn, with
// no sticky sessions. Its backlog is larger than one forwarded response
// may carry, so the node holding it answers in parts; the client gets
// every message once, in order, with a cursor that never runs ahead of
// what it received.
func TestF09LongPollWithoutStickySessions(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 3, &realtime.Options{QueueBytes: 8 << 20})
	bases := make([]string, len(hubs))
	for i, h := range hubs {
		bases[i] = h.base + "poll"
	}
	session, first := openPoll(t, bases[0], nil)

	// The join travels from node 1 to node 0.
	require.Equal(t, http.StatusAccepted, postCommand(t, bases[1], session, `{"type":"join","id":1,"channel":"room"}`, nil))
	r := poll(t, bases[2], session, first.Seq)
	require.Equal(t, http.StatusOK, r.Status)
	require.Equal(t, "joined", r.Messages[0]["type"])
	ack := r.Seq

	// 1,000 messages of 1 KiB from another node: about 1 MiB waits at
	// node 0, four times what one forwarded response carries.
	const total = 1000
	pad := strings.Repeat("x", 1000)
	for i := 0; i < total; i++ {
		_, err := hubs[2].Publish(ctxT(t), "room", []byte(`"`+strconv.Itoa(i)+pad+`"`))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return hubs[0].Stats().Connections == 1 }, 10*time.Second, 5*time.Millisecond)

	next, polls, partial := 0, 0, 0
	for next < total && polls < 200 {
		node := 1 + polls%2 // never node 0, which holds the session
		polls++
		r := poll(t, bases[node], session, ack)
		require.Equal(t, http.StatusOK, r.Status, "poll %d", polls)
		if len(r.Messages) > 0 && len(r.Messages) < total-next {
			partial++
		}
		for _, m := range r.Messages {
			require.Equal(t, "message", m["type"])
			data := m["data"].(string)
			require.Equal(t, strconv.Itoa(next), strings.TrimSuffix(data, pad), "messages in order, each once")
			next++
		}
		if len(r.Messages) > 0 {
			// The cursor is that of the last message in this response.
			require.Contains(t, r.Cursor, ":"+strconv.Itoa(next))
		}
		ack = r.Seq
	}
	require.Equal(t, total, next, "every message arrived")
	assert.Positive(t, partial, "the backlog came in parts")
	assert.Zero(t, hubs[0].Stats().ForwardFailures)
	assert.GreaterOrEqual(t, hubs[0].Stats().Served, uint64(polls))
}

// A forwarded POST larger than the message size limit ends the session's
// connection at the node holding it, as a local one would.
func TestForwardedOversizedCommandClosesTheConnection(t *testing.T) {
	t.Parallel()
	hubs := newCluster(t, 2, nil)
	base0, base1 := hubs[0].base+"poll", hubs[1].base+"poll"
	session, _ := openPoll(t, base0, nil)
	hubs[0].waitConns(t, 1)
	id := hubs[0].Conns()[0].ID()

	req, err := http.NewRequest(http.MethodPost, base1, bytes.NewReader(bytes.Repeat([]byte(" "), hubs[0].MaxMessageSize()+1)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(realtime.SessionHeader, session)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "%s", body)
	require.Eventually(t, func() bool {
		reason, ok := hubs[0].disconnect(id)
		return ok && reason.Code == realtime.CloseTooLarge
	}, 10*time.Second, 5*time.Millisecond)
}
