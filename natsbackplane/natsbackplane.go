// Package natsbackplane is a [realtime.Backplane] on NATS with JetStream,
// so that hubs on many nodes share their channels.
//
// Each node makes its own Backplane with [New] on a NATS connection and
// gives it to [realtime.New] in Options.Backplane. Positions and history
// live in one JetStream stream: a stored message carries one or more
// consecutive messages of a channel, with the channel's epoch and the
// offset of its last message in headers, and the stream accepts it only
// if the channel's last stored message is still the one the publisher
// numbered from, so that offsets rise by exactly one. The stream
// republishes every stored message on a plain NATS subject that the
// nodes following its channel subscribe to; a refused publish reaches
// nobody. Messages that publishers on different connections store at the
// same moment may be republished in either order, so each node queues a
// channel's messages by offset, holding one for up to half a second
// while one before it is missing. It needs nats-server 2.9 or later.
//
// # Publishing
//
// A node has one store of a channel's messages in flight at a time,
// made by a goroutine that runs while the channel has publishes waiting:
// the publishes that arrive while one store is on its way go together
// in the next stored message (up to 256 messages and 64 KiB, or one
// larger message), so a busy channel costs one round trip to NATS per
// batch rather than per message, and a node never races itself for a
// channel's offsets. Only publishers on different nodes can find the
// channel moved on; the loser numbers its batch again after the
// winner's messages. When a batch is done and fewer publishes wait than
// it had, but some do, the goroutine waits a little for the others (a
// quarter of the batch's round trip, at most 2 ms), so that the batches
// of a busy channel stay full.
//
// A stored message of one message holds its data as it is; one of
// several holds each message's data after its length as an unsigned
// varint, and a "Realtime-Count" header says how many there are. Every
// node sharing a prefix must be of a version that reads this.
//
// # Subjects
//
// For a channel C and the prefix P, a message is stored on "P.in.T" and
// republished on "P.out.T", where T is C as one subject token: bytes
// other than ASCII letters, digits and "_-:@/=+" are written as '%' and
// two hex digits, so "a.b" becomes "a%2Eb" (and the empty name "%").
// Node N receives direct messages, by request and reply, on "P.node.N".
// The stream, named after the prefix unless Options.Stream says
// otherwise, captures "P.in.>" and keeps HistorySize stored messages per
// channel for HistoryTTL.
//
// # History
//
// A channel's history is its messages in the stream. The stream keeps
// each channel's last HistorySize stored messages, which hold at least
// that many messages. When the last of them expires, the channel's
// numbering goes too, and its next message starts a new epoch at offset
// 1. History reads the channel's latest stored message, then the ones
// that hold the messages a client missed: for a few, each by the stream
// sequence that the one after it names; for many, through a short-lived
// consumer filtered on the channel.
//
// # Losing NATS
//
// The connection belongs to the caller; create it to reconnect forever,
// for example with nats.MaxReconnects(-1), or the backplane stops for
// good once nats.go gives up. New installs no handlers on it: it watches
// the connection with [nats.Conn.StatusChanged]. While the connection is
// down, Publish, Subscribe, History and Send fail at once and Health
// reports the outage. nats.go subscribes again by itself on reconnecting;
// messages published meanwhile do not reach this node, so Receive then
// returns a gap signal (a realtime.Message with Gap set) for every
// channel. When this node cannot keep up with its messages and nats.go
// drops some, or a message arrives whose offset skips one, Receive
// returns a gap signal for that channel. Either way the Hub tells the
// channel's members, and clients recover from the history.
package natsbackplane

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/realtimekit/realtime"
)

