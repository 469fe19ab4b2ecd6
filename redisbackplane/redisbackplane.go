// Package redisbackplane is a [realtime.Backplane] on Redis, so that hubs
// on many nodes share their channels.
//
// Each node makes its own Backplane with [New] on a shared Redis client
// and gives it to [realtime.New] in Options.Backplane. Positions and
// history live in Redis: one Lua script gives a message its position,
// appends it to the channel's stream and publishes it, so every node sees
// the messages of a channel in position order.
//
// # Keys
//
// For a channel C and the prefix P, the backplane uses the keys
// "P:{C}:epoch", "P:{C}:offset" and "P:{C}:history" (a stream), and the
// Pub/Sub channel "P:msg:C", or with Options.Sharded the shard channel
// "P:{C}:msg". The braces keep a channel's keys, and its shard channel, in
// one Redis Cluster slot. The keys expire HistoryTTL after the channel's
// last message. Node-addressed messages ([Backplane.Send]) always use a
// classic PUBLISH on "P:node:N", which reaches a node wherever in a
// cluster it subscribed.
//
// # Sharded Pub/Sub
//
// Classic Pub/Sub in a Redis Cluster sends every message to every node of
// the cluster. With Options.Sharded (Redis 7 or later) the script
// publishes with SPUBLISH on the channel's shard channel, which only the
// master that holds the slot, and its replicas, carry. On a
// *redis.Client one Pub/Sub connection carries everything. On a
// *redis.ClusterClient a node keeps one connection for its own channel
// and one per master that serves a channel it follows, and subscribes the
// shard channels one per command, as a cluster refuses channels of
// several slots in one SSUBSCRIBE.
//
// When slots move (resharding, or a failover to another address), Redis
// refuses or drops the affected subscriptions. The connection that meets
// this is opened again; first, every one of its channels whose slot
// another master now serves moves to that master's connection, with a
// gap signal for the channel. Messages published between the move and
// the new subscription are lost, and the gap tells the Hub so. The client
// learns of moves from Redis lazily, so settling may take a few
// reconnects.
//
// # Losing Redis
//
// When a Pub/Sub connection fails, it is logged at Error, and the
// backplane dials again with backoff (100 ms growing to 2 s) and
// subscribes its channels again by itself. Messages published meanwhile
// do not reach this node, so once it is back, Receive returns a gap
// signal (a realtime.Message with Gap set): one for every channel of the
// node, or, for a connection to one cluster master that carries at most
// 100 channels, one per channel. The Hub tells the members; clients
// recover from the history.
//
// [Backplane.Health] fails from the moment a connection is found broken
// until its replacement has every subscription, and while Redis does not
// answer a PING, so [realtime.Hub.ReadyHandler] answers 503 during an
// outage. Subscribe refuses joins while the connection that would carry
// the channel is down, and Publish fails with the client's error, after
// the client's retries.
//
// When Redis cannot write to a node fast enough (its Receive is not
// drained, or the network is slow), Redis drops the node's Pub/Sub
// connection once its client-output-buffer-limit for pubsub is passed.
// That is a lost connection like any other: logged at Error, and
// reported as a gap. The node's own queue (Options.QueueSize) never drops
// a message: when it is full the node stops reading, which leaves the
// buffering, and the decision, to Redis.
package redisbackplane

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
)

// Options configures a Backplane. The zero value of every field means its
// default; nil means all defaults.
type Options struct {
	// Prefix namespaces every key and Pub/Sub channel the backplane uses.
	// Nodes share channels only when they share the prefix. It must not
	// contain '{' or '}'. The default, "", is "realtime".
	Prefix string

	// HistorySize is how many recent messages each channel keeps for
	// recovery; Redis trims approximately, so a few more may stay. The
	// default, 0, is 1000; a negative value keeps none, and History then
	// refuses every recovery with realtime.ErrUnrecoverable.
	HistorySize int

	// HistoryTTL is how long a channel's history and numbering outlive its
	// last message. After that the channel starts a new epoch, whether or
	// not some node follows it. The default, 0, is 5 minutes.
	HistoryTTL time.Duration

	// Logger receives what has no caller to return it to: a lost Pub/Sub
	// connection at Error (the messages published meanwhile are lost, and
	// Receive reports a gap once the connection is back), reconnect
	// attempts at Warn. The default, nil, logs nothing.
	Logger *slog.Logger

	// Sharded carries channel messages with sharded Pub/Sub (SPUBLISH and
	// SSUBSCRIBE, Redis 7 or later) instead of PUBLISH and SUBSCRIBE. On
	// a Redis Cluster a message then travels only within the shard that
	// holds its channel's slot instead of to every node of the cluster,
	// and the node keeps one Pub/Sub connection per master it needs (see
	// the package documentation). Every node sharing a prefix must agree
	// on it. The default, false, uses classic Pub/Sub.
	Sharded bool

	// QueueSize bounds how many messages wait for Receive. When the queue
	// is full the node stops reading its Pub/Sub connections and Redis
	// buffers for it, up to its client-output-buffer-limit for pubsub;
	// past that Redis drops the connection, and Receive reports a gap once
	// it is back. Nothing is dropped silently. The default, 0, is 65,536.
	QueueSize int
}

