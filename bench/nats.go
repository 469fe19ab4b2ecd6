package main

import (
	"errors"

	"github.com/realtimekit/realtime"
)

// errNoNATS says why the NATS rows are skipped: this tree has no NATS
// backplane yet.
var errNoNATS = errors.New("no natsbackplane package in this tree")

func newNATSBackplane(serverConfig) (realtime.Backplane, error) {
	return nil, errNoNATS
}
