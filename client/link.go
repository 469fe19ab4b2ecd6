package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/realtimekit/realtime"
)

// link is one connection over one transport.
type link interface {
	// welcome reads up to the server's welcome; ctx bounds it.
	welcome(ctx context.Context) (wireMessage, error)
	// read returns the next messages; close makes it return.
	read() ([]wireMessage, error)
	// write sends one command frame.
	write(ctx context.Context, frame []byte) error
	close()
	// cursor is what a new link of the same transport resumes from.
	cursor() string
	// resumesByCursor reports whether dialling with the cursor resumes
	// the channels, or whether the client must join them again.
	resumesByCursor() bool
}

// welcomeOf checks that msgs start with the welcome.
func welcomeOf(msgs []wireMessage) (wireMessage, []wireMessage, error) {
	if len(msgs) == 0 || msgs[0].Type != "welcome" {
		return wireMessage{}, nil, errors.New("server did not send welcome")
	}
	return msgs[0], msgs[1:], nil
}

// splitClose cuts msgs at a "close" message, turning it into the error the
// link ends with.
func splitClose(msgs []wireMessage) ([]wireMessage, error) {
	for i, m := range msgs {
		if m.Type == "close" {
			return msgs[:i], closeMessage(m)
		}
	}
	return msgs, nil
}

// WebSocket.

type wsLink struct {
	ws      *websocket.Conn
	backlog []wireMessage
}

func dialWebSocket(ctx context.Context, u string, o *Options) (link, error) {
	if strings.HasPrefix(u, "http") {
		u = "ws" + strings.TrimPrefix(u, "http")
	}
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient:   o.HTTPClient,
		HTTPHeader:   o.Header,
		Subprotocols: []string{realtime.Subprotocol},
	})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(o.ReadLimit)
	return &wsLink{ws: ws}, nil
}

func (l *wsLink) welcome(ctx context.Context) (wireMessage, error) {
	msgs, err := l.readCtx(ctx)
	if err != nil {
		return wireMessage{}, err
	}
	w, rest, err := welcomeOf(msgs)
	l.backlog = rest
	return w, err
}

func (l *wsLink) read() ([]wireMessage, error) {
	if b := l.backlog; b != nil {
		l.backlog = nil
		return b, nil
	}
	return l.readCtx(context.Background())
}

func (l *wsLink) readCtx(ctx context.Context) ([]wireMessage, error) {
	_, frame, err := l.ws.Read(ctx)
	if err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) {
			return nil, realtime.CloseError{Code: realtime.CloseCode(ce.Code), Reason: ce.Reason}
		}
		return nil, fmt.Errorf("realtime client: %w", realtime.CloseError{Code: realtime.CloseAbnormal, Reason: err.Error()})
	}
	var msgs []wireMessage
	if err := json.Unmarshal(frame, &msgs); err != nil {
		l.ws.Close(websocket.StatusProtocolError, "bad frame")
		return nil, fmt.Errorf("realtime client: bad frame from server: %w", err)
	}
	return msgs, nil
}

func (l *wsLink) write(ctx context.Context, frame []byte) error {
	return l.ws.Write(ctx, websocket.MessageText, frame)
}

func (l *wsLink) close()                { l.ws.Close(websocket.StatusNormalClosure, "") }
func (l *wsLink) cursor() string        { return "" }
func (l *wsLink) resumesByCursor() bool { return false }

// httpLink holds what SSE and long-poll share: a session, and commands
// sent by POST.
type httpLink struct {
	url     string
	opts    *Options
	session string
	// ctx lives as long as the link; close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
}

func newHTTPLink(u string, o *Options) httpLink {
	ctx, cancel := context.WithCancel(context.Background())
	return httpLink{url: u, opts: o, ctx: ctx, cancel: cancel}
}

func (l *httpLink) request(ctx context.Context, method, u string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range l.opts.Header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if method != http.MethodGet {
		req.Header.Set(realtime.SessionHeader, l.session)
	}
	return l.opts.HTTPClient.Do(req)
}

func (l *httpLink) write(ctx context.Context, frame []byte) error {
	resp, err := l.request(ctx, http.MethodPost, l.url, frame)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return statusError(resp)
	}
	return nil
}

// close tells the server the client is leaving, then drops the stream or
// poll.
func (l *httpLink) close() {
	if l.ctx.Err() == nil && l.session != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if resp, err := l.request(ctx, http.MethodDelete, l.url, nil); err == nil {
			resp.Body.Close()
		}
		cancel()
	}
	l.cancel()
}

func statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
}

// Server-Sent Events.

type sseLink struct {
	httpLink
	body    io.ReadCloser
	r       *bufio.Reader
	lastID  string
	backlog []wireMessage
	end     error
}

