// Package client is the Go client of a realtime hub: for services that
// take part in channels, for command-line tools, and for tests.
//
// A Client speaks the protocol in PROTOCOL.md over WebSocket. Calls that
// send a command (Join, Leave, Publish, Send, Ping) wait for the server's
// reply and return its refusal as a *ServerError. Everything else the
// server sends (channel messages, direct messages, gap notices, joins and
// leaves the server made) comes out of Receive, in order.
package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/coder/websocket"

	"github.com/realtimekit/realtime"
)

// Options configures Dial. The zero value of every field means its
// default; nil means all defaults.
type Options struct {
	// Header is sent with the opening request, for example to
	// authenticate.
	Header http.Header

	// HTTPClient opens the connection. The default, nil, is
	// http.DefaultClient.
	HTTPClient *http.Client

	// Buffer is how many events Receive may fall behind before the client
	// stops reading from the network. The server then sees a slow
	// consumer. The default, 0, is 1024.
	Buffer int

	// ReadLimit bounds the size of a server frame. The default, 0, is
	// 16 MiB.
	ReadLimit int64
}

// Event is something the server sent that is not a reply: a channel
// message ("message"), a payload for this connection alone ("direct"), a
// notice that a channel lost messages on the way ("gap"), a join or leave
// the server made ("joined", "left"), or an error not tied to a command
// ("error").
type Event struct {
	Type     string
	Channel  string
	Data     []byte
	Position realtime.Position
	// Reason is why the server removed the connection from Channel, for
	// "left" events.
	Reason string
	// Err is the error, for "error" events.
	Err *ServerError
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

// Client is one connection to a hub. It is safe for concurrent use,
// except that Receive is meant for one goroutine. Dial starts one
// goroutine that reads from the network; Close ends it.
type Client struct {
	ws     *websocket.Conn
	id     string
	events chan Event

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	readDone  chan struct{}
	// err is why the connection ended; set before readDone is closed.
	err error
}

type reply struct {
	msg wireMessage
	err error
}

// wireMessage is a server message, as PROTOCOL.md describes it.
type wireMessage struct {
	Type     string          `json:"type"`
	ID       uint64          `json:"id"`
	Conn     string          `json:"conn"`
	Channel  string          `json:"channel"`
	Epoch    string          `json:"epoch"`
	Offset   uint64          `json:"offset"`
	Data     json.RawMessage `json:"data"`
	B64      *string         `json:"b64"`
	Code     string          `json:"code"`
	Message  string          `json:"message"`
	Reason   string          `json:"reason"`
	Protocol int             `json:"protocol"`
}

// Dial connects to the hub's WebSocket endpoint at url (ws:// or wss://)
// and waits for the server's welcome. ctx bounds the dial alone.
func Dial(ctx context.Context, url string, opts *Options) (*Client, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Buffer <= 0 {
		o.Buffer = 1024
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 16 << 20
	}
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		HTTPClient:   o.HTTPClient,
		HTTPHeader:   o.Header,
		Subprotocols: []string{realtime.Subprotocol},
	})
	if err != nil {
		return nil, fmt.Errorf("realtime client: dial: %w", err)
	}
	ws.SetReadLimit(o.ReadLimit)

	first, err := readWelcome(ctx, ws)
	if err != nil {
		ws.CloseNow()
		return nil, fmt.Errorf("realtime client: dial: %w", err)
	}
	c := &Client{
		ws:       ws,
		id:       first[0].Conn,
		events:   make(chan Event, o.Buffer),
		pending:  make(map[uint64]chan reply),
		closing:  make(chan struct{}),
		readDone: make(chan struct{}),
	}
	go c.read(first[1:])
	return c, nil
}

// readWelcome reads the first frame, which must start with the welcome.
func readWelcome(ctx context.Context, ws *websocket.Conn) ([]wireMessage, error) {
	_, frame, err := ws.Read(ctx)
	if err != nil {
		return nil, err
	}
	var msgs []wireMessage
	if err := json.Unmarshal(frame, &msgs); err != nil {
		return nil, fmt.Errorf("bad frame from server: %w", err)
	}
	if len(msgs) == 0 || msgs[0].Type != "welcome" {
		return nil, errors.New("server did not send welcome")
	}
	return msgs, nil
}

// ID returns the connection's ID on the server.
func (c *Client) ID() string { return c.id }

