package realtime_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// flakyBackplane is the in-memory backplane with a health that the test
// switches, as a broker outage would.
type flakyBackplane struct {
	realtime.Backplane
	down atomic.Bool
}

func (b *flakyBackplane) Health(ctx context.Context) error {
	if b.down.Load() {
		return errors.New("broker unreachable")
	}
	return b.Backplane.Health(ctx)
}

func TestReadyHandlerFollowsBackplaneAndShutdown(t *testing.T) {
	bp := &flakyBackplane{Backplane: realtime.NewMemoryBackplane(nil)}
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	require.NoError(t, err)
	ready := hub.ReadyHandler()
	probe := func() (int, string) {
		rec := httptest.NewRecorder()
		ready.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, rec.Body.String()
	}

	code, body := probe()
	assert.Equal(t, http.StatusOK, code, body)
	bp.down.Store(true)
	code, body = probe()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "broker unreachable")
	bp.down.Store(false)
	code, _ = probe()
	assert.Equal(t, http.StatusOK, code)

	require.NoError(t, hub.Shutdown(context.Background()))
	code, body = probe()
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "shutting down")
}

func TestStatsCountSlowConsumers(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, &realtime.Options{QueueMessages: 4, QueueBytes: 1 << 17, MaxMessageSize: 1 << 16}, nil)
	c := th.dialRaw(t)
	c.send(`{"type":"join","id":1,"channel":"room"}`)
	require.Equal(t, "joined", c.next()["type"])
	// The raw client reads nothing more: its queue overflows.
	for i := 0; i < 2000 && th.Stats().SlowConsumers == 0; i++ {
		th.Publish(ctxT(t), "room", make([]byte, 1<<15))
	}
	require.Eventually(t, func() bool { return th.Stats().SlowConsumers == 1 }, 10e9, 5e6)
	assert.Equal(t, 0, th.Stats().Connections)
}
