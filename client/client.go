// Package client is the Go client of a realtime hub: for services that
// take part in channels, for command-line tools, and for tests.
//
// A Client speaks the protocol in PROTOCOL.md over WebSocket, Server-Sent
// Events or long-polling, with the same API. Calls that send a command
// (Join, Leave, Publish, Send, Ping) wait for the server's reply and
// return its refusal as a *ServerError. Everything else the server sends
// (channel messages, direct messages, gap notices, joins and leaves the
// server made) comes out of Receive, in order.
//
// With Options.Reconnect, a Client whose connection drops dials again
// with backoff and resumes every channel from the last message it
// received: Receive then reports "disconnected", "connected" and, per
// channel, a "joined" event that says whether nothing was lost.
package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/realtimekit/realtime"
)

// Transports a Client can use.
const (
	WebSocket = "websocket"
	SSE       = "sse"
	LongPoll  = "longpoll"
)

// Options configures Dial. The zero value of every field means its
// default; nil means all defaults.
type Options struct {
	// Transport is WebSocket (the default), SSE or LongPoll, and the URL
	// given to Dial is that transport's endpoint; or Auto, and the URL is
	// where the hub is mounted (realtime.NewHandler), whose transports the
	// client negotiates and falls back through, as the browser client
	// does.
	Transport string

	// Header is sent with every request, for example to authenticate.
	Header http.Header

	// HTTPClient makes the requests. The default, nil, is a client of its
	// own with no timeout (streams and polls are long).
	HTTPClient *http.Client

	// Buffer is how many events Receive may fall behind before the client
	// stops reading from the network. Replies wait behind those events, so
	// calls such as Publish block too until Receive catches up, and the
	// server may close the connection as a slow consumer. The default, 0,
	// is 1024.
	Buffer int

	// ReadLimit bounds the size of a server frame. The default, 0, is
	// 16 MiB.
	ReadLimit int64

	// Reconnect makes the client dial again when its connection drops
	// (not when Close ends it, nor when the server ends it with a code
	// that forbids coming back: 4000 slow consumer excepted, which asks to
	// come back). Delays grow from MinBackoff to MaxBackoff, with full
	// jitter. Defaults: 100 ms and 5 s.
	Reconnect              bool
	MinBackoff, MaxBackoff time.Duration
}

// Event is something the server sent that is not a reply, or a change of
// the connection:
//
//   - "message": a channel message; "direct": a payload for this
//     connection alone; "gap": a channel lost messages on the way;
//   - "joined", "left": a join or leave the server made, or, after a
//     reconnect, a resumed channel (Resumed set; Recovered tells whether
//     every missed message follows);
//   - "error": an error not tied to a call;
//   - "disconnected" (Err says why) and "connected": the connection
//     dropped and came back, with Options.Reconnect.
type Event struct {
	Type      string
	Channel   string
	Data      []byte
	Position  realtime.Position
	Reason    string
	Resumed   bool
	Recovered bool
	Err       error
}

// ServerError is a command the server refused, with the error code of
// PROTOCOL.md (such as "forbidden" or "bad_channel").
type ServerError struct {
	Code    string
	Message string
	Channel string
}