func dialSSE(ctx context.Context, u string, o *Options, cursor string) (link, error) {
	l := &sseLink{httpLink: newHTTPLink(u, o)}
	stop := context.AfterFunc(ctx, l.cancel) // ctx bounds the dial alone
	defer stop()
	req, err := http.NewRequestWithContext(l.ctx, http.MethodGet, u, nil)
	if err != nil {
		l.cancel()
		return nil, err
	}
	for k, v := range o.Header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	if cursor != "" {
		req.Header.Set("Last-Event-ID", cursor)
	}
	resp, err := o.HTTPClient.Do(req)
	if err != nil {
		l.cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		defer resp.Body.Close()
		l.cancel()
		return nil, statusError(resp)
	}
	l.body, l.r, l.lastID = resp.Body, bufio.NewReader(resp.Body), cursor
	return l, nil
}

func (l *sseLink) welcome(ctx context.Context) (wireMessage, error) {
	stop := context.AfterFunc(ctx, l.cancel)
	defer stop()
	msgs, err := l.next()
	if err != nil {
		return wireMessage{}, err
	}
	w, rest, err := welcomeOf(msgs)
	l.session, l.backlog = w.Session, rest
	return w, err
}

func (l *sseLink) read() ([]wireMessage, error) {
	if b := l.backlog; b != nil {
		l.backlog = nil
		return b, nil
	}
	return l.next()
}

// next parses events until one carries messages.
func (l *sseLink) next() ([]wireMessage, error) {
	if l.end != nil {
		return nil, l.end
	}
	var data []byte
	for {
		line, err := l.readLine()
		if err != nil {
			l.body.Close()
			return nil, realtime.CloseError{Code: realtime.CloseAbnormal, Reason: "event stream ended: " + err.Error()}
		}
		if len(line) == 0 {
			if data == nil {
				continue
			}
			var msgs []wireMessage
			if err := json.Unmarshal(data, &msgs); err != nil {
				return nil, fmt.Errorf("realtime client: bad event from server: %w", err)
			}
			msgs, l.end = splitClose(msgs)
			if len(msgs) == 0 && l.end != nil {
				return nil, l.end
			}
			return msgs, nil
		}
		field, value, _ := strings.Cut(string(line), ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, value...)
		case "id":
			l.lastID = value
		}
	}
}

// readLine reads one line without its ending, bounded by ReadLimit.
func (l *sseLink) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := l.r.ReadSlice('\n')
		line = append(line, chunk...)
		if int64(len(line)) > l.opts.ReadLimit {
			return nil, errors.New("event larger than the read limit")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		return bytes.TrimRight(line, "\r\n"), nil
	}
}

func (l *sseLink) cursor() string        { return l.lastID }
func (l *sseLink) resumesByCursor() bool { return true }

// Long-polling.

type pollLink struct {
	httpLink
	seq     uint64
	cur     string
	backlog []wireMessage
	end     error
}

type pollResponse struct {
	Seq      uint64        `json:"seq"`
	Cursor   string        `json:"cursor"`
	Messages []wireMessage `json:"messages"`
}

func dialPoll(ctx context.Context, u string, o *Options, cursor string) (link, error) {
	l := &pollLink{httpLink: newHTTPLink(u, o), cur: cursor}
	open := u
	if cursor != "" {
		open = withQuery(u, url.Values{"cursor": {cursor}})
	}
	if err := l.poll(ctx, open); err != nil {
		l.cancel()
		return nil, err
	}
	return l, nil
}

func withQuery(u string, q url.Values) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + q.Encode()
}

// poll makes one request and keeps what it returns.
func (l *pollLink) poll(ctx context.Context, u string) error {
	resp, err := l.request(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err := statusError(resp)
		if resp.StatusCode == http.StatusNotFound {
			return realtime.CloseError{Code: realtime.CloseAbnormal, Reason: "session gone: " + err.Error()}
		}
		return err
	}
	var r pollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, l.opts.ReadLimit)).Decode(&r); err != nil {
		return fmt.Errorf("realtime client: bad poll response: %w", err)
	}
	l.seq = r.Seq
	if r.Cursor != "" || len(r.Messages) > 0 {
		l.cur = r.Cursor
	}
	l.backlog, l.end = splitClose(r.Messages)
	return nil
}

func (l *pollLink) welcome(ctx context.Context) (wireMessage, error) {
	w, rest, err := welcomeOf(l.backlog)
	l.session, l.backlog = w.Session, rest
	return w, err
}

func (l *pollLink) read() ([]wireMessage, error) {
	for {
		if b := l.backlog; len(b) > 0 {
			l.backlog = nil
			return b, nil
		}
		if l.end != nil {
			return nil, l.end
		}
		u := withQuery(l.url, url.Values{"session": {l.session}, "ack": {strconv.FormatUint(l.seq, 10)}})
		if err := l.poll(l.ctx, u); err != nil {
			if l.ctx.Err() != nil {
				return nil, realtime.CloseError{Code: realtime.CloseNormal, Reason: "closed by client"}
			}
			return nil, err
		}
	}
}

func (l *pollLink) cursor() string        { return l.cur }
func (l *pollLink) resumesByCursor() bool { return true }
