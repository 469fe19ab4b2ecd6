package realtime_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

type pollReply struct {
	Status   int
	Seq      uint64
	Cursor   string
	Messages []map[string]any
}

// rawPoll makes one long-poll GET with query q.
func rawPoll(t testing.TB, ctx context.Context, base string, q url.Values) pollReply {
	t.Helper()
	u := base
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	r := pollReply{Status: resp.StatusCode}
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&r))
	}
	return r
}

func openPoll(t testing.TB, base string, q url.Values) (session string, first pollReply) {
	t.Helper()
	first = rawPoll(t, ctxT(t), base, q)
	require.Equal(t, http.StatusOK, first.Status)
	require.NotEmpty(t, first.Messages)
	require.Equal(t, "welcome", first.Messages[0]["type"])
	return first.Messages[0]["session"].(string), first
}

func poll(t testing.TB, base, session string, ack uint64) pollReply {
	t.Helper()
	return rawPoll(t, ctxT(t), base, url.Values{"session": {session}, "ack": {strconv.FormatUint(ack, 10)}})
}

// The case: a client whose poll response is lost polls again with
// the old cursor and gets the batch again, then nothing twice.
func TestLongPollLostResponseIsSentAgain(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)
	require.Equal(t, http.StatusAccepted, postCommand(t, base, session, `{"type":"join","id":1,"channel":"room"}`, nil))

	r := poll(t, base, session, first.Seq)
	require.Equal(t, "joined", r.Messages[0]["type"])
	ack := r.Seq

	for i := 1; i <= 3; i++ {
		_, err := th.Publish(ctxT(t), "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}
	var batch pollReply
	require.Eventually(t, func() bool {
		batch = poll(t, base, session, ack)
		return len(batch.Messages) == 3
	}, 5*time.Second, time.Millisecond)

	// The response is "lost": the same ack brings the same batch.
	again := poll(t, base, session, ack)
	assert.Equal(t, batch, again)
	assert.Contains(t, again.Cursor, "room:")

	// Acknowledged, it never comes again.
	_, err := th.Publish(ctxT(t), "room", []byte(`4`))
	require.NoError(t, err)
	next := poll(t, base, session, again.Seq)
	require.Len(t, next.Messages, 1)
	assert.Equal(t, float64(4), next.Messages[0]["data"])
}

func TestLongPollNewerPollEndsOlder(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)

	older := make(chan pollReply, 1)
	go func() { older <- poll(t, base, session, first.Seq) }()
	require.Eventually(t, func() bool { return len(th.Conns()) == 1 }, 5*time.Second, time.Millisecond)
	// Let the older poll start waiting, then poll again.
	time.Sleep(50 * time.Millisecond)
	newer := make(chan pollReply, 1)
	go func() { newer <- poll(t, base, session, first.Seq) }()

	o := <-older
	assert.Equal(t, http.StatusOK, o.Status)
	assert.Empty(t, o.Messages)
	assert.Equal(t, first.Seq, o.Seq)

	th.Conn(th.Conns()[0].ID()).Send([]byte(`"hello"`))
	n := <-newer
	require.Len(t, n.Messages, 1)
	assert.Equal(t, "direct", n.Messages[0]["type"])
}

func TestLongPollSessionExpires(t *testing.T) {
	t.Parallel()
	th := newTestHubWith(t, nil, &realtime.HandlerOptions{
		LongPoll: &realtime.LongPollOptions{SessionTimeout: 200 * time.Millisecond},
	})
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)
	id := first.Messages[0]["conn"].(string)
	require.Eventually(t, func() bool { _, ok := th.disconnect(id); return ok }, 5*time.Second, 5*time.Millisecond)
	reason, _ := th.disconnect(id)
	assert.Equal(t, realtime.ClosePingTimeout, reason.Code)
	assert.Empty(t, th.Conns())

	// The last poll learns why; after that the session is gone.
	r := poll(t, base, session, first.Seq)
	require.Len(t, r.Messages, 1)
	assert.Equal(t, "close", r.Messages[0]["type"])
	assert.Equal(t, float64(realtime.ClosePingTimeout), r.Messages[0]["code"])
	require.Eventually(t, func() bool {
		return poll(t, base, session, r.Seq).Status == http.StatusNotFound
	}, 5*time.Second, 20*time.Millisecond)
}

func TestLongPollBadRequests(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)
	assert.Equal(t, http.StatusBadRequest, poll(t, base, session, first.Seq+5).Status)
	assert.Equal(t, http.StatusBadRequest,
		rawPoll(t, ctxT(t), base, url.Values{"session": {session}, "ack": {"x"}}).Status)
	assert.Equal(t, http.StatusNotFound, poll(t, base, "nope", 0).Status)
}

// F09 on one node: a poll client whose session is gone opens a new one
// with its cursor and misses nothing.
func TestLongPollResumesWithCursor(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	base := th.base + "poll"
	session, first := openPoll(t, base, nil)
	require.Equal(t, http.StatusAccepted, postCommand(t, base, session, `{"type":"join","channel":"room"}`, nil))
	r := poll(t, base, session, first.Seq)
	require.Equal(t, "joined", r.Messages[0]["type"])
	cursor := r.Cursor
	require.NotEmpty(t, cursor)
	req, _ := http.NewRequest(http.MethodDelete, base, nil)
	req.Header.Set(realtime.SessionHeader, session)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	th.waitConns(t, 0)

	for i := 1; i <= 5; i++ {
		_, err := th.Publish(ctxT(t), "room", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}
	session, reopened := openPoll(t, base, url.Values{"cursor": {cursor}})
	msgs, ack := reopened.Messages[1:], reopened.Seq
	for len(msgs) < 6 {
		r := poll(t, base, session, ack)
		msgs, ack = append(msgs, r.Messages...), r.Seq
	}
	require.Len(t, msgs, 6)
	assert.Equal(t, true, msgs[0]["recovered"])
	for i, m := range msgs[1:] {
		assert.Equal(t, float64(i+1), m["data"])
	}
}