func (e *ServerError) Error() string {
	s := "realtime server: " + e.Code
	if e.Channel != "" {
		s += " (channel " + e.Channel + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// ErrDisconnected is returned by calls made while the connection is down
// and the client is dialling again.
var ErrDisconnected = errors.New("realtime client: disconnected")

// Client is one connection to a hub. It is safe for concurrent use,
// except that Receive is meant for one goroutine. Dial starts one
// goroutine that reads from the network (and reconnects); Close ends it.
type Client struct {
	url    string
	opts   Options
	events chan Event

	mu        sync.Mutex
	link      link // nil while reconnecting
	id        string
	transport string // of link
	nextID    uint64
	pending   map[uint64]chan reply
	positions map[string]realtime.Position // channels joined, last position

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{}
	// err is why the client ended; set before done is closed.
	err error
}

type reply struct {
	msg wireMessage
	err error
}

// wireMessage is a server message, as PROTOCOL.md describes it.
type wireMessage struct {
	Type      string          `json:"type"`
	ID        uint64          `json:"id"`
	Conn      string          `json:"conn"`
	Session   string          `json:"session"`
	Channel   string          `json:"channel"`
	Epoch     string          `json:"epoch"`
	Offset    uint64          `json:"offset"`
	Data      json.RawMessage `json:"data"`
	B64       *string         `json:"b64"`
	Code      json.RawMessage `json:"code"` // a string, or a number in "close"
	Message   string          `json:"message"`
	Reason    string          `json:"reason"`
	Recovered *bool           `json:"recovered"`
}

func (m *wireMessage) position() realtime.Position {
	return realtime.Position{Epoch: m.Epoch, Offset: m.Offset}
}

func (m *wireMessage) errorCode() string {
	var s string
	json.Unmarshal(m.Code, &s)
	return s
}

// Dial connects to the hub endpoint at url for the chosen transport (for
// a hub mounted with realtime.NewHandler at /realtime/: .../realtime/ws,
// .../realtime/sse or .../realtime/poll) and waits for the server's
// welcome. ctx bounds the dial alone.
func Dial(ctx context.Context, url string, opts *Options) (*Client, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Transport == "" {
		o.Transport = WebSocket
	}
	if o.Buffer <= 0 {
		o.Buffer = 1024
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 16 << 20
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(5*time.Second, o.MinBackoff)
	}
	c := &Client{
		url:       url,
		opts:      o,
		events:    make(chan Event, o.Buffer),
		pending:   make(map[uint64]chan reply),
		positions: make(map[string]realtime.Position),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	l, welcome, transport, err := c.dial(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("realtime client: dial: %w", err)
	}
	c.link, c.id, c.transport = l, welcome.Conn, transport
	go c.run(l)
	return c, nil
}

// dial opens a link, negotiating under Auto, and reads up to the
// welcome. It returns the link's transport too.
func (c *Client) dial(ctx context.Context, cursor string) (link, wireMessage, string, error) {
	if c.opts.Transport == Auto {
		return c.dialAuto(ctx, cursor)
	}
	l, welcome, err := c.dialTransport(ctx, c.opts.Transport, c.url, cursor)
	return l, welcome, c.opts.Transport, err
}

// dialTransport opens a link of transport to its endpoint u and reads up
// to the welcome.
func (c *Client) dialTransport(ctx context.Context, transport, u, cursor string) (link, wireMessage, error) {
	var l link
	var err error
	switch transport {
	case WebSocket:
		l, err = dialWebSocket(ctx, u, &c.opts)
	case SSE:
		l, err = dialSSE(ctx, u, &c.opts, cursor)
	case LongPoll:
		l, err = dialPoll(ctx, u, &c.opts, cursor)
	default:
		err = fmt.Errorf("unknown transport %q", transport)
	}
	if err != nil {
		return nil, wireMessage{}, err
	}
	welcome, err := l.welcome(ctx)
	if err != nil {
		l.close()
		return nil, wireMessage{}, err
	}
	return l, welcome, nil
}

// Transport returns the transport of the connection: the one Options
// named, or, under Auto, the one negotiation found. It may change when
// the client reconnects.
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transport
}

// ID returns the connection's ID on the server. It changes when the
// client reconnects.
func (c *Client) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// Join joins channel and returns the position the membership starts from.
func (c *Client) Join(ctx context.Context, channel string) (realtime.Position, error) {
	m, err := c.request(ctx, command{typ: "join", channel: channel})
	if err != nil {
		return realtime.Position{}, err
	}
	return m.position(), nil
}

// Leave leaves channel.
func (c *Client) Leave(ctx context.Context, channel string) error {
	_, err := c.request(ctx, command{typ: "leave", channel: channel})
	return err
}

// Publish publishes data to channel and returns the position it got.
// Subscribers receive data byte for byte.
func (c *Client) Publish(ctx context.Context, channel string, data []byte) (realtime.Position, error) {
	m, err := c.request(ctx, command{typ: "publish", channel: channel, payload: data, hasPayload: true})
	if err != nil {
		return realtime.Position{}, err
	}
	return m.position(), nil
}

// Send hands data to the application on the server.
func (c *Client) Send(ctx context.Context, data []byte) error {
	_, err := c.request(ctx, command{typ: "send", payload: data, hasPayload: true})
	return err
}

// Ping asks the server for a pong and waits for it.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.request(ctx, command{typ: "ping"})
	return err
}

// Receive returns the next event, waiting until there is one, ctx ends or
// the client has ended and every event before the end was received.
// After the end it returns an error carrying the close code, which
// realtime.CloseCodeOf reads.
func (c *Client) Receive(ctx context.Context) (Event, error) {
	select {
	case ev := <-c.events:
		return ev, nil
	default:
	}
	select {
	case ev := <-c.events:
		return ev, nil
	case <-c.done:
		select {
		case ev := <-c.events:
			return ev, nil
		default:
			return Event{}, c.err
		}
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// Done returns a channel closed when the client has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection normally and waits for the client's
// goroutine to end. It may be called more than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.mu.Lock()
		l := c.link
		c.mu.Unlock()
		if l != nil {
			l.close()
		}
	})
	<-c.done
	return nil
}

