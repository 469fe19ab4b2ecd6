package realtime

import (
	"context"
	"errors"
	"sync"
)

// item is one queued message with what the writer needs to know of it.
type item struct {
	data    []byte
	kind    itemKind
	channel string
	pos     Position
}

type itemKind uint8

const (
	itemReply   itemKind = iota // replies, direct messages, errors
	itemMessage                 // a channel message at pos
	itemJoined                  // the connection follows channel from pos
	itemLeft                    // the connection left channel
)

// Frame is one server frame on its way to a transport: a JSON array of
// messages (see PROTOCOL.md), with the connection's resume cursor as of
// its end.
type Frame struct {
	// Data is the encoded frame. It is valid only during Transport.Write.
	Data []byte

	cursor map[string]Position
}

// Cursor returns the connection's resume state as of the end of the
// frame: for every channel it is in, the position of the last message of
// it that the frame or an earlier one carried. A client that reconnects
// hands it back (SSE as Last-Event-ID, long-poll as its cursor) to receive
// what it missed; see [ConnInfo.Cursor]. Call it only during
// Transport.Write.
func (f Frame) Cursor() string { return encodeCursor(f.cursor) }

// enqueue queues a message that is not a channel message (a reply, a
// direct message). Under every policy, one that does not fit closes the
// connection: such messages answer the client and cannot be dropped.
func (c *Conn) enqueue(m []byte) bool {
	return c.push(item{data: m})
}

func (c *Conn) push(it item) bool {
	ok, slow := c.tryPush(it)
	if slow {
		c.close(CloseError{CloseSlowConsumer, "slow consumer: outbound queue full"}, false)
	}
	return ok
}

// tryPush queues it, reporting whether it did and whether the queue
// overflowed under a policy that disconnects.
func (c *Conn) tryPush(it item) (ok, slow bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false, false
	}
	droppable := it.kind == itemMessage
	if _, lagged := c.lagged[it.channel]; lagged && droppable {
		gap := item{data: newMessage("gap", 0).str("channel", it.channel).end()}
		if !c.fits(len(gap.data) + len(it.data)) {
			return false, false
		}
		delete(c.lagged, it.channel)
		c.append(gap)
	}
	if c.fits(len(it.data)) {
		c.append(it)
		return true, false
	}
	if !droppable || c.hub.opts.SlowConsumer != DropMessages {
		return false, true
	}
	c.hub.stats.dropped.Add(1)
	if c.lagged == nil {
		c.lagged = make(map[string]struct{})
	}
	c.lagged[it.channel] = struct{}{}
	return false, false
}

func (c *Conn) fits(n int) bool {
	o := &c.hub.opts
	return len(c.queue) < o.QueueMessages && c.queued+n <= o.QueueBytes
}

func (c *Conn) append(it item) {
	c.queue = append(c.queue, it)
	c.queued += len(it.data)
	if len(c.queue) == 1 {
		c.signal()
	}
}

// signal starts the writer if there is something to write and none runs.
// c.mu is held. An idle connection has no writer goroutine, and no frame
// buffer.
func (c *Conn) signal() {
	if c.writing {
		select {
		case c.wake <- struct{}{}: // it may be lingering
		default:
		}
		return
	}
	if c.writerStopped || !c.hasWork() {
		return
	}
	c.writing = true
	go c.write()
}

// hasWork reports whether the writer has something to do. c.mu is held.
func (c *Conn) hasWork() bool {
	if c.closing && !c.graceful {
		return false
	}
	return len(c.queue) > 0 || len(c.lagged) > 0
}

// framePool holds frame buffers between writers' runs.
var framePool = sync.Pool{New: func() any { return new([]byte) }}

