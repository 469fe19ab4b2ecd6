package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

// Bounds of the steps of a test; every wait names its own.
const (
	evalTimeout    = 15 * time.Second // one Runtime.evaluate or navigation
	connectTimeout = 20 * time.Second // a page to load and its clients to connect
)

// hubServer is a hub behind an HTTP server on 127.0.0.1 that serves the
// test page at / and the hub under /realtime/ (realtime.NewHandler).
type hubServer struct {
	*realtime.Hub
	srv  *httptest.Server
	URL  string // http(s)://127.0.0.1:port, no trailing slash
	addr string // 127.0.0.1:port

	stopOnce sync.Once

	mu          sync.Mutex
	connects    []connectEvent
	disconnects map[string]realtime.CloseError // by connection id
	requests    []string                       // "METHOD path proto" of every request to /realtime/
}

// connectEvent is a connection the hub accepted.
type connectEvent struct {
	id, transport string
	at            time.Time
}

// serverConfig says how to start a hubServer.
type serverConfig struct {
	addr  string // listen here; "" for a free port
	tls   bool   // HTTPS with HTTP/2 enabled
	opts  realtime.Options
	hopts *realtime.HandlerOptions // nil: every transport, SSE retry 100 ms
}

// startHub starts a hub and its server; cleanup shuts both down.
func startHub(t testing.TB, cfg serverConfig) *hubServer {
	t.Helper()
	s := &hubServer{disconnects: make(map[string]realtime.CloseError)}
	opts := cfg.opts
	onDisconnect := opts.OnDisconnect
	opts.OnDisconnect = func(c *realtime.Conn, reason realtime.CloseError) {
		s.mu.Lock()
		s.disconnects[c.ID()] = reason
		s.mu.Unlock()
		if onDisconnect != nil {
			onDisconnect(c, reason)
		}
	}
	onConnect := opts.OnConnect
	opts.OnConnect = func(c *realtime.Conn) {
		s.mu.Lock()
		s.connects = append(s.connects, connectEvent{c.ID(), c.Transport(), time.Now()})
		s.mu.Unlock()
		if onConnect != nil {
			onConnect(c)
		}
	}
	hub, err := realtime.New(&opts)
	require.NoError(t, err)
	s.Hub = hub

	hopts := cfg.hopts
	if hopts == nil {
		// EventSource waits 3 s before reconnecting unless told otherwise.
		hopts = &realtime.HandlerOptions{SSE: &realtime.SSEOptions{Retry: 100 * time.Millisecond}}
	}
	rt := realtime.NewHandler(hub, hopts)
	mux := http.NewServeMux()
	mux.Handle("/realtime/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+r.URL.Path+" "+r.Proto)
		s.mu.Unlock()
		rt.ServeHTTP(w, r)
	}))
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		io.WriteString(w, testPage)
	})

	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if cfg.addr != "" {
		srv.Listener.Close()
		ln, err := net.Listen("tcp", cfg.addr)
		require.NoError(t, err, "listening on %s again", cfg.addr)
		srv.Listener = ln
	}
	if cfg.tls {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	s.srv = srv
	s.URL = srv.URL
	s.addr = srv.Listener.Addr().String()
	t.Cleanup(s.stop)
	return s
}

// stop shuts the hub down (every client gets a going-away) and then the
// server. It may be called more than once.
func (s *hubServer) stop() {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Hub.Shutdown(ctx)
		s.srv.CloseClientConnections()
		s.srv.Close()
	})
}

func (s *hubServer) connectEvents() []connectEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]connectEvent(nil), s.connects...)
}

// disconnect returns why connection id ended, once it has.
func (s *hubServer) disconnect(id string) (realtime.CloseError, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.disconnects[id]
	return r, ok
}

func (s *hubServer) requestLog() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// publish publishes a JSON value from the server.
func (s *hubServer) publish(t testing.TB, channel string, v any) realtime.Position {
	t.Helper()
	data, err := json.Marshal(v)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pos, err := s.Publish(ctx, channel, data)
	require.NoError(t, err)
	return pos
}

// httpProxy is a reverse proxy on 127.0.0.1 in front of a hubServer that
// can misbehave as proxies in the field do.
type httpProxy struct {
	srv *httptest.Server
	URL string
}

type proxyConfig struct {
	// stripUpgrade drops the Upgrade header, so no WebSocket gets through.
	stripUpgrade bool
	// bufferSSE holds the body of every text/event-stream response until
	// the response ends, as nginx does with proxy_buffering on.
	bufferSSE bool
}