// healthInterval is how long the Pub/Sub connection may stay silent
// before the node pings Redis to find out whether it is still there.
const healthInterval = 30 * time.Second

// Backplane is one node's [realtime.Backplane] on Redis. It is safe for
// concurrent use; the zero value is not usable: create one with [New].
// The Hub that uses it closes it; Close does not close the Redis client,
// which belongs to the caller and must outlive the Backplane.
type Backplane struct {
	client      redis.UniversalClient
	logger      *slog.Logger
	prefix      string
	msgPrefix   string
	node        string
	nodeChannel string
	historySize int
	historyTTL  time.Duration
	sharded     bool
	queueLimit  int
	script      *redis.Script
	// cluster is set when sharded channels are spread over the masters of
	// a cluster, one link per master.
	cluster *redis.ClusterClient

	// life ends when Close begins; it bounds the reader goroutines and
	// every call in flight.
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
	pings  map[string]chan struct{}
	// nextPing numbers the payloads of barrier and connect pings.
	nextPing uint64
	// main carries the node channel, and every channel unless cluster is
	// set; shards holds the links to cluster masters by address.
	main   *link
	shards map[string]*link
}

// New returns a node's backplane on client, which several nodes (and the
// application) may share. client is a *redis.Client (also one from
// redis.NewFailoverClient) or a *redis.ClusterClient; a *redis.Ring is
// refused. It starts one goroutine per Pub/Sub connection (one, or with
// Sharded on a cluster one more per master the node's channels need),
// each reading its connection until Close. New does no I/O: an unreachable Redis
// shows in the first call, and the Pub/Sub connection is retried in the
// background.
func New(client redis.UniversalClient, opts *Options) (*Backplane, error) {
	switch client.(type) {
	case nil:
		return nil, errors.New("redisbackplane: nil client")
	case *redis.Ring:
		// A Ring publishes on one shard and subscribes on another.
		return nil, errors.New("redisbackplane: a redis.Ring is not supported")
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = "realtime"
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redisbackplane: prefix %q contains a brace", o.Prefix)
	}
	switch {
	case o.HistorySize == 0:
		o.HistorySize = 1000
	case o.HistorySize < 0:
		o.HistorySize = 0
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	if o.QueueSize <= 0 {
		o.QueueSize = 1 << 16
	}

	node := newEpoch()
	life, stop := context.WithCancel(context.Background())
	b := &Backplane{
		client:      client,
		logger:      o.Logger,
		prefix:      o.Prefix,
		msgPrefix:   o.Prefix + ":msg:",
		node:        node,
		nodeChannel: o.Prefix + ":node:" + node,
		historySize: o.HistorySize,
		historyTTL:  o.HistoryTTL,
		sharded:     o.Sharded,
		queueLimit:  o.QueueSize,
		script:      publishScript,
		life:        life,
		stop:        stop,
		subs:        make(map[string]struct{}),
		ready:       make(chan struct{}, 1),
		space:       make(chan struct{}),
		pings:       make(map[string]chan struct{}),
		shards:      make(map[string]*link),
	}
	if o.Sharded {
		b.script = shardedPublishScript
		b.cluster, _ = client.(*redis.ClusterClient)
	}
	b.main = b.newLink("main", func(ctx context.Context) *redis.PubSub {
		return client.Subscribe(ctx)
	})
	b.main.gapAll = b.cluster == nil
	// The node's own channel is kept for good, on a classic
	// subscription: direct messages cross a cluster that way.
	b.main.plain[b.nodeChannel] = struct{}{}
	b.mu.Lock()
	b.main.start()
	b.mu.Unlock()
	return b, nil
}

// Node returns this node's name, random and fixed for the Backplane's
// life.
func (b *Backplane) Node() string { return b.node }

// Send publishes data on the Pub/Sub channel of the named node. It
// returns an error matching realtime.ErrUnknownNode when no node listens
// there.
func (b *Backplane) Send(ctx context.Context, node string, data []byte) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()
	if len(data) > realtime.MaxDirectSize {
		return fmt.Errorf("redisbackplane: send: %d bytes exceed realtime.MaxDirectSize", len(data))
	}
	if !validNode(node) {
		return fmt.Errorf("redisbackplane: send: %w: %.64q", realtime.ErrUnknownNode, node)
	}
	n, err := b.client.Publish(ctx, b.prefix+":node:"+node, data).Result()
	if err != nil {
		return b.wrap(ctx, "send", err)
	}
	if _, cluster := b.client.(*redis.ClusterClient); n == 0 && !cluster {
		// A cluster counts only the receivers on the node that took the
		// PUBLISH, so 0 proves nothing there.
		return fmt.Errorf("redisbackplane: send: %w: %q", realtime.ErrUnknownNode, node)
	}
	return nil
}