// Options configures a Backplane. The zero value of every field means its
// default; nil means all defaults. Nodes that share a prefix must share
// every option: each node makes the stream agree with its own.
type Options struct {
	// Prefix begins every subject the backplane uses. Nodes share
	// channels only when they share the prefix. It is one or more tokens
	// of ASCII letters, digits, '_' and '-', separated by dots. The
	// default, "", is "realtime".
	Prefix string

	// Stream names the JetStream stream that keeps positions and history.
	// The default, "", is the prefix with its dots made underscores.
	Stream string

	// Replicas is how many servers of a JetStream cluster keep the
	// stream. The default, 0, is 1.
	Replicas int

	// MemoryStorage keeps the stream in the servers' memory instead of
	// files: faster, but a server restart loses history and numbering.
	// The default is file storage.
	MemoryStorage bool

	// HistorySize is how many recent messages each channel keeps for
	// recovery: the stream keeps this many stored messages, which may
	// hold more messages, but History recovers no further back. The
	// default, 0, is 1000; a negative value keeps none (the stream still
	// keeps each channel's last stored message, for its numbering), and
	// History then refuses every recovery with realtime.ErrUnrecoverable.
	HistorySize int

	// HistoryTTL is how long a message stays in history. A channel whose
	// messages have all expired starts a new epoch, whether or not some
	// node follows it. The default, 0, is 5 minutes.
	HistoryTTL time.Duration

	// Timeout bounds each request to NATS when the caller's context
	// allows longer. A batch of publishes gets Timeout whatever its
	// callers' contexts; a caller whose context ends first returns then,
	// and its message may still be stored. The default, 0, is 5 seconds.
	Timeout time.Duration

	// Logger receives what has no caller to return it to: lost messages
	// (a reconnect, a subscription that dropped messages, an offset that
	// skipped) at Error, a lost connection at Warn. The default, nil, logs
	// nothing.
	Logger *slog.Logger
}

// Backplane is one node's [realtime.Backplane] on NATS. It is safe for
// concurrent use; the zero value is not usable: create one with [New].
// The Hub that uses it closes it; Close does not close the NATS
// connection, which belongs to the caller and must outlive the Backplane.
type Backplane struct {
	nc          *nats.Conn
	js          jetstream.JetStream
	logger      *slog.Logger
	node        string
	inPrefix    string // "P.in."
	outPrefix   string // "P.out."
	nodePrefix  string // "P.node."
	streamCfg   jetstream.StreamConfig
	historySize int
	timeout     time.Duration

	// life ends when Close begins; it bounds the goroutines and every
	// call in flight.
	life    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	closing sync.Once

	// msgs carries every message of this node's subscriptions, in the
	// order the connection read them, to the reader goroutine. status
	// reports the connection's changes to the watcher goroutine.
	msgs     chan *nats.Msg
	nodeSub  *nats.Subscription
	status   chan nats.Status
	wake     chan struct{} // nudges the reader to look for gaps
	baseline uint64        // nc.Stats().Reconnects at New

	// streamLock admits one stream check at a time; stream is the
	// checked stream, nil until a check succeeds.
	streamLock chan struct{}
	streamMu   sync.Mutex
	stream     jetstream.Stream

	publishers publishers

	mu         sync.Mutex
	closed     bool
	subs       map[string]*follow
	bySub      map[*nats.Subscription]*follow
	holding    map[*follow]struct{} // the follows with held messages
	unpacked   []realtime.Message   // the reader's scratch space
	queue      []realtime.Message
	queueLimit int
	// nodeDropped is how many direct messages nats.go has dropped, as
	// far as the log tells.
	nodeDropped int
	ready       chan struct{} // signalled when queue becomes non-empty
	space       chan struct{} // closed and replaced when queue empties
	// conn ends when the connection is lost, failing the calls that use
	// it; a call made while connected replaces an ended one.
	conn     context.Context
	connLost context.CancelCauseFunc
}

// follow is this node's subscription to one channel and what its reader
// knows of the channel. Guarded by Backplane.mu.
type follow struct {
	channel string
	sub     *nats.Subscription

	// ready says that Subscribe has read where the channel stood; next
	// is then the position of the message to queue next (offset 1 of any
	// epoch is always next, as a new epoch begins there).
	ready bool
	next  realtime.Position
	// held are messages that came before some message they follow, since
	// heldSince.
	held      []realtime.Message
	heldSince time.Time
	// covered says that a gap signal has covered every message up to
	// next.
	covered bool

	// dropped is how many messages nats.go has dropped for sub, as far
	// as gap signals account for; lost says that a signal is due.
	dropped int
	lost    bool
}

const (
	// queueLimit bounds how many messages wait for Receive. When it is
	// reached the reader stops; once msgs is full too, nats.go drops the
	// node's messages and Receive reports gaps.
	queueLimit = 1 << 16
	// pendingLimit is the capacity of msgs.
	pendingLimit = 1 << 14
	// defaultTimeout bounds requests when Options.Timeout is zero.
	defaultTimeout = 5 * time.Second
)

