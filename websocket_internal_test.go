package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingConn counts the writes that reach a real connection.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *countingConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// wsFrame encodes one frame the way RFC 6455 lays it out.
func wsFrame(opcode byte, payload []byte, masked bool) (header, body []byte) {
	h := []byte{0x80 | opcode, 0}
	switch n := len(payload); {
	case n < 126:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	if masked {
		h[1] |= 0x80
		h = append(h, 1, 2, 3, 4)
	}
	return h, payload
}

// Frames written the way the WebSocket library writes them (header and
// payload into its small buffer, then a flush) reach the connection whole,
// each in one write, whatever their size.
func TestFrameWriterWritesEachFrameOnce(t *testing.T) {
	sizes := []int{0, 1, 20, 30, 31, 32, 60, 125, 126, 127, 1000, 0xffff, 0x10000, 300 << 10}
	server, peer := net.Pipe()
	conn := &countingConn{Conn: server}
	bw := bufio.NewWriterSize(&frameWriter{conn: conn, left: -1}, wsWriteBuffer)

	var want bytes.Buffer
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	for i, n := range sizes {
		payload := bytes.Repeat([]byte{byte('a' + i)}, n)
		h, body := wsFrame(0x1, payload, false)
		before := conn.count()
		_, err := bw.Write(h)
		require.NoError(t, err)
		_, err = bw.Write(body)
		require.NoError(t, err)
		require.NoError(t, bw.Flush())
		require.Equal(t, 1, conn.count()-before, "writes for a frame of %d bytes", n)
		want.Write(h)
		want.Write(body)
	}
	server.Close()
	require.Equal(t, want.Bytes(), <-got)
}

// Over TCP a frame in two parts goes out by writev; the peer reads the
// frames whole.
func TestFrameWriterOverTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	bw := bufio.NewWriterSize(&frameWriter{conn: conn, left: -1}, wsWriteBuffer)
	var want bytes.Buffer
	for i, n := range []int{0, 40, 126, 5000, 70000} {
		h, body := wsFrame(0x1, bytes.Repeat([]byte{byte('a' + i)}, n), false)
		bw.Write(h)
		bw.Write(body)
		require.NoError(t, bw.Flush())
		want.Write(h)
		want.Write(body)
	}
	conn.Close()
	require.Equal(t, want.Bytes(), <-got)
}

// However a stream of frames is cut into pieces, frameWriter passes every
// byte on, in order.
func FuzzFrameWriter(f *testing.F) {
	f.Add([]byte{0, 5, 1, 200, 2}, uint8(7))
	f.Add([]byte{3, 2, 0, 1}, uint8(1))
	f.Fuzz(func(t *testing.T, spec []byte, cut uint8) {
		// Each pair of spec bytes is one frame: a size class and a size.
		var stream []byte
		for i := 0; i+1 < len(spec) && i < 40; i += 2 {
			n := int(spec[i+1])
			switch spec[i] % 4 {
			case 1:
				n += 126
			case 2:
				n = n*300 + 0x10000
			case 3:
				n = 0
			}
			h, body := wsFrame(0x2, bytes.Repeat([]byte{spec[i+1]}, n), spec[i]&4 != 0)
			stream = append(append(stream, h...), body...)
		}
		var out bytes.Buffer
		w := &frameWriter{conn: &bufferConn{out: &out}, left: -1}
		step := int(cut) + 1
		for p := stream; len(p) > 0; {
			k := min(step, len(p))
			n, err := w.Write(p[:k])
			require.NoError(t, err)
			require.Equal(t, k, n)
			p = p[k:]
			step = step*7%251 + 1
		}
		require.Equal(t, stream, out.Bytes())
		require.Zero(t, w.n, "bytes held after the last frame")
		require.EqualValues(t, -1, w.left, "a frame left open")
	})
}

// bufferConn is a net.Conn that only collects what is written to it.
type bufferConn struct {
	net.Conn
	out *bytes.Buffer
}

