package main

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/natsbackplane"
)

// newNATSBackplane is a node's backplane on the shared NATS, in a stream
// of this run's own (named after the prefix).
func newNATSBackplane(cfg serverConfig) (realtime.Backplane, error) {
	nc, err := nats.Connect(cfg.nats)
	if err != nil {
		return nil, err
	}
	return natsbackplane.New(nc, &natsbackplane.Options{Prefix: cfg.prefix})
}

// checkNATS reports whether the NATS server answers.
func checkNATS(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return err
	}
	nc.Close()
	return nil
}

// removeNATSStream deletes the stream this run created on the shared
// NATS, and nothing else.
func removeNATSStream(url, prefix string) error {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return js.DeleteStream(ctx, prefix)
}
