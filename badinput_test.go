package realtime_test

import (
	"context"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

func TestBadInputGetsErrorAndConnectionSurvives(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	bystander := th.dial(t, nil)
	_, err := bystander.Join(ctxT(t), "room")
	require.NoError(t, err)
	rc := th.dialRaw(t)

	for _, tc := range []struct {
		name  string
		frame string
		code  string
		id    float64
	}{
		{"not json", `{"type":`, "bad_frame", 0},
		{"not an object", `"join"`, "bad_frame", 0},
		{"empty", ``, "bad_frame", 0},
		{"array element not object", `[1]`, "bad_frame", 0},
		{"unknown type", `{"type":"dance","id":4}`, "unknown_type", 4},
		{"missing type", `{"id":5}`, "bad_request", 5},
		{"wrong field type", `{"type":"join","channel":7}`, "bad_request", 0},
		{"bad id", `{"type":"ping","id":-1}`, "bad_request", 0},
		{"fractional id", `{"type":"ping","id":1.5}`, "bad_request", 0},
		{"bad channel", `{"type":"join","id":6,"channel":"a b"}`, "bad_channel", 6},
		{"publish without payload", `{"type":"publish","id":7,"channel":"room"}`, "bad_request", 7},
		{"publish bad base64", `{"type":"publish","id":8,"channel":"room","b64":"!!"}`, "bad_request", 8},
		{"publish both forms", `{"type":"publish","id":9,"channel":"room","data":1,"b64":"AA=="}`, "bad_request", 9},
		{"leave unknown channel", `{"type":"leave","id":10,"channel":"nowhere"}`, "not_joined", 10},
	} {
		rc.send(tc.frame)
		m := rc.next()
		assert.Equal(t, "error", m["type"], tc.name)
		assert.Equal(t, tc.code, m["code"], tc.name)
		assert.NotEmpty(t, m["message"], tc.name)
		if tc.id != 0 {
			assert.Equal(t, tc.id, m["id"], tc.name)
		} else {
			assert.NotContains(t, m, "id", tc.name)
		}
	}

	// A binary frame is refused the same way.
	ctx := ctxT(t)
	require.NoError(t, rc.ws.Write(ctx, websocket.MessageBinary, []byte{0xff}))
	assert.Equal(t, "bad_frame", rc.next()["code"])

	// Commands in one array run in order, each answered.
	rc.send(`[{"type":"join","id":1,"channel":"room"},{"type":"bogus","id":2},{"type":"ping","id":3}]`)
	assert.Equal(t, "joined", rc.next()["type"])
	assert.Equal(t, "unknown_type", rc.next()["code"])
	assert.Equal(t, "pong", rc.next()["type"])

	// Nobody else noticed.
	_, err = th.Publish(ctx, "room", []byte(`"still here"`))
	require.NoError(t, err)
	assert.Equal(t, `"still here"`, string(receiveType(t, bystander, "message").Data))
	assert.Equal(t, "still here", rc.next()["data"])
	assert.Len(t, th.Conns(), 2)
}

func TestOversizedFrameClosesWith1009(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{MaxMessageSize: 4096}, nil)
	bystander := th.dial(t, nil)
	rc := th.dialRaw(t)
	rc.send(`{"type":"publish","channel":"room","data":"` + strings.Repeat("x", 5000) + `"}`)
	err := rc.readErr()
	assert.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(err), "%v", err)

	th.waitConns(t, 1)
	reason, ok := th.disconnect(rc.id)
	require.True(t, ok)
	assert.Equal(t, realtime.CloseTooLarge, reason.Code)
	require.NoError(t, bystander.Ping(ctxT(t)))
}

func TestReceiveEnforcesSizeForAnyTransport(t *testing.T) {
	t.Parallel()
	hub, err := realtime.New(&realtime.Options{MaxMessageSize: 100})
	require.NoError(t, err)
	defer hub.Close()
	c, err := hub.Connect(nopTransport{}, realtime.ConnInfo{})
	require.NoError(t, err)
	err = c.Receive(context.Background(), make([]byte, 101))
	assert.Equal(t, realtime.CloseTooLarge, realtime.CloseCodeOf(err))
	<-c.Done()
	assert.Equal(t, realtime.CloseTooLarge, c.Reason().Code)
}
