package realtime

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
)

// Receive handles one frame the client sent: one command or an array of
// them, carried out in order (see PROTOCOL.md). Transports call it from
// one goroutine per connection, under [Conn.Context] or a context derived
// from it. It blocks while a command waits for the backplane or a hook.
//
// Bad input never closes the connection: each failed command is answered
// with an error message, and Receive returns nil. Receive returns an error
// only when the connection is closed, or when frame is larger than
// Options.MaxMessageSize, in which case it closes the connection with
// CloseTooLarge. The frame is not retained.
func (c *Conn) Receive(ctx context.Context, frame []byte) error {
	if len(frame) > c.hub.opts.MaxMessageSize {
		ce := CloseError{CloseTooLarge, "frame larger than the message size limit"}
		c.close(ce, false)
		return ce
	}
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	items, err := decodeFrame(frame)
	switch {
	case err != nil:
		c.RejectFrame(err.Error())
		return c.closedErr()
	case len(items) > maxCommandsPerFrame:
		c.RejectFrame("more than " + strconv.Itoa(maxCommandsPerFrame) + " commands in one frame")
		return c.closedErr()
	}
	failed := 0
	for _, raw := range items {
		if failed == maxErrorsPerFrame {
			// One frame must not make the server write much more than it
			// read: the rest is answered by one error.
			c.RejectFrame("too many failing commands; the rest of the frame was skipped")
			break
		}
		cmd, perr := decodeCommand(raw)
		if perr != nil {
			var id uint64
			if cmd != nil {
				id = cmd.id
			}
			c.replyError(id, "", perr)
			failed++
			continue
		}
		if !c.run(ctx, cmd) {
			failed++
		}
		if c.ctx.Err() != nil {
			break
		}
	}
	return c.closedErr()
}

// Limits on one client frame, so that its replies stay in proportion.
const (
	maxCommandsPerFrame = 1000
	maxErrorsPerFrame   = 16
)

// RejectFrame answers a frame that a transport could not hand to Receive
// (one of the wrong kind, say) with a "bad_frame" error. The connection
// stays open.
func (c *Conn) RejectFrame(reason string) {
	c.replyError(0, "", &protocolError{codeBadFrame, reason})
}

func (c *Conn) closedErr() error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	return nil
}

// run carries out one command and answers it, reporting whether it
// succeeded.
func (c *Conn) run(ctx context.Context, cmd *command) bool {
	switch cmd.Type {
	case "join":
		return c.clientJoin(ctx, cmd.Channel, cmd.id, cmd.since())
	case "leave":
		if err := c.leave(cmd.Channel, cmd.id); err != nil {
			return c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
		}
		return true
	case "publish":
		return c.runPublish(ctx, cmd)
	case "send":
		return c.runSend(ctx, cmd)
	case "ping":
		c.enqueue(newMessage("pong", cmd.id).end())
		return true
	case "":
		return c.replyError(cmd.id, "", &protocolError{codeBadRequest, "missing type"})
	default:
		return c.replyError(cmd.id, "", &protocolError{codeUnknownType, "unknown command type"})
	}
}

// clientJoin joins a channel at the client's request, as the authorisation
// hook allows, answering with "joined" or an error.
func (c *Conn) clientJoin(ctx context.Context, channel string, id uint64, since *Position) bool {
	fail := func(e *protocolError) bool {
		// The refusal also takes the channel out of the cursor.
		c.push(item{data: encodeError(id, channel, e), ref: &itemRef{kind: itemLeft, channel: channel}})
		return false
	}
	if err := c.hub.checkChannel(channel); err != nil {
		return fail(toProtocolError(err))
	}
	if authorize := c.hub.opts.AuthorizeJoin; authorize != nil {
		if err := authorize(ctx, c, channel); err != nil {
			return fail(&protocolError{codeForbidden, err.Error()})
		}
	}
	if err := c.join(ctx, channel, id, since); err != nil {
		return fail(toProtocolError(err))
	}
	return true
}

// resume joins again every channel of a cursor a reconnecting client
// handed back, in name order (see ConnInfo.Cursor).
func (c *Conn) resume(positions map[string]Position) {
	names := make([]string, 0, len(positions))
	for name := range positions {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		pos := positions[name]
		c.clientJoin(c.ctx, name, 0, &pos)
	}
}

func (c *Conn) runPublish(ctx context.Context, cmd *command) bool {
	data, perr := cmd.payload()
	if perr != nil {
		return c.replyError(cmd.id, cmd.Channel, perr)
	}
	if err := c.hub.checkChannel(cmd.Channel); err != nil {
		return c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
	}
	if authorize := c.hub.opts.AuthorizePublish; authorize != nil {
		if err := authorize(ctx, c, cmd.Channel, data); err != nil {
			return c.replyError(cmd.id, cmd.Channel, &protocolError{codeForbidden, err.Error()})
		}
	} else if !c.isMember(cmd.Channel) {
		return c.replyError(cmd.id, cmd.Channel, &protocolError{codeForbidden, "publish to a channel you have not joined"})
	}
	pos, err := c.hub.Publish(ctx, cmd.Channel, data)
	if err != nil {
		return c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
	}
	if cmd.id != 0 {
		c.enqueue(newMessage("ack", cmd.id).str("channel", cmd.Channel).position(pos).end())
	}
	return true
}

func (c *Conn) runSend(ctx context.Context, cmd *command) bool {
	data, perr := cmd.payload()
	if perr != nil {
		return c.replyError(cmd.id, "", perr)
	}
	onMessage := c.hub.opts.OnMessage
	if onMessage == nil {
		return c.replyError(cmd.id, "", &protocolError{codeForbidden, "this server accepts no messages"})
	}
	if err := onMessage(ctx, c, data); err != nil {
		return c.replyError(cmd.id, "", &protocolError{codeForbidden, err.Error()})
	}
	if cmd.id != 0 {
		c.enqueue(newMessage("ack", cmd.id).end())
	}
	return true
}

// replyError answers a failed command; it returns false, for run.
func (c *Conn) replyError(id uint64, channel string, e *protocolError) bool {
	if c.hub.log.Enabled(context.Background(), slog.LevelDebug) {
		c.logger().Debug("realtime command failed",
			slog.String("code", e.code), slog.String("channel", channel),
			slog.String("message", e.message))
	}
	c.enqueue(encodeError(id, channel, e))
	return false
}

// toProtocolError maps an error of the hub to the code a client sees.
// Anything unnamed comes from the backplane, and retrying may work.
func toProtocolError(err error) *protocolError {
	code := codeUnavailable
	switch {
	case errors.Is(err, ErrBadChannel):
		code = codeBadChannel
	case errors.Is(err, ErrTooManyChannels):
		code = codeTooManyChannels
	case errors.Is(err, ErrNotJoined):
		code = codeNotJoined
	case errors.Is(err, ErrTooLarge):
		code = codeTooLarge
	case errors.Is(err, ErrForbidden):
		code = codeForbidden
	}
	return &protocolError{code, err.Error()}
}