// Join joins channel and returns the position of the last message the
// server delivered there before the join took effect.
func (c *Client) Join(ctx context.Context, channel string) (realtime.Position, error) {
	m, err := c.request(ctx, command{typ: "join", channel: channel})
	if err != nil {
		return realtime.Position{}, err
	}
	return realtime.Position{Epoch: m.Epoch, Offset: m.Offset}, nil
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
	return realtime.Position{Epoch: m.Epoch, Offset: m.Offset}, nil
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
// the connection has ended and every event before the end was received.
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
	case <-c.readDone:
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

// Done returns a channel closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.readDone }

// Close closes the connection normally and waits for the reading
// goroutine to end.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closing)
		err = c.ws.Close(websocket.StatusNormalClosure, "")
	})
	<-c.readDone
	if err != nil && websocket.CloseStatus(err) == -1 && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("realtime client: close: %w", err)
	}
	return nil
}

// command is a client command to encode.
type command struct {
	typ        string
	channel    string
	payload    []byte
	hasPayload bool
}

// encode writes the command as JSON by hand: encoding/json would compact
// a payload, and payloads travel byte for byte.
func (cmd command) encode(id uint64) []byte {
	b := []byte(`{"type":"` + cmd.typ + `","id":`)
	b = strconv.AppendUint(b, id, 10)
	if cmd.channel != "" {
		name, _ := json.Marshal(cmd.channel)
		b = append(b, `,"channel":`...)
		b = append(b, name...)
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

// request sends cmd with a new id and waits for its reply.
func (c *Client) request(ctx context.Context, cmd command) (wireMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	if err := c.ws.Write(ctx, websocket.MessageText, cmd.encode(id)); err != nil {
		return wireMessage{}, fmt.Errorf("realtime client: write: %w", err)
	}
	select {
	case r := <-ch:
		return r.msg, r.err
	case <-c.readDone:
		return wireMessage{}, c.err
	case <-ctx.Done():
		return wireMessage{}, ctx.Err()
	}
}

// read is the client's goroutine: it routes replies to waiting calls and
// events to Receive.
func (c *Client) read(backlog []wireMessage) {
	defer close(c.readDone)
	ctx := context.Background()
	for _, m := range backlog {
		if !c.dispatch(m) {
			return
		}
	}
	for {
		_, frame, err := c.ws.Read(ctx)
		if err != nil {
			c.err = connectionError(err)
			return
		}
		var msgs []wireMessage
		if err := json.Unmarshal(frame, &msgs); err != nil {
			c.err = fmt.Errorf("realtime client: bad frame from server: %w", err)
			c.ws.Close(websocket.StatusProtocolError, "bad frame")
			return
		}
		for _, m := range msgs {
			if !c.dispatch(m) {
				return
			}
		}
	}
}

// dispatch routes one message; it reports false if the client closed
// while waiting for room in the event buffer.
func (c *Client) dispatch(m wireMessage) bool {
	if m.ID != 0 {
		c.mu.Lock()
		ch := c.pending[m.ID]
		c.mu.Unlock()
		if ch != nil {
			var err error
			if m.Type == "error" {
				err = &ServerError{Code: m.Code, Message: m.Message, Channel: m.Channel}
			}
			ch <- reply{msg: m, err: err}
			return true
		}
	}
	ev, ok := toEvent(m)
	if !ok {
		return true
	}
	select {
	case c.events <- ev:
		return true
	case <-c.closing:
		c.err = realtime.CloseError{Code: realtime.CloseNormal, Reason: "closed by client"}
		return false
	}
}

func toEvent(m wireMessage) (Event, bool) {
	ev := Event{
		Type:     m.Type,
		Channel:  m.Channel,
		Position: realtime.Position{Epoch: m.Epoch, Offset: m.Offset},
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
		ev.Err = &ServerError{Code: m.Code, Message: m.Message, Channel: m.Channel}
	case "gap", "joined", "left":
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

// connectionError turns the error that ended reading into the one Receive
// returns.
func connectionError(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return realtime.CloseError{Code: realtime.CloseCode(ce.Code), Reason: ce.Reason}
	}
	return fmt.Errorf("realtime client: %w", realtime.CloseError{Code: realtime.CloseAbnormal, Reason: err.Error()})
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
	return json.Valid(p)
}
