package natsbackplane

import "github.com/nats-io/nats.go"

// NewWithLimits is New with a queue of queue messages for Receive and
// room for pending messages between nats.go and the reader, so that
// tests can overflow both.
func NewWithLimits(nc *nats.Conn, opts *Options, queue, pending int) (*Backplane, error) {
	return newBackplane(nc, opts, queue, pending)
}

// Token is token, for tests.
var Token = token
