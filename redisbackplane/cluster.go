package redisbackplane

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
)

// links returns every link of the node. b.mu is held.
func (b *Backplane) links() []*link {
	ls := make([]*link, 0, 1+len(b.shards))
	ls = append(ls, b.main)
	for _, l := range b.shards {
		ls = append(ls, l)
	}
	return ls
}

// linkFor returns the link that carries the Redis channel name: the main
// one, or with a sharded cluster the one to the master that serves the
// channel's slot, which it opens if the node has none yet.
func (b *Backplane) linkFor(ctx context.Context, name string) (*link, error) {
	if b.cluster == nil {
		return b.main, nil
	}
	master, err := b.cluster.MasterForKey(ctx, name)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, realtime.ErrClosed
	}
	return b.shardLinkLocked(master), nil
}

// shardLinkLocked returns the link to master, opening it if needed. b.mu
// is held and b is open.
func (b *Backplane) shardLinkLocked(master *redis.Client) *link {
	addr := master.Options().Addr
	l := b.shards[addr]
	if l == nil {
		l = b.newLink(addr, func(ctx context.Context) *redis.PubSub {
			return master.Subscribe(ctx)
		})
		l.shardLink = true
		b.shards[addr] = l
		l.start()
	}
	return l
}

// replace moves the channels of l whose slot another master serves now to
// that master's link, before l connects again. Each moved channel may
// have lost messages: its gap signal is queued here, ahead of what the
// new link delivers. A channel whose master cannot be found stays, and
// fails l's next connection, which tries again.
func (b *Backplane) replace(ctx context.Context, l *link) {
	b.cluster.ReloadState(ctx)
	b.mu.Lock()
	names := keys(l.shard)
	b.mu.Unlock()

	for _, name := range names {
		master, err := b.cluster.MasterForKey(ctx, name)
		if err != nil || master.Options().Addr == l.name {
			continue
		}
		b.mu.Lock()
		if _, ok := l.shard[name]; !ok || b.closed {
			b.mu.Unlock()
			continue
		}
		delete(l.shard, name)
		to := b.shardLinkLocked(master)
		to.shard[name] = struct{}{}
		ps := to.ps
		b.mu.Unlock()

		if ch, ok := b.channelOf(name); ok {
			if !b.enqueue(ctx, realtime.Message{Gap: true, Channel: ch}) {
				return
			}
		}
		if ps != nil {
			// The other link may have taken its list of channels
			// already; a second SSUBSCRIBE is harmless. Errors show on
			// its reader.
			ps.SSubscribe(ctx, name)
		}
	}
}