func startHTTPProxy(t testing.TB, target string, cfg proxyConfig) *httpProxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // the page's origin is the proxy
			if cfg.stripUpgrade {
				pr.Out.Header.Del("Upgrade")
				pr.Out.Header.Del("Connection")
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if cfg.bufferSSE && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				resp.Body = &bufferedBody{rc: resp.Body}
			}
			return nil
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p := &httpProxy{srv: httptest.NewServer(rp)}
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.URL = p.srv.URL
	t.Cleanup(func() {
		p.srv.CloseClientConnections()
		p.srv.Close()
	})
	return p
}

// bufferedBody hands nothing on until the whole body has been read.
type bufferedBody struct {
	rc   io.ReadCloser
	data []byte
	err  error
	read bool
}

func (b *bufferedBody) Read(p []byte) (int, error) {
	if !b.read {
		b.data, b.err = io.ReadAll(b.rc)
		b.read = true
		if b.err == nil {
			b.err = io.EOF
		}
	}
	if len(b.data) == 0 {
		return 0, b.err
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

func (b *bufferedBody) Close() error { return b.rc.Close() }

// tcpProxy forwards TCP connections on 127.0.0.1 to a target and can cut
// every connection it carries at once, as a network failure or a proxy
// restart does, while new connections still get through.
type tcpProxy struct {
	ln     net.Listener
	target string
	URL    string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	total  int // connections accepted
}

func startTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &tcpProxy{ln: ln, target: target, URL: "http://" + ln.Addr().String(), conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			down.Close()
			up.Close()
			continue
		}
		p.conns[down] = struct{}{}
		p.conns[up] = struct{}{}
		p.total++
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, down)
		go p.pipe(down, up)
	}
}

func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	// Either side ending ends both, as a dropped connection does.
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// cut closes every connection the proxy carries and returns how many
// client connections that was.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a polite close
		}
		c.Close()
	}
	n := len(p.conns) / 2
	clear(p.conns)
	return n
}

// tab is one browser tab.
type tab struct {
	t    testing.TB
	ctx  context.Context
	name string
}

// newTab opens a tab in a browser context of its own (its own cookies,
// storage and connection pool) or, with share, in the browser context of
// share. Cleanup closes it, after saving a screenshot and logging the
// page's state if the test failed.
func newTab(t testing.TB, name string, share *tab) *tab {
	t.Helper()
	var ctx context.Context
	var cancel context.CancelFunc
	if share != nil {
		ctx, cancel = chromedp.NewContext(share.ctx)
	} else {
		ctx, cancel = chromedp.NewContext(browserCtx(t), chromedp.WithNewBrowserContext())
	}
	// No timeout on the first Run: its context bounds the tab's life.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		require.NoError(t, err, "opening tab %s", name)
	}
	tb := &tab{t: t, ctx: ctx, name: name}
	t.Cleanup(func() {
		if t.Failed() {
			tb.report()
		}
		cancel()
	})
	return tb
}

