package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/realtimekit/realtime"
)

// Options configures a Backplane. The zero value of every field means its
// default; nil means all defaults.
type Options struct {
	// Prefix names the backplane's tables ("<prefix>_channels",
	// "<prefix>_messages", "<prefix>_nodes", "<prefix>_direct") and
	// notification channels. Nodes share channels only when they share
	// the database and the prefix. It is 1 to 40 bytes of lowercase ASCII
	// letters, digits and '_', not starting with a digit. The default, "",
	// is "realtime".
	Prefix string

	// HistorySize is how many recent messages each channel keeps for
	// recovery. Messages too large for a notification are read back from
	// the same rows by every node that follows their channel, so a node
	// that falls more than HistorySize messages of one channel behind
	// loses some of them and reports a gap. The default, 0, is 1000; a
	// negative value is refused by New.
	HistorySize int

	// HistoryTTL is how long a message stays in history, and how long a
	// channel keeps its numbering after its last message: the first
	// message after that starts a new epoch. The default, 0, is 5
	// minutes.
	HistoryTTL time.Duration

	// Logger receives what has no caller to return it to: a lost listener
	// connection and lost messages at Error, reconnect attempts and
	// failed housekeeping at Warn. The default, nil, logs nothing.
	Logger *slog.Logger
}

const (
	// maxPayload is the longest notification payload PostgreSQL accepts
	// with its default 8 KiB block size: it must be shorter than 8000
	// bytes.
	maxPayload = 7999

	// maxEpoch bounds the length of an epoch when New sizes a
	// notification before the database has told it the channel's epoch.
	maxEpoch = 32

	// queueLimit bounds how many messages wait for Receive. When it is
	// reached the listener stops reading its connection and PostgreSQL
	// queues the notifications (up to max_notify_queue_pages); once that
	// queue is full, publishes fail.
	queueLimit = 1 << 16

	// idlePing is how long the listener connection may stay silent before
	// the listener pings the server to find out whether it is still there.
	idlePing = 30 * time.Second

	// heartbeat is how often a node marks itself alive in the nodes table;
	// nodeTimeout is how long after its last mark other nodes stop
	// sending to it.
	heartbeat   = 10 * time.Second
	nodeTimeout = 30 * time.Second

	// directTTL is how long a large direct message waits in the direct
	// table for its node to take it.
	directTTL = time.Minute
)

var prefixPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,39}$`)

// nodePattern is what a node name looks like; Send refuses other names
// before they reach the database.
var nodePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,16}$`)

// Backplane is one node's [realtime.Backplane] on PostgreSQL. It is safe
// for concurrent use; the zero value is not usable: create one with
// [New]. The Hub that uses it closes it. Close does not close the pool,
// which belongs to the caller and must outlive the Backplane.
type Backplane struct {
	pool         *pgxpool.Pool
	listenConfig *pgx.ConnConfig
	logger       *slog.Logger
	node         string
	prefix       string
	msgChannel   string // the notification channel every node listens on
	nodeChannel  string // this node's own notification channel
	historySize  int64
	historyTTL   time.Duration
	q            queries

	// life ends when Close begins; it bounds the listener and janitor
	// goroutines and every call in flight.
	life    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	closing sync.Once

	mu     sync.Mutex
	closed bool
	subs   map[string]struct{}
	queue  []realtime.Message
	ready  chan struct{} // signalled when queue becomes non-empty
	space  chan struct{} // closed and replaced when queue empties
	// down says why the listener cannot deliver, from its failure until
	// it listens again on a new connection; nil while it can.
	down error
}

