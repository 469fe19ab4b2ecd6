package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// epoch is the load generator's clock origin: payloads carry the
// microseconds since it at which they were published.
var epoch = time.Now()

func nowMicros() int64 { return int64(time.Since(epoch) / time.Microsecond) }

// marker starts every benchmark payload inside any server's frames: the
// payload is the JSON string "~<channel>:<seq>:<micros>;<padding>".
var marker = []byte(`"~`)

// payload builds a benchmark payload of exactly size bytes (or the
// shortest that holds its header).
func payload(channel int, seq int64, size int) []byte {
	b := make([]byte, 0, size)
	b = append(b, marker...)
	b = strconv.AppendInt(b, int64(channel), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, nowMicros(), 10)
	b = append(b, ';')
	for len(b) < size-1 {
		b = append(b, 'x')
	}
	return append(b, '"')
}

// totalRecv counts every delivery the load generator accepted, across
// clients, for progress.
var totalRecv atomic.Int64

// client is one simulated subscriber and what it has received.
type client struct {
	chans []int32    // channel indices it joins
	last  []int64    // highest seq received per entry of chans and lane
	bits  [][]uint64 // seqs received per entry of chans

	recv      atomic.Int64 // deliveries not seen before
	dup       atomic.Int64 // deliveries seen before, or of a channel not joined
	reordered atomic.Int64 // deliveries below the highest seq seen from their publisher
	lastAt    atomic.Int64 // micros of the last delivery

	mu     sync.Mutex
	record bool
	lat    []uint32 // delivery latencies in microseconds while record

	acks      atomic.Int32
	wantAcks  int32
	ready     chan struct{}
	readyOnce sync.Once

	closed   atomic.Bool
	closeErr atomic.Value
	stop     func()
}

// orderLanes is how many publishers share a channel: seq s comes from
// publisher s % orderLanes, and only each publisher's own messages have
// an order to keep.
var orderLanes = 1

func newClient(chans []int32) *client {
	return &client{chans: chans, last: make([]int64, len(chans)*orderLanes), bits: make([][]uint64, len(chans)), ready: make(chan struct{})}
}

// consume counts the join acknowledgements (needle) and benchmark
// payloads in one frame or response body received at now.
func (c *client) consume(frame []byte, needle []byte, now int64) {
	if c.acks.Load() < c.wantAcks && len(needle) > 0 {
		if n := bytes.Count(frame, needle); n > 0 && c.acks.Add(int32(n)) >= c.wantAcks {
			c.markReady()
		}
	}
	var got int64
	for {
		i := bytes.Index(frame, marker)
		if i < 0 {
			break
		}
		frame = frame[i+len(marker):]
		ch, n := atoi(frame)
		frame = frame[n+1:]
		seq, n := atoi(frame)
		frame = frame[n+1:]
		sent, n := atoi(frame)
		frame = frame[n:]
		k := c.index(int32(ch))
		if k < 0 {
			c.dup.Add(1) // a message of a channel it never joined
			continue
		}
		if c.seen(k, seq) {
			c.dup.Add(1)
			continue
		}
		lane := k*orderLanes + int(seq%int64(orderLanes))
		if seq < c.last[lane] {
			c.reordered.Add(1)
		}
		c.last[lane] = max(c.last[lane], seq)
		got++
		if c.record {
			c.mu.Lock()
			if c.record {
				c.lat = append(c.lat, uint32(max(0, now-sent)))
			}
			c.mu.Unlock()
		}
	}
	if got > 0 {
		c.recv.Add(got)
		c.lastAt.Store(now)
		totalRecv.Add(got)
	}
}

// seen marks seq of the k-th channel as received, reporting whether it
// was already.
func (c *client) seen(k int, seq int64) bool {
	w := int(seq / 64)
	if w >= len(c.bits[k]) {
		c.bits[k] = append(c.bits[k], make([]uint64, w+1-len(c.bits[k])+len(c.bits[k])/2)...)
	}
	bit := uint64(1) << (seq % 64)
	if c.bits[k][w]&bit != 0 {
		return true
	}
	c.bits[k][w] |= bit
	return false
}

func (c *client) index(ch int32) int {
	for k, x := range c.chans {
		if x == ch {
			return k
		}
	}
	return -1
}

