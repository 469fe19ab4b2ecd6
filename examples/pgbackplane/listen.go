package main

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/realtimekit/realtime"
)

// Subscribe makes this node receive the messages of channel. The
// listener connection listens on one notification channel for every
// channel of the backplane and drops what this node does not follow, so
// Subscribe only records the channel and does no I/O: every message
// committed after it returns reaches Receive, unless the listener
// connection is down, which Health reports and a gap signal follows.
func (b *Backplane) Subscribe(ctx context.Context, channel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return realtime.ErrClosed
	}
	b.subs[channel] = struct{}{}
	return nil
}

// Unsubscribe stops the messages of channel for this node. Messages of
// the channel that are on their way are dropped; those already queued
// for Receive are not.
func (b *Backplane) Unsubscribe(ctx context.Context, channel string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return realtime.ErrClosed
	}
	delete(b.subs, channel)
	return nil
}

// Receive blocks until messages are ready for this node and returns them
// in order; the caller owns the slice.
func (b *Backplane) Receive(ctx context.Context) ([]realtime.Message, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, realtime.ErrClosed
		}
		if len(b.queue) > 0 {
			batch := b.queue
			b.queue = nil
			close(b.space)
			b.space = make(chan struct{})
			b.mu.Unlock()
			return batch, nil
		}
		b.mu.Unlock()

		select {
		case <-b.ready:
		case <-b.life.Done():
			return nil, realtime.ErrClosed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// connect opens a listener connection and listens on the shared channel
// and on the node's own. LISTEN takes effect when it commits, which Exec
// in autocommit mode waits for.
func (b *Backplane) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, b.listenConfig)
	if err != nil {
		return nil, err
	}
	sql := "LISTEN " + pgx.Identifier{b.msgChannel}.Sanitize() +
		"; LISTEN " + pgx.Identifier{b.nodeChannel}.Sanitize()
	if _, err := conn.Exec(ctx, sql); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// listen runs on the goroutine that New starts: it reads notifications
// from conn, and from the connections that replace it, until Close.
func (b *Backplane) listen(conn *pgx.Conn) {
	for {
		err := b.serve(conn)
		closeConn(conn)
		if b.life.Err() != nil {
			return
		}
		b.logger.Error("pgbackplane listener connection lost: messages published meanwhile are lost",
			"err", err)
		b.setDown(err)

		if conn = b.reconnect(); conn == nil {
			return
		}
		b.setDown(nil)
		// Listening again: what was published meanwhile is gone, and the
		// Hub must tell the members of every channel.
		if !b.enqueue(realtime.Message{Gap: true}) {
			closeConn(conn)
			return
		}
	}
}

// serve hands every notification on conn to handle until the connection
// fails or Close begins. A connection silent for idlePing is pinged, so
// that a dead peer is found even without traffic.
func (b *Backplane) serve(conn *pgx.Conn) error {
	for {
		ctx, cancel := context.WithTimeout(b.life, idlePing)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if b.life.Err() != nil {
			return realtime.ErrClosed
		}
		if errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed() {
			// The wait timed out: pgx leaves the connection usable.
			pctx, cancel := context.WithTimeout(b.life, 10*time.Second)
			err = conn.Ping(pctx)
			cancel()
			if err == nil {
				continue
			}
		}
		if err != nil {
			return err
		}
		if !b.handle(n) {
			return realtime.ErrClosed
		}
	}
}

// reconnect dials a new listener connection with growing pauses until it
// listens, and returns it; or nil when Close begins first.
func (b *Backplane) reconnect() *pgx.Conn {
	backoff := 50 * time.Millisecond
	for {
		if !b.sleep(backoff) {
			return nil
		}
		backoff = min(2*backoff, 5*time.Second)
		conn, err := b.connect(b.life)
		if b.life.Err() != nil {
			if conn != nil {
				closeConn(conn)
			}
			return nil
		}
		if err == nil {
			return conn
		}
		b.logger.Warn("pgbackplane listener reconnecting", "err", err, "retry_in", backoff)
		b.setDown(err)
	}
}

// handle delivers one notification. It reports false when Close began.
func (b *Backplane) handle(n *pgconn.Notification) bool {
	if n.Channel == b.nodeChannel {
		return b.handleDirect(n.Payload)
	}
	if n.Channel != b.msgChannel {
		return true
	}
	nt, err := decodeMessage(n.Payload)
	if err != nil {
		b.logger.Error("pgbackplane notification dropped", "err", err)
		return true
	}
	if !b.follows(nt.msg.Channel) {
		return true
	}
	if nt.stored {
		if err := b.fetch(&nt.msg); err != nil {
			if b.life.Err() != nil {
				return false
			}
			// The row was trimmed or could not be read: the members of
			// the channel must hear that they missed a message.
			b.logger.Error("pgbackplane stored message lost",
				"topic", nt.msg.Channel, "offset", nt.msg.Position.Offset, "err", err)
			return b.enqueue(realtime.Message{Channel: nt.msg.Channel, Gap: true})
		}
	}
	return b.enqueue(nt.msg)
}

// fetch reads the data of a stored message into msg.
func (b *Backplane) fetch(msg *realtime.Message) error {
	ctx, cancel := context.WithTimeout(b.life, 30*time.Second)
	defer cancel()
	return b.pool.QueryRow(ctx, b.q.fetch,
		[]byte(msg.Channel),
		msg.Position.Epoch,
		int64(msg.Position.Offset),
	).Scan(&msg.Data)
}

// handleDirect delivers a direct message. Lost ones are logged only: the
// contract lets them go quietly. It reports false when Close began.
func (b *Backplane) handleDirect(payload string) bool {
	data, id, err := decodeDirect(payload)
	if err == nil && data == nil {
		ctx, cancel := context.WithTimeout(b.life, 30*time.Second)
		err = b.pool.QueryRow(ctx, b.q.take, id, b.node).Scan(&data)
		cancel()
	}
	if err != nil {
		if b.life.Err() != nil {
			return false
		}
		b.logger.Error("pgbackplane direct message lost", "err", err)
		return true
	}
	return b.enqueue(realtime.Message{Direct: true, Data: data})
}

// follows reports whether this node follows channel.
func (b *Backplane) follows(channel string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.subs[channel]
	return ok
}

// enqueue queues msg for Receive (a gap signal or a direct message
// always; a channel message if this node follows its channel), waiting
// while the queue is full. It reports false when Close began.
func (b *Backplane) enqueue(msg realtime.Message) bool {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return false
		}
		if _, ok := b.subs[msg.Channel]; !ok && !msg.Gap && !msg.Direct {
			b.mu.Unlock()
			return true
		}
		if len(b.queue) < queueLimit {
			b.queue = append(b.queue, msg)
			if len(b.queue) == 1 {
				select {
				case b.ready <- struct{}{}:
				default:
				}
			}
			b.mu.Unlock()
			return true
		}
		space := b.space
		b.mu.Unlock()

		select {
		case <-space:
		case <-b.life.Done():
			return false
		}
	}
}

// setDown records why the listener cannot deliver, or nil once it can.
func (b *Backplane) setDown(err error) {
	b.mu.Lock()
	b.down = err
	b.mu.Unlock()
}

// sleep waits for d or until Close begins, and reports whether b is
// still open.
func (b *Backplane) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.life.Done():
		return false
	}
}

// closeConn closes a listener connection, waiting a little for its
// goodbye to reach the server. Its error says only that the connection
// was already broken, which the caller knows.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx)
}
