package realtime

import (
	"context"
	"errors"
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

// signal wakes the writer. c.mu is held.
func (c *Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// write is the connection's writer goroutine: the only caller of the
// transport's Write. It coalesces what is queued into frames and keeps
// the resume cursor.
func (c *Conn) write(cursor map[string]Position) {
	defer close(c.writerDone)
	var data []byte
	for {
		batch, ok := c.next()
		if !ok {
			return
		}
		data = data[:0]
		data = append(data, '[')
		for i, it := range batch {
			if i > 0 {
				data = append(data, ',')
			}
			data = append(data, it.data...)
			switch it.kind {
			case itemMessage, itemJoined:
				cursor[it.channel] = it.pos
			case itemLeft:
				delete(cursor, it.channel)
			}
		}
		data = append(data, ']')
		clear(batch)
		c.mu.Lock()
		c.spare = batch[:0]
		c.mu.Unlock()

		ctx, cancel := context.WithTimeout(c.writeCtx, c.hub.opts.WriteTimeout)
		err := c.t.Write(ctx, Frame{Data: data, cursor: cursor})
		cancel()
		if err != nil {
			ce := CloseError{CloseAbnormal, "write failed: " + err.Error()}
			errors.As(err, &ce)
			c.close(ce, false)
			return
		}
		if cap(data) > 4*maxFrame {
			data = nil // do not keep a rare huge buffer
		}
	}
}

// next waits for queued messages and takes up to a frame's worth. It
// reports false when the writer should stop.
func (c *Conn) next() ([]item, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue) == 0 && len(c.lagged) == 0 {
		if c.closing {
			return nil, false
		}
		c.mu.Unlock()
		<-c.wake
		c.mu.Lock()
	}
	if c.closing && !c.graceful {
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
