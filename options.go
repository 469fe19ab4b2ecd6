package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Options configures a Hub. The zero value of every field means its
// default; a nil *Options means all defaults. New copies the Options, so
// changing them afterwards has no effect.
type Options struct {
	// Backplane orders and carries messages between hub nodes. The
	// default, nil, is a new in-memory backplane for this process alone.
	// The Hub closes it on Shutdown or Close.
	Backplane Backplane

	// Logger receives the hub's logs: connection lifecycle at Debug, start
	// and stop at Info, degraded service at Warn, lost messages at Error.
	// The default, nil, logs nothing.
	Logger *slog.Logger

	// Authenticate identifies the HTTP request that opens a connection,
	// before any upgrade. Returning an error refuses the connection: with
	// 403 if the error matches ErrForbidden, otherwise with 401. The
	// error's text is the response body, so it must not hold secrets. It
	// is called on the request's goroutine and may block. The default, nil,
	// admits every request with an empty Identity.
	//
	// It is also called for each later request of an SSE or long-poll
	// session (commands, polls), whose UserID must match the session's.
	// In a cluster it runs on the node the request reaches, with the
	// request as the client sent it, even when the session lives on
	// another node.
	Authenticate func(r *http.Request) (Identity, error)

	// OriginPatterns lists the origins, besides the request's own host,
	// whose pages may connect from a browser. Each pattern is matched
	// case-insensitively with path.Match against the Origin's host, or
	// against "scheme://host" when the pattern contains "://". Requests
	// without an Origin header (not from a browser) are always allowed.
	// The default, nil, allows same-origin pages only. "*" allows every
	// origin: do that only when no cookie or ambient credential
	// authenticates connections.
	OriginPatterns []string

	// AuthorizeJoin decides whether c may join channel at its own request.
	// A nil return allows it; an error refuses it, and the error's text
	// reaches the client with the code "forbidden". It runs on the
	// connection's reading goroutine and may block, delaying that
	// connection's later commands. The default, nil, allows every join.
	// Joins made by the application with [Conn.Join] are not checked.
	AuthorizeJoin func(ctx context.Context, c *Conn, channel string) error

	// AuthorizePublish decides whether c may publish data to channel, as
	// AuthorizeJoin does for joins. The default, nil, allows a connection
	// to publish only to the channels it is a member of.
	AuthorizePublish func(ctx context.Context, c *Conn, channel string, data []byte) error

	// OnConnect is called once a connection is registered, before it
	// receives anything, on the goroutine of the transport that accepted
	// it. It may send, join and close the connection.
	OnConnect func(c *Conn)

	// OnDisconnect is called once per connection, after it has left every
	// channel, with the reason it ended. It runs on a goroutine of the
	// connection that the hub waits for on shutdown, so it must return,
	// and must not wait for Hub.Shutdown.
	OnDisconnect func(c *Conn, reason CloseError)

	// OnJoin is called after c has joined channel, whether the client or
	// the application asked for it, on the goroutine that made the join.
	// It may publish, and join or leave channels.
	OnJoin func(c *Conn, channel string)

	// OnLeave is called after c has left channel, including when c
	// disconnects, on the goroutine that made the change. It may publish;
	// joins from it fail with ErrClosed once c is closing.
	OnLeave func(c *Conn, channel string)

	// OnMessage receives the payloads that a client sends to the
	// application (the "send" command), one at a time per connection, on
	// its reading goroutine. data is valid only during the call. Returning
	// an error sends it to the client with the code "forbidden". The
	// default, nil, refuses such payloads.
	OnMessage func(ctx context.Context, c *Conn, data []byte) error

	// CheckChannel decides which channel names exist, for clients and the
	// application alike; return an error to refuse one. The default, nil,
	// accepts names of 1 to 128 bytes of ASCII letters, digits and
	// "_-.:@/=+".
	CheckChannel func(channel string) error

	// MaxMessageSize bounds the size of a frame a client sends and of a
	// payload anyone publishes, in bytes. The default, 0, is 64 KiB; it
	// may be at most MaxMessageSizeLimit.
	MaxMessageSize int

	// MaxChannels bounds how many channels one connection may be in at
	// once. The default, 0, is 100.
	MaxChannels int

	// QueueMessages and QueueBytes bound each connection's outbound queue.
	// The defaults, 0, are 4096 messages and 1 MiB. A message is counted
	// in full even though its bytes are shared with other connections.
	// QueueBytes must be at least twice MaxMessageSize, so that the
	// largest message fits once encoded.
	QueueMessages int
	QueueBytes    int

	// SlowConsumer is what happens when a connection's queue is full. The
	// default, DisconnectSlow, closes it with CloseSlowConsumer.
	SlowConsumer SlowConsumerPolicy

	// WriteTimeout bounds each write to a connection. A write that takes
	// longer closes the connection; writes are checked once a second, so
	// one may last up to a second more. The default, 0, is 10 seconds.
	WriteTimeout time.Duration
}