func (c *client) markReady() { c.readyOnce.Do(func() { close(c.ready) }) }

// startRecording clears and starts the latency record.
func (c *client) startRecording() {
	c.mu.Lock()
	c.lat = c.lat[:0]
	c.record = true
	c.mu.Unlock()
}

// takeLatencies stops recording and hands over what was recorded.
func (c *client) takeLatencies() []uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.record = false
	l := c.lat
	c.lat = nil
	return l
}

func (c *client) ended(err error) {
	if err != nil {
		c.closeErr.Store(err.Error())
	}
	c.closed.Store(true)
	c.markReady()
}

func atoi(b []byte) (int64, int) {
	var v int64
	i := 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	return v, i
}

// protocol is how the load generator talks to one kind of server.
type protocol struct {
	name string
	// dial connects c to the server at addr from source address src,
	// sends its joins and starts its reader; c.ready closes once the
	// joins are acknowledged.
	dial func(ctx context.Context, addr string, src int, c *client) error
}

// sources are the loopback addresses clients dial from, so that many
// connections do not run out of ephemeral ports.
const sources = 19

func sourceAddr(src int) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+src%sources))}
}

var (
	httpClientsOnce sync.Once
	httpClients     [sources]*http.Client
)

// httpClient returns the pooled HTTP client for a source address.
func httpClient(src int) *http.Client {
	httpClientsOnce.Do(func() {
		for i := range httpClients {
			d := &net.Dialer{LocalAddr: sourceAddr(i), Timeout: 10 * time.Second}
			httpClients[i] = &http.Client{Transport: &http.Transport{
				DialContext:         d.DialContext,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     30 * time.Second,
			}}
		}
	})
	return httpClients[src%sources]
}