// Headers of a stored message that carry its position.
const (
	epochHeader  = "Realtime-Epoch"
	offsetHeader = "Realtime-Offset"
)

// New returns a node's backplane on nc, which the application may share.
// It subscribes to the node's direct subject and starts two goroutines,
// which Close ends: one reads the node's messages, one watches the
// connection. New does no other I/O: the stream is created or updated to
// match opts on first use (Health and Publish are first uses), and a NATS
// that is unreachable now shows in those calls.
func New(nc *nats.Conn, opts *Options) (*Backplane, error) {
	return newBackplane(nc, opts, queueLimit, pendingLimit)
}

func newBackplane(nc *nats.Conn, opts *Options, queue, pending int) (*Backplane, error) {
	if nc == nil {
		return nil, errors.New("natsbackplane: nil connection")
	}
	o, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(o.Timeout))
	if err != nil {
		return nil, fmt.Errorf("natsbackplane: %w", err)
	}

	life, stop := context.WithCancel(context.Background())
	b := &Backplane{
		nc:          nc,
		js:          js,
		logger:      o.Logger,
		node:        newID(),
		inPrefix:    o.Prefix + ".in.",
		outPrefix:   o.Prefix + ".out.",
		nodePrefix:  o.Prefix + ".node.",
		streamCfg:   streamConfig(o),
		historySize: max(o.HistorySize, 0),
		timeout:     o.Timeout,
		life:        life,
		stop:        stop,
		msgs:        make(chan *nats.Msg, pending),
		wake:        make(chan struct{}, 1),
		baseline:    nc.Stats().Reconnects,
		streamLock:  make(chan struct{}, 1),
		subs:        make(map[string]*follow),
		bySub:       make(map[*nats.Subscription]*follow),
		holding:     make(map[*follow]struct{}),
		queueLimit:  queue,
		ready:       make(chan struct{}, 1),
		space:       make(chan struct{}),
	}
	b.publishers.init()
	b.conn, b.connLost = context.WithCancelCause(context.Background())
	b.nodeSub, err = nc.ChanSubscribe(b.nodePrefix+b.node, b.msgs)
	if err != nil {
		stop()
		return nil, fmt.Errorf("natsbackplane: subscribe: %w", err)
	}
	b.status = nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		b.read()
	}()
	go func() {
		defer b.wg.Done()
		b.watch()
	}()
	return b, nil
}

// withDefaults checks opts and returns a copy with defaults filled in.
func withDefaults(opts *Options) (Options, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "realtime"
	}
	for _, t := range strings.Split(o.Prefix, ".") {
		if !validName(t) {
			return o, fmt.Errorf("natsbackplane: prefix %q is not dot-separated tokens of [A-Za-z0-9_-]", o.Prefix)
		}
	}
	if o.Stream == "" {
		o.Stream = strings.ReplaceAll(o.Prefix, ".", "_")
	}
	if !validName(o.Stream) {
		return o, fmt.Errorf("natsbackplane: stream name %q is not made of [A-Za-z0-9_-]", o.Stream)
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.HistorySize == 0 {
		o.HistorySize = 1000
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 5 * time.Minute
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// streamConfig returns the configuration of the stream that o describes.
// Reads go to the stream's leader (AllowDirect is off), so that a lagging
// replica never answers with a stale latest message.
func streamConfig(o Options) jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if o.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	return jetstream.StreamConfig{
		Name:              o.Stream,
		Description:       "realtime backplane: channel positions and history",
		Subjects:          []string{o.Prefix + ".in.>"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: int64(max(o.HistorySize, 1)),
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxAge:            o.HistoryTTL,
		Storage:           storage,
		Replicas:          o.Replicas,
		RePublish: &jetstream.RePublish{
			Source:      o.Prefix + ".in.>",
			Destination: o.Prefix + ".out.>",
		},
	}
}

// Node returns this node's name, random and fixed for the Backplane's
// life.
func (b *Backplane) Node() string { return b.node }

// Send delivers data to the named node by a request that the node's
// reader answers as it queues the message, so it blocks for one round
// trip. It returns an error matching realtime.ErrUnknownNode when no node
// of that name listens.
func (b *Backplane) Send(ctx context.Context, node string, data []byte) error {
	if len(data) > realtime.MaxDirectSize {
		return fmt.Errorf("natsbackplane: send: %d bytes exceed realtime.MaxDirectSize", len(data))
	}
	if !validName(node) {
		return fmt.Errorf("natsbackplane: send: %w: %q", realtime.ErrUnknownNode, node)
	}
	ctx, done, err := b.call(ctx)
	if err != nil {
		return fmt.Errorf("natsbackplane: send: %w", err)
	}
	defer done()
	_, err = b.nc.RequestWithContext(ctx, b.nodePrefix+node, data)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("natsbackplane: send: %w: %q", realtime.ErrUnknownNode, node)
	}
	if err != nil {
		return b.wrap(ctx, "send", err)
	}
	return nil
}

// Health reports an error while the connection is down or reconnecting,
// when the stream cannot be created or updated, or when the server does
// not answer a ping. A pong means the server has every subscription this
// node has made.
func (b *Backplane) Health(ctx context.Context) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return fmt.Errorf("natsbackplane: health: %w", err)
	}
	defer done()
	if _, err := b.ensureStream(ctx); err != nil {
		return b.wrap(ctx, "health", err)
	}
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return b.wrap(ctx, "health: ping", err)
	}
	return nil
}