// Health reports an error while a Pub/Sub connection that carries the
// node's channel or some subscription is down or resubscribing, or when
// Redis does not answer a PING. It makes one round trip to Redis.
func (b *Backplane) Health(ctx context.Context) error {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return err
	}
	defer done()
	b.mu.Lock()
	var down error
	for _, l := range b.links() {
		if l.down != nil && (l == b.main || l.carries()) {
			down = fmt.Errorf("pubsub connection %s: %w", l.name, l.down)
			break
		}
	}
	b.mu.Unlock()
	if down != nil {
		return fmt.Errorf("redisbackplane: %w", down)
	}
	if err := b.client.Ping(ctx).Err(); err != nil {
		return b.wrap(ctx, "ping", err)
	}
	return nil
}

// keys returns the epoch, offset and history keys of channel.
func (b *Backplane) keys(channel string) []string {
	base := b.prefix + ":{" + channel + "}:"
	return []string{base + "epoch", base + "offset", base + "history"}
}

// publishScript gives a message the next position of its channel, keeps it
// in the channel's history and publishes it, in one step.
//
// KEYS: epoch, offset, history. ARGV: a fresh epoch (used if the channel
// has none), history size (0 keeps none), TTL in ms, Pub/Sub channel,
// payload. It returns {epoch, offset}.
var publishScript = redis.NewScript(publishSource)

// publishSource is the source of publishScript.
const publishSource = `
local epoch = redis.call('GET', KEYS[1])
if not epoch then
	epoch = ARGV[1]
	redis.call('SET', KEYS[1], epoch)
	redis.call('DEL', KEYS[2], KEYS[3])
end
local offset = redis.call('INCR', KEYS[2])
local id = string.format('%d', offset)
local size = tonumber(ARGV[2])
if size > 0 then
	redis.call('XADD', KEYS[3], 'MAXLEN', '~', size, id .. '-0', 'd', ARGV[5])
	redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[4], id .. ' ' .. epoch .. ' ' .. ARGV[5])
return {epoch, offset}
`

// shardedPublishScript is publishScript with SPUBLISH: the shard channel
// has the slot of the keys, which Redis requires of a script in a
// cluster.
var shardedPublishScript = redis.NewScript(strings.Replace(publishSource, "'PUBLISH'", "'SPUBLISH'", 1))

// Publish gives data the next position of channel and publishes it to
// every node that follows the channel. It blocks for one round trip to
// Redis. data is not retained.
func (b *Backplane) Publish(ctx context.Context, channel string, data []byte) (realtime.Position, error) {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return realtime.Position{}, err
	}
	defer done()

	res, err := b.script.Run(ctx, b.client, b.keys(channel),
		newEpoch(),
		b.historySize,
		b.historyTTL.Milliseconds(),
		b.redisChannel(channel),
		data,
	).Slice()
	if err != nil {
		return realtime.Position{}, b.wrap(ctx, "publish", err)
	}
	epoch, _ := res[0].(string)
	offset, _ := res[1].(int64)
	if len(res) != 2 || epoch == "" || offset < 1 {
		return realtime.Position{}, fmt.Errorf("redisbackplane: publish: unexpected reply %v", res)
	}
	return realtime.Position{Epoch: epoch, Offset: uint64(offset)}, nil
}