// readFrame reads one WebSocket message into buf.
func readFrame(ctx context.Context, ws *websocket.Conn, buf []byte) ([]byte, error) {
	_, r, err := ws.Reader(ctx)
	if err != nil {
		return buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// wsProtocol is a WebSocket protocol: hello is sent once connected,
// needle counts join acknowledgements and acks is how many are due.
func wsProtocol(name, path, subprotocol string, hello func(c *client) []byte, needle string, acks func(c *client) int32, pong bool) protocol {
	return protocol{name: name, dial: func(ctx context.Context, addr string, src int, c *client) error {
		var subs []string
		if subprotocol != "" {
			subs = []string{subprotocol}
		}
		ws, _, err := websocket.Dial(ctx, "ws://"+addr+path, &websocket.DialOptions{
			HTTPClient:   wsHTTPClient(src),
			Subprotocols: subs,
		})
		if err != nil {
			return err
		}
		ws.SetReadLimit(16 << 20)
		c.wantAcks = acks(c)
		c.stop = func() { ws.CloseNow() }
		if c.wantAcks == 0 {
			c.markReady()
		}
		if h := hello(c); h != nil {
			if err := ws.Write(ctx, websocket.MessageText, h); err != nil {
				ws.CloseNow()
				return err
			}
		}
		go func() {
			buf := make([]byte, 0, 4096)
			ctx := context.Background()
			for {
				var err error
				buf, err = readFrame(ctx, ws, buf)
				if err != nil {
					c.ended(err)
					return
				}
				if pong && bytes.Equal(buf, []byte("{}")) {
					ws.Write(ctx, websocket.MessageText, []byte("{}"))
					continue
				}
				c.consume(buf, []byte(needle), nowMicros())
			}
		}()
		return nil
	}}
}

var (
	wsClientsOnce sync.Once
	wsClients     [sources]*http.Client
)

// wsHTTPClient dials WebSocket upgrades from a source address.
func wsHTTPClient(src int) *http.Client {
	wsClientsOnce.Do(func() {
		for i := range wsClients {
			d := &net.Dialer{LocalAddr: sourceAddr(i), Timeout: 10 * time.Second}
			wsClients[i] = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		}
	})
	return wsClients[src%sources]
}

func channelName(ch int32) string { return "c" + strconv.Itoa(int(ch)) }

// realtimeJoins is this project's join frame for every channel of c.
func realtimeJoins(c *client) []byte {
	if len(c.chans) == 0 {
		return nil
	}
	b := []byte{'['}
	for i, ch := range c.chans {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"type":"join","id":%d,"channel":"%s"}`, i+1, channelName(ch))
	}
	return append(b, ']')
}

func simpleJoins(c *client) []byte {
	if len(c.chans) == 0 {
		return nil
	}
	names := make([]string, len(c.chans))
	for i, ch := range c.chans {
		names[i] = channelName(ch)
	}
	return []byte("join " + strings.Join(names, ","))
}

func centrifugeHello(c *client) []byte {
	b := []byte(`{"id":1,"connect":{}}`)
	for i, ch := range c.chans {
		b = fmt.Appendf(b, "\n"+`{"id":%d,"subscribe":{"channel":"%s"}}`, i+2, channelName(ch))
	}
	return b
}

func perChannel(c *client) int32 { return int32(len(c.chans)) }

func onePerFrame(c *client) int32 { return int32(min(1, len(c.chans))) }

var protocols = map[string]protocol{
	"realtime-ws": wsProtocol("realtime-ws", "/realtime/ws", "realtime.v1",
		realtimeJoins, `"type":"joined"`, perChannel, false),
	"centrifuge": wsProtocol("centrifuge", "/connection/websocket", "",
		centrifugeHello, `"subscribe":{`, perChannel, true),
	"melody":   wsProtocol("melody", "/ws", "", simpleJoins, `"joined":`, onePerFrame, false),
	"coalesce": wsProtocol("coalesce", "/ws", "", simpleJoins, `"joined":`, onePerFrame, false),
	"floor": wsProtocol("floor", "/ws", "", func(*client) []byte { return nil }, "",
		func(*client) int32 { return 0 }, false),
	"realtime-sse":  {name: "realtime-sse", dial: dialSSE},
	"realtime-poll": {name: "realtime-poll", dial: dialPoll},
}

// sessionOf finds welcome.session in a frame.
func sessionOf(frame []byte) string {
	_, rest, ok := bytes.Cut(frame, []byte(`"session":"`))
	if !ok {
		return ""
	}
	s, _, _ := bytes.Cut(rest, []byte(`"`))
	return string(s)
}

// postCommands sends this project's command frame over SSE or long-poll.
func postCommands(ctx context.Context, src int, url, session string, frame []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(frame))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Realtime-Session", session)
	resp, err := httpClient(src).Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("commands: %s", resp.Status)
	}
	return nil
}

func dialRaw(ctx context.Context, addr string, src int) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: sourceAddr(src), Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// dialSSE opens this project's event stream over a raw HTTP/1.1
// connection and joins by POST.
func dialSSE(ctx context.Context, addr string, src int, c *client) error {
	conn, err := dialRaw(ctx, addr, src)
	if err != nil {
		return err
	}
	c.stop = func() { conn.Close() }
	if _, err := fmt.Fprintf(conn, "GET /realtime/sse HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", addr); err != nil {
		conn.Close()
		return err
	}
	br := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return err
	}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return fmt.Errorf("sse: %s", resp.Status)
	}
	body := bufio.NewReaderSize(resp.Body, 16<<10)
	c.wantAcks = perChannel(c)
	needle := []byte(`"type":"joined"`)
	sessionc := make(chan string, 1)
	go func() {
		sc := sessionc
		var line []byte
		for {
			var err error
			line, err = readLine(body, line[:0])
			if err != nil {
				c.ended(err)
				if sc != nil {
					close(sc)
				}
				return
			}
			data, ok := bytes.CutPrefix(line, []byte("data: "))
			if !ok {
				continue
			}
			if sc != nil {
				if s := sessionOf(data); s != "" {
					sc <- s
					sc = nil
				}
			}
			c.consume(data, needle, nowMicros())
		}
	}()
	session, ok := <-sessionc
	if !ok {
		return errors.New("sse: stream ended before the welcome")
	}
	c.stop = func() {
		leave(src, "http://"+addr+"/realtime/sse", session)
		conn.Close()
	}
	if c.wantAcks == 0 {
		c.markReady()
		return nil
	}
	return postCommands(ctx, src, "http://"+addr+"/realtime/sse", session, realtimeJoins(c))
}