// report logs the page's state and saves a screenshot, for a failed test.
func (tb *tab) report() {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	dump, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.e2e && e2e.dump ? e2e.dump() : document.title`))
	if err != nil {
		tb.t.Logf("tab %s: no state: %v", tb.name, err)
	} else {
		tb.t.Logf("tab %s: %s", tb.name, dump)
	}
	if png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
		path := filepath.Join(artifactDir(tb.t), fileName(tb.t.Name()+"-"+tb.name)+".png")
		if err := os.WriteFile(path, png, 0o644); err == nil {
			tb.t.Logf("tab %s: screenshot %s", tb.name, path)
		}
	}
}

// open navigates the tab to the test page at base and waits until the
// client script has loaded.
func (tb *tab) open(base, query string) {
	tb.t.Helper()
	u := base + "/"
	if query != "" {
		u += "?" + query
	}
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	require.NoError(tb.t, chromedp.Do(ctx, chromedp.Navigate(u)), "loading %s in %s", u, tb.name)
	tb.wait(`e2e.ready || e2e.loadError`, connectTimeout, "the client script to load")
	loadErr := eval[string](tb, `e2e.loadError || ''`)
	require.Empty(tb.t, loadErr, "realtime.js did not load in %s", tb.name)
}

// connect opens a client called name in the page with the connect()
// options opts (a JS object literal) and subscribes it to channels.
func (tb *tab) connect(name, opts string, channels ...string) {
	tb.t.Helper()
	chs, _ := json.Marshal(channels)
	eval[bool](tb, fmt.Sprintf(`e2e.open(%q, %s, %s)`, name, opts, chs))
}

// waitJoined waits until client name is connected and has joined every
// channel it subscribed to.
func (tb *tab) waitJoined(name string, timeout time.Duration) {
	tb.t.Helper()
	tb.wait(fmt.Sprintf(`(() => { const c = e2e.clients[%q];
		return c.rt.state === 'connected' && Object.keys(c.joins).every((ch) => c.joins[ch] > 0); })()`, name),
		timeout, name+" to be connected and joined")
}

// summary returns what client name reported.
func (tb *tab) summary(name string) clientSummary {
	tb.t.Helper()
	return eval[clientSummary](tb, fmt.Sprintf(`e2e.summary(%q)`, name))
}

// pageErrors returns the uncaught errors and unhandled rejections of the
// page.
func (tb *tab) pageErrors() []string {
	tb.t.Helper()
	return eval[[]string](tb, `e2e.pageErrors`)
}

// wait polls the JS expression cond until it is truthy, failing the test
// with the page's state after timeout.
func (tb *tab) wait(cond string, timeout time.Duration, what string) {
	tb.t.Helper()
	if err := tb.poll(cond, timeout); err != nil {
		tb.t.Fatalf("%s: waiting %v for %s: %v", tb.name, timeout, what, err)
	}
}

// poll is wait without failing.
func (tb *tab) poll(cond string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	expr := fmt.Sprintf(`(() => { try { return !!(%s); } catch (e) { return false; } })()`, cond)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("timed out")
			}
			return err
		}
		select {
		case <-tick.C:
		case <-tb.ctx.Done():
			return tb.ctx.Err()
		}
	}
}

// eval evaluates expr in the tab, awaiting a promise, and decodes its
// value.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	require.NoError(tb.t, err, "%s: evaluating %s", tb.name, expr)
	return v
}

// screenshot saves the tab's viewport as name.png in the artifact
// directory and returns its path.
func (tb *tab) screenshot(name string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	require.NoError(tb.t, err)
	path := filepath.Join(artifactDir(tb.t), fileName(name)+".png")
	require.NoError(tb.t, os.WriteFile(path, png, 0o644))
	tb.t.Logf("screenshot: %s", path)
	return path
}

// artifactDir is where tests write what a person may want to look at:
// $REALTIME_ARTIFACTS, by default realtime-artifacts in the temporary
// directory, never the repository.
func artifactDir(t testing.TB) string {
	dir := os.Getenv("REALTIME_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "realtime-artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return dir
}

func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
}

// clientSummary is what the page's e2e.summary reports for one client.
type clientSummary struct {
	Name      string         `json:"name"`
	State     string         `json:"state"`
	Transport string         `json:"transport"`
	ID        string         `json:"id"`
	States    []stateEvent   `json:"states"`
	Resyncs   []resyncEvent  `json:"resyncs"`
	Errors    []jsError      `json:"errors"`
	SubErrors []jsError      `json:"subErrors"`
	Gaps      []string       `json:"gaps"`
	Counts    map[string]int `json:"counts"`
	Joins     map[string]int `json:"joins"`
}

// stateEvent is one 'state' event; T is the page's wall clock in ms.
type stateEvent struct {
	State     string  `json:"state"`
	Transport string  `json:"transport"`
	Code      int     `json:"code"`
	Reason    string  `json:"reason"`
	Attempt   int     `json:"attempt"`
	Delay     float64 `json:"delay"`
	T         float64 `json:"t"`
}

type resyncEvent struct {
	Channel string  `json:"channel"`
	T       float64 `json:"t"`
}

type jsError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Channel string `json:"channel"`
}

// count returns how many state events of state the client reported.
func (c clientSummary) count(state string) int {
	n := 0
	for _, s := range c.States {
		if s.State == state {
			n++
		}
	}
	return n
}

// publishResult is what e2e.publish reports.
type publishResult struct {
	OK      bool   `json:"ok"`
	Epoch   string `json:"epoch"`
	Offset  int64  `json:"offset"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Channel string `json:"channel"`
	// IsRealtimeError: the rejection is a RealtimeError.
	IsRealtimeError bool `json:"isRealtimeError"`
}