// errNotConnected is why a call fails while the connection is not up.
type errNotConnected struct{ status nats.Status }

func (e errNotConnected) Error() string {
	return "not connected to NATS (" + strings.ToLower(e.status.String()) + ")"
}

// call checks that b is open and connected, and returns a context that
// also ends when Close begins, when the connection is lost or after the
// request timeout, with its release function.
func (b *Backplane) call(ctx context.Context) (context.Context, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, nil, realtime.ErrClosed
	}
	if s := b.nc.Status(); s != nats.CONNECTED {
		return nil, nil, errNotConnected{s}
	}
	conn := b.connection()

	ctx, cancel := context.WithTimeoutCause(ctx, b.timeout, errors.New("no answer from NATS in time"))
	ctx, cancelCause := context.WithCancelCause(ctx)
	stopLife := context.AfterFunc(b.life, func() { cancelCause(realtime.ErrClosed) })
	stopConn := context.AfterFunc(conn, func() { cancelCause(context.Cause(conn)) })
	return ctx, func() {
		stopLife()
		stopConn()
		cancelCause(nil)
		cancel()
	}, nil
}

// connection returns the context of the current connection, renewing it
// if it ended with a connection that has since come back.
func (b *Backplane) connection() context.Context {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn.Err() != nil {
		b.conn, b.connLost = context.WithCancelCause(context.Background())
	}
	return b.conn
}

// wrap names op in err, and gives the reason when a context that call
// made cut the request short.
func (b *Backplane) wrap(ctx context.Context, op string, err error) error {
	switch {
	case b.life.Err() != nil:
		err = realtime.ErrClosed
	case ctx.Err() != nil && errors.Is(err, ctx.Err()) && context.Cause(ctx) != ctx.Err():
		err = fmt.Errorf("%w: %w", err, context.Cause(ctx))
	}
	return fmt.Errorf("natsbackplane: %s: %w", op, err)
}

// Close unsubscribes, stops the goroutines and waits for them. Blocked and
// later calls return realtime.ErrClosed. It does not close the NATS
// connection.
func (b *Backplane) Close() error {
	var errs []error
	b.closing.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.queue = nil
		subs := b.subs
		b.subs = map[string]*follow{}
		b.bySub = map[*nats.Subscription]*follow{}
		b.holding = map[*follow]struct{}{}
		b.mu.Unlock()
		b.publishers.mu.Lock()
		b.publishers.closed = true
		b.publishers.mu.Unlock()

		b.stop()
		for _, f := range subs {
			errs = append(errs, unsubscribe(f.sub))
		}
		errs = append(errs, unsubscribe(b.nodeSub))
		b.nc.RemoveStatusListener(b.status)
		b.wg.Wait()
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("natsbackplane: close: %w", err)
	}
	return nil
}

// unsubscribe ends sub. A connection that is closed has ended it already.
func unsubscribe(sub *nats.Subscription) error {
	err := sub.Unsubscribe()
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
		return nil
	}
	return err
}

// newID returns a random name of [A-Za-z0-9_-].
func newID() string {
	var b [9]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
