package natsbackplane_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/natsbackplane"
)

// Names too long for a NATS subject are refused with an error before they
// reach the server, which would otherwise cut the connection for good.
func TestLongNamesLeaveTheConnectionAlone(t *testing.T) {
	nc := connect(t)
	bp, err := natsbackplane.New(nc, &natsbackplane.Options{Prefix: uniquePrefix(t, nc)})
	require.NoError(t, err)
	defer bp.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	long := strings.Repeat("é", 700) // 1,400 bytes, 4,200 escaped
	assert.Error(t, bp.Subscribe(ctx, long))
	_, err = bp.Publish(ctx, long, []byte("x"))
	assert.Error(t, err)
	_, _, err = bp.History(ctx, long, realtime.Position{Epoch: "e", Offset: 1})
	assert.Error(t, err)
	err = bp.Send(ctx, strings.Repeat("A", 7000), []byte("x"))
	assert.ErrorIs(t, err, realtime.ErrUnknownNode)

	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, nats.CONNECTED, nc.Status(), "last error: %v", nc.LastError())
	require.NoError(t, bp.Health(ctx))
	// A name of 340 bytes, escaped to the longest token allowed, works.
	fits := strings.Repeat("*", 340)
	require.NoError(t, bp.Subscribe(ctx, fits))
	_, err = bp.Publish(ctx, fits, []byte("x"))
	require.NoError(t, err)
	msgs, err := bp.Receive(ctx)
	require.NoError(t, err)
	assert.Equal(t, fits, msgs[0].Channel)
}