// New creates the backplane's tables if they do not exist, registers a
// new node and opens its listener connection: a dedicated connection,
// outside pool, made from pool's connection settings (the pool's
// BeforeConnect and AfterConnect hooks do not run for it), with
// application_name "<prefix>-listen-<node>". It returns an error if any
// of this fails. It starts two goroutines, the listener and a janitor
// that keeps the node's heartbeat and trims expired rows; Close stops
// both.
func New(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*Backplane, error) {
	if pool == nil {
		return nil, errors.New("pgbackplane: nil pool")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "realtime"
	}
	if !prefixPattern.MatchString(o.Prefix) {
		return nil, fmt.Errorf("pgbackplane: prefix %q is not 1 to 40 of [a-z0-9_] starting with a letter or _", o.Prefix)
	}
	switch {
	case o.HistorySize == 0:
		o.HistorySize = 1000
	case o.HistorySize < 0:
		return nil, errors.New("pgbackplane: negative HistorySize")
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	node := newToken()
	listenConfig := pool.Config().ConnConfig.Copy()
	listenConfig.RuntimeParams["application_name"] = o.Prefix + "-listen-" + node
	life, stop := context.WithCancel(context.Background())
	b := &Backplane{
		pool:         pool,
		listenConfig: listenConfig,
		logger:       o.Logger.With("node", node),
		node:         node,
		prefix:       o.Prefix,
		msgChannel:   o.Prefix + "_msg",
		nodeChannel:  nodeChannel(o.Prefix, node),
		historySize:  int64(o.HistorySize),
		historyTTL:   o.HistoryTTL,
		q:            newQueries(o.Prefix),
		life:         life,
		stop:         stop,
		subs:         make(map[string]struct{}),
		ready:        make(chan struct{}, 1),
		space:        make(chan struct{}),
	}
	conn, err := b.setup(ctx)
	if err != nil {
		stop()
		return nil, err
	}
	b.wg.Add(2)
	go func() {
		defer b.wg.Done()
		b.listen(conn)
	}()
	go func() {
		defer b.wg.Done()
		b.janitor()
	}()
	return b, nil
}

// setup creates the schema, registers the node and connects its
// listener.
func (b *Backplane) setup(ctx context.Context) (*pgx.Conn, error) {
	err := pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		// Nodes starting together would race on CREATE TABLE IF NOT
		// EXISTS; a lock per prefix makes them take turns.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "realtime:"+b.prefix); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, b.q.schema)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pgbackplane: create schema: %w", err)
	}
	if err := b.beat(ctx); err != nil {
		return nil, fmt.Errorf("pgbackplane: register node: %w", err)
	}
	conn, err := b.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgbackplane: listen: %w", err)
	}
	return conn, nil
}

// Node returns this node's name, random and fixed for the Backplane's
// life.
func (b *Backplane) Node() string { return b.node }

// Publish gives data the next position of channel, stores it in the
// channel's history and notifies every node, in one statement and so in
// one transaction: the channel's row stays locked until the commit, and
// PostgreSQL delivers notifications in commit order, so every node sees
// the channel's messages in position order. It blocks for one round trip.
// data is not retained.
func (b *Backplane) Publish(ctx context.Context, channel string, data []byte) (realtime.Position, error) {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return realtime.Position{}, err
	}
	defer done()
	if data == nil {
		data = []byte{} // nil would be SQL NULL
	}

	epoch := newToken()
	kind, tail := messageTail(channel, data)
	var pos realtime.Position
	var offset int64
	err = b.pool.QueryRow(ctx, b.q.publish,
		[]byte(channel),
		epoch,
		data,
		b.historyTTL.Microseconds(),
		b.historySize,
		b.msgChannel,
		kind,
		tail,
	).Scan(&pos.Epoch, &offset, nil)
	if err != nil {
		return realtime.Position{}, b.wrap("publish", err)
	}
	pos.Offset = uint64(offset)
	return pos, nil
}

// History returns the messages of channel after since and the channel's
// latest position, read in one statement and so from one snapshot.
func (b *Backplane) History(ctx context.Context, channel string, since realtime.Position) ([]realtime.Message, realtime.Position, error) {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return nil, realtime.Position{}, err
	}
	defer done()

	// An empty epoch matches no channel's, so a zero since reads no
	// messages; an offset beyond int64 is ahead of every channel.
	after := int64(math.MaxInt64)
	if since.Offset < math.MaxInt64 {
		after = int64(since.Offset)
	}
	rows, err := b.pool.Query(ctx, b.q.history,
		[]byte(channel),
		since.Epoch,
		after,
		b.historyTTL.Microseconds(),
	)
	if err != nil {
		return nil, realtime.Position{}, b.wrap("history", err)
	}
	var latest realtime.Position
	var msgs []realtime.Message
	for rows.Next() {
		var offset int64
		var msgOffset *int64
		var data []byte
		if err := rows.Scan(&latest.Epoch, &offset, &msgOffset, &data); err != nil {
			rows.Close()
			return nil, realtime.Position{}, b.wrap("history", err)
		}
		latest.Offset = uint64(offset)
		if msgOffset != nil {
			msgs = append(msgs, realtime.Message{
				Channel:  channel,
				Data:     data,
				Position: realtime.Position{Epoch: latest.Epoch, Offset: uint64(*msgOffset)},
			})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, realtime.Position{}, b.wrap("history", err)
	}

	switch {
	case latest == (realtime.Position{}) && since == (realtime.Position{}):
		return nil, latest, nil
	case latest == (realtime.Position{}):
		return nil, latest, unrecoverable(channel, "unknown channel")
	case since == (realtime.Position{}):
		return nil, latest, nil
	case since.Epoch != latest.Epoch:
		return nil, latest, unrecoverable(channel, "epoch changed")
	case since.Offset > latest.Offset:
		return nil, latest, unrecoverable(channel, "position ahead of the channel")
	}
	// The rows are in offset order and end at the latest one, so they are
	// complete exactly when there are as many as were published since.
	if uint64(len(msgs)) != latest.Offset-since.Offset {
		return nil, latest, unrecoverable(channel, "history trimmed")
	}
	return msgs, latest, nil
}