// write is the connection's writer: the only caller of the transport's
// Write. It runs while there is something to write, coalescing what is
// queued into frames and keeping the resume cursor. Once the queue is
// empty it lingers for a second or two, so that a busy connection does
// not start a goroutine per message, and then ends; signal starts it
// again.
func (c *Conn) write() {
	buf := framePool.Get().(*[]byte)
	for {
		batch, ok := c.next()
		if !ok {
			if c.linger() {
				continue
			}
			if cap(*buf) <= 4*maxFrame {
				framePool.Put(buf) // a rare huge buffer is not kept
			}
			if c.idle() {
				return
			}
			buf = framePool.Get().(*[]byte)
			continue
		}
		data := append((*buf)[:0], '[')
		for i, it := range batch {
			if i > 0 {
				data = append(data, ',')
			}
			data = append(data, it.data...)
			if c.cursor == nil {
				continue
			}
			switch it.kind {
			case itemMessage, itemJoined:
				c.cursor[it.channel] = it.pos
			case itemLeft:
				delete(c.cursor, it.channel)
			}
		}
		data = append(data, ']')
		*buf = data
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()

		// The hub's sweep cancels writeCtx if this write outlasts the
		// write timeout: no timer per write.
		start := c.hub.now()
		c.writeSince.Store(start)
		err := c.t.Write(c.writeCtx, Frame{Data: data, cursor: c.cursor})
		// If the sweep has taken this write for late, writeSince is -1
		// and writeCtx is ending: the connection closes.
		c.writeSince.CompareAndSwap(start, 0)
		if err != nil {
			ce := CloseError{CloseAbnormal, "write failed: " + err.Error()}
			if context.Cause(c.writeCtx) == errWriteTimeout {
				ce.Reason = "write timed out"
			}
			errors.As(err, &ce)
			c.close(ce, false)
			framePool.Put(buf)
			c.idle() // closing at once: there is nothing more to write
			return
		}
	}
}

// linger waits until more work arrives, reporting true, or until the
// hub's next idle sweep or the connection closes, reporting false.
func (c *Conn) linger() bool {
	sweep := c.hub.idleSweep()
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if closing {
		return false
	}
	select {
	case <-c.wake:
		return true
	case <-sweep:
		return false
	}
}

// idle ends the writer's run unless more work has arrived since next
// found none, and reports whether it did.
func (c *Conn) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hasWork() {
		return false
	}
	c.writing = false
	// An idle connection keeps no large slices.
	if cap(c.queue) > 16 {
		c.queue = nil
	}
	if cap(c.spare) > 16 {
		c.spare = nil
	}
	if c.writerIdle != nil {
		close(c.writerIdle)
		c.writerIdle = nil
	}
	return true
}

// next takes up to a frame's worth of what is queued. It reports false
// when there is nothing to write.
func (c *Conn) next() ([]item, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hasWork() {
		return nil, false
	}

	n, size := 0, 0
	for n < len(c.queue) && (n == 0 || size+len(c.queue[n].data) <= maxFrame) {
		size += len(c.queue[n].data)
		n++
	}
	batch := append(c.spare[:0], c.queue[:n]...)
	c.spare = nil
	rest := copy(c.queue, c.queue[n:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
	c.queued -= size
	if len(c.queue) == 0 {
		// Channels that lost messages and got none since hear of it now.
		for name := range c.lagged {
			batch = append(batch, item{data: newMessage("gap", 0).str("channel", name).end()})
		}
		clear(c.lagged)
	}
	return batch, true
}

// errWriteTimeout ends a write that outlasted Options.WriteTimeout.
var errWriteTimeout = errors.New("realtime: write timed out")

// expireWrites cancels the writes that began more than the write timeout
// before now (on the hub's clock). A write is taken for late by swapping
// its start for -1, so that one that ends meanwhile, and the next write,
// are left alone.
func (h *Hub) expireWrites(now int64) {
	deadline := now - int64(h.opts.WriteTimeout)
	var late []*Conn
	h.mu.RLock()
	for _, c := range h.conns {
		if since := c.writeSince.Load(); since > 0 && since < deadline && c.writeSince.CompareAndSwap(since, -1) {
			late = append(late, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range late {
		c.cancelWrites(errWriteTimeout)
	}
}
