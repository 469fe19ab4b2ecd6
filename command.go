package realtime

import (
	"context"
	"errors"
	"log/slog"
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
	if err != nil {
		c.replyError(0, "", &protocolError{codeBadFrame, err.Error()})
		return c.closedErr()
	}
	for _, raw := range items {
		cmd, perr := decodeCommand(raw)
		if perr != nil {
			var id uint64
			if cmd != nil {
				id = cmd.id
			}
			c.replyError(id, "", perr)
			continue
		}
		c.run(ctx, cmd)
	}
	return c.closedErr()
}

func (c *Conn) closedErr() error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	return nil
}

// run carries out one command and answers it.
func (c *Conn) run(ctx context.Context, cmd *command) {
	switch cmd.Type {
	case "join":
		c.runJoin(ctx, cmd)
	case "leave":
		if err := c.leave(cmd.Channel, cmd.id); err != nil {
			c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
		}
	case "publish":
		c.runPublish(ctx, cmd)
	case "send":
		c.runSend(ctx, cmd)
	case "ping":
		c.enqueue(newMessage("pong", cmd.id).end())
	case "":
		c.replyError(cmd.id, "", &protocolError{codeBadRequest, "missing type"})
	default:
		c.replyError(cmd.id, "", &protocolError{codeUnknownType, "unknown command type"})
	}
}

func (c *Conn) runJoin(ctx context.Context, cmd *command) {
	if err := c.hub.checkChannel(cmd.Channel); err != nil {
		c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
		return
	}
	if authorize := c.hub.opts.AuthorizeJoin; authorize != nil {
		if err := authorize(ctx, c, cmd.Channel); err != nil {
			c.replyError(cmd.id, cmd.Channel, &protocolError{codeForbidden, err.Error()})
			return
		}
	}
	if err := c.join(ctx, cmd.Channel, cmd.id); err != nil {
		c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
	}
}

func (c *Conn) runPublish(ctx context.Context, cmd *command) {
	data, perr := cmd.payload()
	if perr != nil {
		c.replyError(cmd.id, cmd.Channel, perr)
		return
	}
	if err := c.hub.checkChannel(cmd.Channel); err != nil {
		c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
		return
	}
	if authorize := c.hub.opts.AuthorizePublish; authorize != nil {
		if err := authorize(ctx, c, cmd.Channel, data); err != nil {
			c.replyError(cmd.id, cmd.Channel, &protocolError{codeForbidden, err.Error()})
			return
		}
	} else if !c.isMember(cmd.Channel) {
		c.replyError(cmd.id, cmd.Channel, &protocolError{codeForbidden, "publish to a channel you have not joined"})
		return
	}
	pos, err := c.hub.Publish(ctx, cmd.Channel, data)
	if err != nil {
		c.replyError(cmd.id, cmd.Channel, toProtocolError(err))
		return
	}
	if cmd.id != 0 {
		c.enqueue(newMessage("ack", cmd.id).str("channel", cmd.Channel).position(pos).end())
	}
}

func (c *Conn) runSend(ctx context.Context, cmd *command) {
	data, perr := cmd.payload()
	if perr != nil {
		c.replyError(cmd.id, "", perr)
		return
	}
	onMessage := c.hub.opts.OnMessage
	if onMessage == nil {
		c.replyError(cmd.id, "", &protocolError{codeForbidden, "this server accepts no messages"})
		return
	}
	if err := onMessage(ctx, c, data); err != nil {
		c.replyError(cmd.id, "", &protocolError{codeForbidden, err.Error()})
		return
	}
	if cmd.id != 0 {
		c.enqueue(newMessage("ack", cmd.id).end())
	}
}

func (c *Conn) replyError(id uint64, channel string, e *protocolError) {
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("realtime command failed",
			slog.String("code", e.code), slog.String("channel", channel),
			slog.String("message", e.message))
	}
	c.enqueue(encodeError(id, channel, e))
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