// Send delivers data to the node named node through that node's
// notification channel, or through the direct table when it is too large
// for a notification. It returns an error matching
// realtime.ErrUnknownNode when the nodes table has no heartbeat of that
// node within the last 30 seconds: it closed, or it stopped long ago.
// Otherwise the message is lost quietly if the node is gone or its
// listener is down.
func (b *Backplane) Send(ctx context.Context, node string, data []byte) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()
	if len(data) > realtime.MaxDirectSize {
		return fmt.Errorf("pgbackplane: send: %d bytes exceed realtime.MaxDirectSize", len(data))
	}
	if !nodePattern.MatchString(node) {
		return fmt.Errorf("pgbackplane: send: %w: %q", realtime.ErrUnknownNode, node)
	}
	if data == nil {
		data = []byte{}
	}

	to := nodeChannel(b.prefix, node)
	timeout := nodeTimeout.Microseconds()
	var n int64
	if payload := "d " + base64.StdEncoding.EncodeToString(data); len(payload) <= maxPayload {
		tag, err := b.pool.Exec(ctx, b.q.sendInline, to, payload, node, timeout)
		if err != nil {
			return b.wrap("send", err)
		}
		n = tag.RowsAffected()
	} else {
		tag, err := b.pool.Exec(ctx, b.q.sendStored, node, data, to, timeout)
		if err != nil {
			return b.wrap("send", err)
		}
		n = tag.RowsAffected()
	}
	if n == 0 {
		return fmt.Errorf("pgbackplane: send: %w: %q", realtime.ErrUnknownNode, node)
	}
	return nil
}

// Health reports an error while the listener connection is down or
// listening again, or when the pool cannot reach the server.
func (b *Backplane) Health(ctx context.Context) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()
	b.mu.Lock()
	down := b.down
	b.mu.Unlock()
	if down != nil {
		return fmt.Errorf("pgbackplane: listener connection lost: %w", down)
	}
	if err := b.pool.Ping(ctx); err != nil {
		return b.wrap("ping", err)
	}
	return nil
}

// Close stops the listener and janitor goroutines, closes the listener
// connection, waits for both and removes the node from the nodes table,
// so that Send to it fails at once. Blocked and later calls return
// realtime.ErrClosed. It does not close the pool.
func (b *Backplane) Close() error {
	var err error
	b.closing.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.queue = nil
		b.mu.Unlock()

		b.stop()
		b.wg.Wait()

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, e := b.pool.Exec(ctx, b.q.leave, b.node); e != nil {
			err = fmt.Errorf("pgbackplane: close: %w", e)
		}
	})
	return err
}

// janitor runs on the goroutine that New starts: it marks the node alive
// and trims expired rows until Close.
func (b *Backplane) janitor() {
	beat := time.NewTicker(heartbeat)
	defer beat.Stop()
	trim := time.NewTicker(min(max(b.historyTTL/4, time.Second), time.Minute))
	defer trim.Stop()
	for {
		select {
		case <-b.life.Done():
			return
		case <-beat.C:
			if err := b.beat(b.life); err != nil && b.life.Err() == nil {
				b.logger.Warn("pgbackplane heartbeat failed", "err", err)
			}
		case <-trim.C:
			if err := b.trim(b.life); err != nil && b.life.Err() == nil {
				b.logger.Warn("pgbackplane trim failed", "err", err)
			}
		}
	}
}

// beat records that the node is alive.
func (b *Backplane) beat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, heartbeat)
	defer cancel()
	_, err := b.pool.Exec(ctx, b.q.beat, b.node)
	return err
}

// trim deletes expired history, idle channels, untaken direct messages
// and nodes without a recent heartbeat. Every node does this; the
// statements are idempotent.
func (b *Backplane) trim(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ages := [len(trimSQL)]time.Duration{b.historyTTL, b.historyTTL, directTTL, nodeTimeout}
	for i, sql := range b.q.trim {
		if _, err := b.pool.Exec(ctx, sql, ages[i].Microseconds()); err != nil {
			return err
		}
	}
	return nil
}

// call checks that b is open and returns a context that also ends when
// Close begins, with its release function.
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
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(b.life, func() { cancel(realtime.ErrClosed) })
	return ctx, func() {
		stop()
		cancel(nil)
	}, nil
}

// wrap names op in err, and reports ErrClosed when Close cut the call.
func (b *Backplane) wrap(op string, err error) error {
	if b.life.Err() != nil {
		err = realtime.ErrClosed
	}
	return fmt.Errorf("pgbackplane: %s: %w", op, err)
}

func unrecoverable(channel, why string) error {
	return fmt.Errorf("pgbackplane: history of %q: %s: %w", channel, why, realtime.ErrUnrecoverable)
}

// nodeChannel returns the notification channel of the named node.
func nodeChannel(prefix, node string) string {
	return prefix + "_node_" + node
}

// newToken returns a random name for a node or an epoch: 12 characters
// of [A-Za-z0-9_-].
func newToken() string {
	var b [9]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