// command is a client command to encode.
type command struct {
	typ        string
	channel    string
	payload    []byte
	hasPayload bool
	since      *realtime.Position
}

// encode writes the command as JSON by hand: encoding/json would compact
// a payload, and payloads travel byte for byte.
func (cmd command) encode(id uint64) []byte {
	b := []byte(`{"type":"` + cmd.typ + `"`)
	if id != 0 {
		b = append(b, `,"id":`...)
		b = strconv.AppendUint(b, id, 10)
	}
	if cmd.channel != "" {
		b = append(b, `,"channel":`...)
		b = appendJSON(b, cmd.channel)
	}
	if cmd.since != nil {
		b = append(b, `,"since":{"epoch":`...)
		b = appendJSON(b, cmd.since.Epoch)
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, cmd.since.Offset, 10)
		b = append(b, '}')
	}
	if cmd.hasPayload {
		if isInlineJSON(cmd.payload) {
			b = append(b, `,"data":`...)
			b = append(b, cmd.payload...)
		} else {
			b = append(b, `,"b64":"`...)
			b = base64.StdEncoding.AppendEncode(b, cmd.payload)
			b = append(b, '"')
		}
	}
	return append(b, '}')
}

func appendJSON(b []byte, s string) []byte {
	enc, _ := json.Marshal(s)
	return append(b, enc...)
}

// request sends cmd with a new id and waits for its reply.
func (c *Client) request(ctx context.Context, cmd command) (wireMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	l := c.link
	if l == nil {
		c.mu.Unlock()
		select {
		case <-c.done:
			return wireMessage{}, c.err
		default:
			return wireMessage{}, ErrDisconnected
		}
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	if err := l.write(ctx, cmd.encode(id)); err != nil {
		return wireMessage{}, fmt.Errorf("realtime client: write: %w", err)
	}
	select {
	case r := <-ch:
		return r.msg, r.err
	case <-c.done:
		return wireMessage{}, c.err
	case <-ctx.Done():
		return wireMessage{}, ctx.Err()
	}
}

// run is the client's goroutine: it reads from the link, routes replies
// and events, and reconnects.
func (c *Client) run(l link) {
	defer close(c.done)
	for {
		err := c.readLoop(l)
		l.close()
		c.failPending(err)
		select {
		case <-c.closing:
			c.err = realtime.CloseError{Code: realtime.CloseNormal, Reason: "closed by client"}
			return
		default:
		}
		if !c.opts.Reconnect || !mayReconnect(err) {
			c.err = err
			return
		}
		if !c.emit(Event{Type: "disconnected", Err: err}) {
			continue
		}
		if l = c.reconnect(l); l == nil {
			c.err = realtime.CloseError{Code: realtime.CloseNormal, Reason: "closed by client"}
			return
		}
	}
}

// mayReconnect reports whether the server allows a client to come back
// after err.
func mayReconnect(err error) bool {
	switch realtime.CloseCodeOf(err) {
	case realtime.CloseDisconnected, realtime.ClosePolicyViolation, realtime.CloseTooLarge:
		return false
	}
	return true
}

func (c *Client) readLoop(l link) error {
	for {
		msgs, err := l.read()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if !c.dispatch(m) {
				return realtime.CloseError{Code: realtime.CloseNormal, Reason: "closed by client"}
			}
		}
	}
}

func (c *Client) failPending(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.link = nil
	for id, ch := range c.pending {
		ch <- reply{err: err}
		delete(c.pending, id)
	}
}

