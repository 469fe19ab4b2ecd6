package realtime

import (
	"errors"
	"net"
	"strconv"
)

// Errors that callers branch on. Hooks return ErrForbidden or
// ErrUnauthorized (possibly wrapped, with a message of their own) to pick
// the answer a client gets.
var (
	// ErrClosed is returned by calls on a Hub that has been shut down or a
	// Conn that has been closed. It matches net.ErrClosed with errors.Is.
	ErrClosed error = closedError{}

	// ErrUnauthorized is returned by an Authenticate hook to refuse a
	// request with 401. Any error from Authenticate that is not
	// ErrForbidden is treated the same way.
	ErrUnauthorized = errors.New("realtime: unauthorized")

	// ErrForbidden is returned by hooks to refuse a request with 403, or a
	// join, publish or send with the error code "forbidden".
	ErrForbidden = errors.New("realtime: forbidden")

	// ErrBadChannel reports a channel name that the hub does not accept.
	ErrBadChannel = errors.New("realtime: bad channel name")

	// ErrTooManyChannels reports a join beyond Options.MaxChannels.
	ErrTooManyChannels = errors.New("realtime: too many channels")

	// ErrNotJoined reports a leave from a channel the Conn is not in.
	ErrNotJoined = errors.New("realtime: not joined")

	// ErrUnrecoverable reports that a backplane cannot return every message
	// of a channel after a position: its history no longer reaches back
	// that far, or the channel's numbering restarted.
	ErrUnrecoverable = errors.New("realtime: history cannot recover the messages")

	// ErrUnknownNode reports a Backplane.Send to a node that the
	// backplane knows is not live.
	ErrUnknownNode = errors.New("realtime: no such node")

	// ErrTooLarge reports a payload larger than Options.MaxMessageSize.
	ErrTooLarge = errors.New("realtime: payload too large")
)

type closedError struct{}

func (closedError) Error() string { return "realtime: closed" }

func (closedError) Is(target error) bool { return target == net.ErrClosed }

// CloseCode says why a connection ended. The codes are WebSocket close
// codes; the other transports carry the same numbers. PROTOCOL.md lists
// them for client authors.
type CloseCode int

// Close codes used by the hub.
const (
	// CloseNormal: the client closed, or the server closed with nothing
	// wrong.
	CloseNormal CloseCode = 1000
	// CloseGoingAway: the hub is shutting down.
	CloseGoingAway CloseCode = 1001
	// ClosePolicyViolation: the client broke a rule that makes going on
	// unsafe.
	ClosePolicyViolation CloseCode = 1008
	// CloseTooLarge: the client sent a frame larger than
	// Options.MaxMessageSize.
	CloseTooLarge CloseCode = 1009
	// CloseInternal: the server failed.
	CloseInternal CloseCode = 1011
	// CloseAbnormal is never sent: it reports a connection that ended
	// without a close frame, such as a dropped network link.
	CloseAbnormal CloseCode = 1006
	// CloseSlowConsumer: the connection's outbound queue filled because
	// the client did not read fast enough.
	CloseSlowConsumer CloseCode = 4000
	// CloseDisconnected: the application closed the connection.
	CloseDisconnected CloseCode = 4001
	// ClosePingTimeout: the client did not answer a ping in time.
	ClosePingTimeout CloseCode = 4002
)

// CloseError is why a connection ended: the close code and a short reason
// for people. Hub hooks receive it, and transports report it.
type CloseError struct {
	Code   CloseCode
	Reason string
}

// Error implements error.
func (e CloseError) Error() string {
	s := "realtime: connection closed with code " + strconv.Itoa(int(e.Code))
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

// CloseCodeOf returns the close code of the CloseError in err's chain, or
// -1 if there is none.
func CloseCodeOf(err error) CloseCode {
	var ce CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}