// SlowConsumerPolicy is what a Hub does with a connection whose outbound
// queue is full.
type SlowConsumerPolicy int

const (
	// DisconnectSlow closes the connection with CloseSlowConsumer. The
	// client learns that it lost messages from the close code.
	DisconnectSlow SlowConsumerPolicy = iota
	// DropMessages drops what does not fit and, once there is room again,
	// sends the client a "gap" message for each channel that lost one, so
	// the loss is never silent.
	DropMessages
)

// Identity is who a connection belongs to, as Options.Authenticate found.
type Identity struct {
	// UserID names the user. It may be empty, for anonymous users.
	UserID string
	// Data holds anything else the application wants to keep with the
	// connection, such as claims from a token.
	Data any
}

// MaxMessageSizeLimit is the largest Options.MaxMessageSize: 256 KiB.
// Realtime messages are small; larger payloads belong in object storage,
// with a link in the message. The bound lets any message, with its base64
// and envelope, travel between cluster nodes as one direct message (see
// MaxDirectSize), where a long poll that reaches another node is served.
const MaxMessageSizeLimit = 256 << 10

func (o *Options) withDefaults() (Options, error) {
	var opts Options
	if o != nil {
		opts = *o
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.CheckChannel == nil {
		opts.CheckChannel = checkChannel
	}
	if opts.MaxMessageSize == 0 {
		opts.MaxMessageSize = 64 << 10
	}
	if opts.MaxChannels == 0 {
		opts.MaxChannels = 100
	}
	if opts.QueueMessages == 0 {
		opts.QueueMessages = 4096
	}
	if opts.QueueBytes == 0 {
		opts.QueueBytes = 1 << 20
	}
	if opts.WriteTimeout == 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	switch {
	case opts.MaxMessageSize < 0, opts.MaxChannels < 0, opts.QueueMessages < 0,
		opts.QueueBytes < 0, opts.WriteTimeout < 0:
		return opts, errors.New("realtime: negative limit in Options")
	case opts.SlowConsumer != DisconnectSlow && opts.SlowConsumer != DropMessages:
		return opts, errors.New("realtime: unknown SlowConsumer policy")
	case opts.MaxMessageSize > MaxMessageSizeLimit:
		return opts, fmt.Errorf("realtime: MaxMessageSize above %d bytes", MaxMessageSizeLimit)
	case opts.QueueBytes < 2*opts.MaxMessageSize:
		// A message can grow by a third in base64, plus its envelope.
		return opts, errors.New("realtime: QueueBytes must be at least twice MaxMessageSize")
	}
	return opts, nil
}

// checkChannel is the default channel name rule.
func checkChannel(name string) error {
	if len(name) == 0 || len(name) > 128 {
		return ErrBadChannel
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case b == '_' || b == '-' || b == '.' || b == ':' || b == '@' ||
			b == '/' || b == '=' || b == '+':
		default:
			return ErrBadChannel
		}
	}
	return nil
}