// reconnect dials until it succeeds or the client closes, then resumes
// every channel. It returns the new link, or nil once closed.
func (c *Client) reconnect(old link) link {
	delay := c.opts.MinBackoff
	for attempt := 0; ; attempt++ {
		wait := time.Duration(rand.Int64N(int64(delay) + 1)) // full jitter
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.closing:
			t.Stop()
			return nil
		}
		delay = min(2*delay, c.opts.MaxBackoff)

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if c.opts.Transport == Auto {
			ctx, cancel = context.WithTimeout(context.Background(), 3*attemptTimeout)
		}
		cursor := old.cursor()
		l, welcome, transport, err := c.dial(ctx, cursor)
		cancel()
		if err != nil {
			continue
		}
		c.mu.Lock()
		c.link, c.id, c.transport = l, welcome.Conn, transport
		positions := make(map[string]realtime.Position, len(c.positions))
		for name, p := range c.positions {
			positions[name] = p
		}
		c.mu.Unlock()
		select {
		case <-c.closing:
			l.close()
			return nil
		default:
		}
		c.emit(Event{Type: "connected"})
		// A link that resumes by cursor did so if there was one; without
		// one (the old link was a WebSocket, or got no event yet), the
		// client joins again with its positions, as a WebSocket does.
		if !l.resumesByCursor() || cursor == "" {
			for name, p := range positions {
				pos := p
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				l.write(ctx, command{typ: "join", channel: name, since: &pos}.encode(0))
				cancel()
			}
		}
		return l
	}
}

// dispatch routes one message; it reports false if the client closed
// while waiting for room in the event buffer.
func (c *Client) dispatch(m wireMessage) bool {
	c.track(m)
	if m.ID != 0 {
		// A reply: to its call, or nowhere if the call gave up waiting.
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			var err error
			if m.Type == "error" {
				err = &ServerError{Code: m.errorCode(), Message: m.Message, Channel: m.Channel}
			}
			ch <- reply{msg: m, err: err}
		}
		return true
	}
	ev, ok := toEvent(m)
	if !ok {
		return true
	}
	return c.emit(ev)
}

// track keeps the last position of every joined channel, for resuming.
func (c *Client) track(m wireMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch m.Type {
	case "joined", "message":
		c.positions[m.Channel] = m.position()
	case "left":
		delete(c.positions, m.Channel)
	case "error":
		if m.ID == 0 && m.Channel != "" {
			delete(c.positions, m.Channel) // a resumed join was refused
		}
	}
}

func (c *Client) emit(ev Event) bool {
	select {
	case c.events <- ev:
		return true
	case <-c.closing:
		return false
	}
}

func toEvent(m wireMessage) (Event, bool) {
	ev := Event{
		Type:     m.Type,
		Channel:  m.Channel,
		Position: m.position(),
		Reason:   m.Reason,
	}
	switch m.Type {
	case "message", "direct":
		data, err := payloadOf(m)
		if err != nil {
			ev.Type = "error"
			ev.Err = &ServerError{Code: "bad_frame", Message: err.Error(), Channel: m.Channel}
			return ev, true
		}
		ev.Data = data
	case "error":
		ev.Err = &ServerError{Code: m.errorCode(), Message: m.Message, Channel: m.Channel}
	case "joined":
		if m.Recovered != nil {
			ev.Resumed, ev.Recovered = true, *m.Recovered
		}
	case "gap", "left":
	default:
		return ev, false // replies to forgotten calls and unknown types
	}
	return ev, true
}

func payloadOf(m wireMessage) ([]byte, error) {
	if m.B64 != nil {
		return base64.StdEncoding.DecodeString(*m.B64)
	}
	return []byte(m.Data), nil
}

// closeMessage turns a server "close" message into the error the link
// ends with.
func closeMessage(m wireMessage) error {
	code, _ := strconv.Atoi(string(m.Code))
	return realtime.CloseError{Code: realtime.CloseCode(code), Reason: m.Reason}
}

// isInlineJSON mirrors the server's choice between data and b64.
func isInlineJSON(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	switch p[0] {
	case ' ', '\t', '\r', '\n':
		return false
	}
	switch p[len(p)-1] {
	case ' ', '\t', '\r', '\n':
		return false
	}
	for _, b := range p {
		if b == '\n' || b == '\r' {
			return false
		}
	}
	return utf8.Valid(p) && json.Valid(p)
}