// History returns the messages of channel after since and the channel's
// latest position, read from Redis in one transaction.
func (b *Backplane) History(ctx context.Context, channel string, since realtime.Position) ([]realtime.Message, realtime.Position, error) {
	ctx, done, err := b.call(ctx)
	if err != nil {
		return nil, realtime.Position{}, err
	}
	defer done()

	keys := b.keys(channel)
	var epochCmd, offsetCmd *redis.StringCmd
	var rangeCmd *redis.XMessageSliceCmd
	_, err = b.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		epochCmd = p.Get(ctx, keys[0])
		offsetCmd = p.Get(ctx, keys[1])
		if since != (realtime.Position{}) && b.historySize > 0 {
			start := strconv.FormatUint(since.Offset+1, 10)
			rangeCmd = p.XRangeN(ctx, keys[2], start, "+", historyPage)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, realtime.Position{}, b.wrap(ctx, "history", err)
	}

	epoch, err := epochCmd.Result()
	if errors.Is(err, redis.Nil) {
		// Redis does not know the channel.
		if since == (realtime.Position{}) {
			return nil, realtime.Position{}, nil
		}
		return nil, realtime.Position{}, unrecoverable(channel, "unknown channel")
	}
	offset, err := offsetCmd.Uint64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, realtime.Position{}, fmt.Errorf("redisbackplane: history: %w", err)
	}
	latest := realtime.Position{Epoch: epoch, Offset: offset}

	switch {
	case since == (realtime.Position{}):
		return nil, latest, nil
	case since.Epoch != epoch:
		return nil, latest, unrecoverable(channel, "epoch changed")
	case since.Offset > offset:
		return nil, latest, unrecoverable(channel, "position ahead of the channel")
	case since.Offset == offset:
		return nil, latest, nil
	case rangeCmd == nil:
		return nil, latest, unrecoverable(channel, "no history kept")
	}
	if offset-since.Offset > uint64(b.historySize)+uint64(b.historySize)/4+historyPage {
		// More than the stream keeps, even trimmed approximately.
		return nil, latest, unrecoverable(channel, "history trimmed")
	}
	msgs, err := b.decodeRange(ctx, channel, since, offset, rangeCmd)
	return msgs, latest, err
}

// historyPage is how many stream entries one XRANGE reads.
const historyPage = 1000

// decodeRange turns the stream entries after since, up to offset, into
// messages, reading further pages after the first as needed, and refuses
// when some were trimmed.
func (b *Backplane) decodeRange(ctx context.Context, channel string, since realtime.Position, offset uint64, cmd *redis.XMessageSliceCmd) ([]realtime.Message, error) {
	entries, err := cmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("redisbackplane: history: %w", err)
	}
	want := offset - since.Offset
	for page := entries; uint64(len(entries)) < want && len(page) == historyPage; {
		last, err := entryOffset(page[len(page)-1].ID)
		if err != nil {
			return nil, fmt.Errorf("redisbackplane: history: %w", err)
		}
		page, err = b.client.XRangeN(ctx, b.keys(channel)[2], strconv.FormatUint(last+1, 10), "+", historyPage).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, b.wrap(ctx, "history", err)
		}
		entries = append(entries, page...)
	}
	if uint64(len(entries)) < want {
		return nil, unrecoverable(channel, "history trimmed")
	}
	msgs := make([]realtime.Message, 0, want)
	for i, e := range entries[:want] {
		n, err := entryOffset(e.ID)
		if err != nil {
			return nil, fmt.Errorf("redisbackplane: history: %w", err)
		}
		if n != since.Offset+1+uint64(i) {
			return nil, unrecoverable(channel, "history trimmed")
		}
		data, _ := e.Values["d"].(string)
		msgs = append(msgs, realtime.Message{
			Channel:  channel,
			Data:     []byte(data),
			Position: realtime.Position{Epoch: since.Epoch, Offset: n},
		})
	}
	return msgs, nil
}

// entryOffset returns the offset that a stream entry ID "<offset>-0"
// carries.
func entryOffset(id string) (uint64, error) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseUint(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad stream entry ID %q", id)
	}
	return n, nil
}

func unrecoverable(channel, why string) error {
	return fmt.Errorf("redisbackplane: history of %q: %s: %w", channel, why, realtime.ErrUnrecoverable)
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
func (b *Backplane) wrap(ctx context.Context, op string, err error) error {
	if b.life.Err() != nil {
		// Close began; the call may have failed on the closed Pub/Sub
		// connection before its ctx learned of it.
		err = realtime.ErrClosed
	}
	return fmt.Errorf("redisbackplane: %s: %w", op, err)
}

// newEpoch returns a random epoch name.
func newEpoch() string {
	var b [9]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// validNode reports whether name can be a node's name: 1 to 64 of
// [A-Za-z0-9_-], as realtime.Backplane.Node promises.
func validNode(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
