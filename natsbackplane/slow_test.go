package natsbackplane_test

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/natsbackplane"
)

// F06: a node that cannot keep up loses messages only with a gap signal
// for the channel, and a log entry; what it does receive stays in order.
func TestSlowConsumerIsReportedAsGap(t *testing.T) {
	nc := connect(t)
	prefix := uniquePrefix(t, nc)
	var logs lockedBuffer
	slow, err := natsbackplane.NewWithLimits(connect(t), &natsbackplane.Options{
		Prefix: prefix,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	}, 8, 8)
	require.NoError(t, err)
	t.Cleanup(func() { slow.Close() })
	pub := newNode(t, natsbackplane.Options{Prefix: prefix})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, slow.Subscribe(ctx, "flood"))

	// Nobody calls Receive while the messages come in.
	const total = 500
	for i := range total {
		_, err := pub.Publish(ctx, "flood", []byte(strconv.Itoa(i)))
		require.NoError(t, err)
	}

	var got []realtime.Message
	gaps := 0
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		msgs, err := slow.Receive(rctx)
		rcancel()
		if err != nil {
			break
		}
		for _, m := range msgs {
			if m.Gap {
				assert.Equal(t, "flood", m.Channel)
				gaps++
				continue
			}
			got = append(got, m)
		}
	}
	require.Less(t, len(got), total, "the node could not keep all")
	assert.Positive(t, gaps, "the loss is signalled")
	for i := 1; i < len(got); i++ {
		assert.Less(t, got[i-1].Position.Offset, got[i].Position.Offset, "in order")
	}
	assert.Contains(t, logs.String(), "dropped messages")

	// Once it keeps up again, messages flow.
	last, err := pub.Publish(ctx, "flood", []byte("final"))
	require.NoError(t, err)
	for {
		msgs, err := slow.Receive(ctx)
		require.NoError(t, err)
		m := msgs[len(msgs)-1]
		if string(m.Data) == "final" {
			assert.Equal(t, last, m.Position)
			break
		}
	}
}