// readLine reads one line without its end, however long.
func readLine(r *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		part, more, err := r.ReadLine()
		if err != nil {
			return buf, err
		}
		buf = append(buf, part...)
		if !more {
			return buf, nil
		}
	}
}

// dialPoll opens a long-poll session of this project, joins by POST and
// keeps one poll waiting, over one keep-alive HTTP/1.1 connection.
func dialPoll(ctx context.Context, addr string, src int, c *client) error {
	conn, err := dialRaw(ctx, addr, src)
	if err != nil {
		return err
	}
	c.stop = func() { conn.Close() }
	br := bufio.NewReaderSize(conn, 16<<10)
	var body []byte
	get := func(path string) error {
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		body = body[:0]
		buf := bytes.NewBuffer(body)
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		body = buf.Bytes()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("poll: %s: %s", resp.Status, body)
		}
		return nil
	}
	if err := get("/realtime/poll"); err != nil {
		conn.Close()
		return err
	}
	session := sessionOf(body)
	seq, _ := atoi(bytes.TrimPrefix(body, []byte(`{"seq":`)))
	c.stop = func() {
		leave(src, "http://"+addr+"/realtime/poll", session)
		conn.Close()
	}
	c.wantAcks = perChannel(c)
	needle := []byte(`"type":"joined"`)
	if c.wantAcks == 0 {
		c.markReady()
	} else if err := postCommands(ctx, src, "http://"+addr+"/realtime/poll", session, realtimeJoins(c)); err != nil {
		conn.Close()
		return err
	}
	go func() {
		for {
			path := "/realtime/poll?session=" + session + "&ack=" + strconv.FormatInt(seq, 10)
			if err := get(path); err != nil {
				c.ended(err)
				return
			}
			now := nowMicros()
			if s, _ := atoi(bytes.TrimPrefix(body, []byte(`{"seq":`))); s > 0 {
				seq = s
			}
			c.consume(body, needle, now)
			if bytes.Contains(body, []byte(`"type":"close"`)) {
				c.ended(errors.New("poll: session closed"))
				return
			}
		}
	}()
	return nil
}

// connectAll connects n clients, each joining chansOf(i), with at most
// parallel dials in flight, and waits until every join is acknowledged.
func connectAll(ctx context.Context, p protocol, addr string, n int, chansOf func(i int) []int32) ([]*client, time.Duration, error) {
	start := time.Now()
	clients := make([]*client, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range n {
		c := newClient(chansOf(i))
		clients[i] = c
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var err error
			for try := 0; try < 3; try++ {
				dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err = p.dial(dctx, addr, i, c)
				cancel()
				if err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				c.ended(err)
				return
			}
			select {
			case <-c.ready:
			case <-time.After(30 * time.Second):
				firstErr.CompareAndSwap(nil, errors.New("join not acknowledged in 30 s"))
			}
		}()
		if v := firstErr.Load(); v != nil {
			break
		}
	}
	wg.Wait()
	if v := firstErr.Load(); v != nil {
		closeAll(clients)
		return nil, 0, fmt.Errorf("%s: connecting: %v", p.name, v)
	}
	for _, c := range clients {
		if c.closed.Load() {
			closeAll(clients)
			return nil, 0, fmt.Errorf("%s: a client closed while connecting: %v", p.name, c.closeErr.Load())
		}
	}
	return clients, time.Since(start), nil
}

// closeAll ends every client the way its protocol leaves, a few at a
// time.
func closeAll(clients []*client) {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, c := range clients {
		if c == nil || c.stop == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.stop()
		}()
	}
	wg.Wait()
}

// closeIdleHTTP closes the keep-alive connections the load generator's
// HTTP clients hold to the servers (commands, DELETEs, publishes), so
// that a server whose clients have left holds none of them.
func closeIdleHTTP() {
	for _, c := range httpClients {
		if c != nil {
			c.CloseIdleConnections()
		}
	}
	pubClient.CloseIdleConnections()
}

// leave sends this project's DELETE that ends an SSE or long-poll session.
func leave(src int, url, session string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, url, nil)
	if err != nil {
		return
	}
	req.Header.Set("Realtime-Session", session)
	resp, err := httpClient(src).Do(req)
	if err != nil {
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