func (c *bufferConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// A ping asked for while part of a frame has gone out follows that frame;
// between frames it goes out at once; after a close frame, not at all.
func TestFrameWriterPingsBetweenFrames(t *testing.T) {
	var out bytes.Buffer
	w := &frameWriter{conn: &bufferConn{out: &out}, left: -1}
	big := bytes.Repeat([]byte{'x'}, 1000)
	h, _ := wsFrame(0x1, big, false)

	require.NoError(t, w.ping())
	require.Equal(t, pingFrame, out.Bytes(), "between frames")
	out.Reset()

	_, err := w.Write(h)
	require.NoError(t, err)
	_, err = w.Write(big[:600]) // a large piece: out at once
	require.NoError(t, err)
	require.Equal(t, len(h)+600, out.Len())
	require.NoError(t, w.ping())
	require.Equal(t, len(h)+600, out.Len(), "a ping inside a frame")
	_, err = w.Write(big[600:])
	require.NoError(t, err)
	want := append(append(append([]byte{}, h...), big...), pingFrame...)
	require.Equal(t, want, out.Bytes())
	out.Reset()

	ch, cb := wsFrame(0x8, []byte{0x03, 0xe8}, false)
	_, err = w.Write(append(ch, cb...))
	require.NoError(t, err)
	require.NoError(t, w.ping())
	require.Equal(t, append(ch, cb...), out.Bytes(), "a ping after the close frame")
}

// cursorTransport keeps the cursor of the last frame written to it.
type cursorTransport struct {
	mu     sync.Mutex
	cursor string
	data   strings.Builder
}

func (t *cursorTransport) Name() string { return "cursor" }

func (t *cursorTransport) Write(_ context.Context, f Frame) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cursor = f.Cursor()
	t.data.Write(f.Data)
	return nil
}

func (t *cursorTransport) Close(CloseCode, string) error { return nil }

// last returns the last cursor, once a channel message has arrived.
func (t *cursorTransport) last() (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cursor, strings.Contains(t.data.String(), `"type":"message"`)
}

// A connection whose transport says NoCursor keeps no resume cursor: its
// frames carry none. Others carry the position of what they delivered.
func TestNoCursor(t *testing.T) {
	h, err := New(nil)
	require.NoError(t, err)
	defer h.Close()
	ctx := context.Background()
	with, without := &cursorTransport{}, &cursorTransport{}
	for _, tr := range []struct {
		t        *cursorTransport
		noCursor bool
	}{{with, false}, {without, true}} {
		c, err := h.Connect(tr.t, ConnInfo{NoCursor: tr.noCursor})
		require.NoError(t, err)
		require.NoError(t, c.Join(ctx, "room"))
	}
	_, err = h.Publish(ctx, "room", []byte(`1`))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, a := with.last()
		_, b := without.last()
		return a && b
	}, 5*time.Second, time.Millisecond)
	c, _ := with.last()
	pos, err := parseCursor(c, 10)
	require.NoError(t, err)
	assert.EqualValues(t, 1, pos["room"].Offset)
	c, _ = without.last()
	assert.Empty(t, c)
}

// writeMessage writes whole text frames with the shortest length encoding;
// while a frame of the library's own is half out it declines, and after a
// close frame it refuses.
func TestFrameWriterWriteMessage(t *testing.T) {
	var out bytes.Buffer
	w := &frameWriter{conn: &bufferConn{out: &out}, left: -1}
	for _, n := range []int{0, 125, 126, 0xffff, 0x10000} {
		out.Reset()
		p := bytes.Repeat([]byte{'m'}, n)
		require.NoError(t, w.writeMessage(p))
		h, body := wsFrame(0x1, p, false)
		require.Equal(t, append(h, body...), out.Bytes(), "a message of %d bytes", n)
	}

	big := bytes.Repeat([]byte{'x'}, 1000)
	h, _ := wsFrame(0x2, big, false)
	_, err := w.Write(h)
	require.NoError(t, err)
	_, err = w.Write(big[:600]) // part of the frame goes out
	require.NoError(t, err)
	require.ErrorIs(t, w.writeMessage([]byte(`[1]`)), errFrameOut)
	_, err = w.Write(big[600:])
	require.NoError(t, err)
	require.NoError(t, w.writeMessage([]byte(`[1]`)))

	ch, cb := wsFrame(0x8, []byte{0x03, 0xe8}, false)
	_, err = w.Write(append(ch, cb...))
	require.NoError(t, err)
	require.ErrorIs(t, w.writeMessage([]byte(`[2]`)), net.ErrClosed)
}
