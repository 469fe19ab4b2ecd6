package main

import (
	"testing"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
)

func TestConformance(t *testing.T) {
	pool := testPool(t, nil)
	backplanetest.Run(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, pool)
		return func() realtime.Backplane {
			ctx := t.Context()
			bp, err := New(ctx, pool, &Options{Prefix: prefix})
			if err != nil {
				t.Fatalf("new node: %v", err)
			}
			return bp
		}
	})
}
