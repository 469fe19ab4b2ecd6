package backplanetest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestMemoryBackplane(t *testing.T) {
	for name, opts := range map[string]*realtime.MemoryOptions{
		"history":    nil,
		"no history": {HistorySize: -1},
	} {
		t.Run(name, func(t *testing.T) {
			backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
				broker := realtime.NewMemoryBroker(opts)
				return broker.Backplane
			})
		})
	}
}

func TestMemoryCluster(t *testing.T) {
	for name, opts := range map[string]*realtime.MemoryOptions{
		"history":    nil,
		"no history": {HistorySize: -1},
	} {
		t.Run(name, func(t *testing.T) {
			backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
				return realtime.NewMemoryBroker(opts).Backplane
			})
		})
	}
}
