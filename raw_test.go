package realtime_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// rawConn is a WebSocket client that sends and reads protocol frames as
// they are, one message at a time.
type rawConn struct {
	t       testing.TB
	ws      *websocket.Conn
	id      string
	pending []map[string]any
}

func (rc *rawConn) send(frame string) {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(rc.t, rc.ws.Write(ctx, websocket.MessageText, []byte(frame)))
}

// next returns the next server message, reading a frame when needed.
func (rc *rawConn) next() map[string]any {
	rc.t.Helper()
	for len(rc.pending) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		typ, frame, err := rc.ws.Read(ctx)
		cancel()
		require.NoError(rc.t, err)
		require.Equal(rc.t, websocket.MessageText, typ)
		var msgs []map[string]any
		require.NoError(rc.t, json.Unmarshal(frame, &msgs), "frame %s", frame)
		require.NotEmpty(rc.t, msgs)
		rc.pending = msgs
	}
	m := rc.pending[0]
	rc.pending = rc.pending[1:]
	return m
}

// readErr reads until the connection fails and returns the error.
func (rc *rawConn) readErr() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := rc.ws.Read(ctx); err != nil {
			return err
		}
	}
}
