package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/centrifugal/centrifuge"
	"github.com/coder/websocket"
	"github.com/olahol/melody"
	"github.com/redis/go-redis/v9"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/redisbackplane"
)

// serverConfig is what a server process is told on its command line.
type serverConfig struct {
	name   string
	listen string
	redis  string
	nats   string
	prefix string
}

// publisher is one server's way to publish a payload to a channel, as
// the application on that server would.
type publisher func(ctx context.Context, channel string, data []byte) error

// serverStats is what a server process reports on /bench/stats.
type serverStats struct {
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heapInuse"`
	HeapSys    uint64 `json:"heapSys"`
	StackInuse uint64 `json:"stackInuse"`
	Sys        uint64 `json:"sys"`
	NumGC      uint32 `json:"numGC"`
	Dropped    int64  `json:"dropped"`

	// Mem splits the memory the runtime holds (runtime/metrics).
	Mem memClasses `json:"mem"`
}

// memClasses is the runtime's account of its memory, from
// runtime/metrics: what of it is resident (everything but Released) and
// what holds it.
type memClasses struct {
	HeapObjects  uint64 `json:"heapObjects"`  // live objects, and dead ones not yet swept
	HeapUnused   uint64 `json:"heapUnused"`   // free slots in spans that hold objects: fragmentation
	HeapFree     uint64 `json:"heapFree"`     // free pages not returned to the OS
	HeapReleased uint64 `json:"heapReleased"` // free pages returned to the OS: not resident
	Stacks       uint64 `json:"stacks"`       // goroutine stacks, in use and cached
	OSStacks     uint64 `json:"osStacks"`     // stacks the OS allocated for threads
	Metadata     uint64 `json:"metadata"`     // spans, mcaches, GC and heap metadata
	MSpan        uint64 `json:"mspan"`        // of which span structures, in use and free
	Profiling    uint64 `json:"profiling"`    // profiling buckets
	Other        uint64 `json:"other"`        // the rest: network poller descriptors, traces, ...
	Total        uint64 `json:"total"`
	Threads      uint64 `json:"threads"`
	Created      uint64 `json:"created"` // goroutines ever created
}

func (m memClasses) plus(o memClasses) memClasses {
	return memClasses{
		HeapObjects:  m.HeapObjects + o.HeapObjects,
		HeapUnused:   m.HeapUnused + o.HeapUnused,
		HeapFree:     m.HeapFree + o.HeapFree,
		HeapReleased: m.HeapReleased + o.HeapReleased,
		Stacks:       m.Stacks + o.Stacks,
		OSStacks:     m.OSStacks + o.OSStacks,
		Metadata:     m.Metadata + o.Metadata,
		MSpan:        m.MSpan + o.MSpan,
		Profiling:    m.Profiling + o.Profiling,
		Other:        m.Other + o.Other,
		Total:        m.Total + o.Total,
		Threads:      m.Threads + o.Threads,
		Created:      m.Created + o.Created,
	}
}

// resident is the memory the runtime holds that is backed by RAM, as far
// as it knows: all it mapped but what it returned to the OS.
func (m memClasses) resident() uint64 { return m.Total - m.HeapReleased }

func readMemClasses() memClasses {
	names := []string{
		"/memory/classes/heap/objects:bytes",
		"/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/stacks:bytes",
		"/memory/classes/os-stacks:bytes",
		"/memory/classes/metadata/mcache/free:bytes",
		"/memory/classes/metadata/mcache/inuse:bytes",
		"/memory/classes/metadata/mspan/free:bytes",
		"/memory/classes/metadata/mspan/inuse:bytes",
		"/memory/classes/metadata/other:bytes",
		"/memory/classes/other:bytes",
		"/memory/classes/profiling/buckets:bytes",
		"/memory/classes/total:bytes",
		"/sched/threads/total:threads",
		"/sched/goroutines-created:goroutines",
	}
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	v := func(i int) uint64 {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return samples[i].Value.Uint64()
	}
	return memClasses{
		HeapObjects:  v(0),
		HeapUnused:   v(1),
		HeapFree:     v(2),
		HeapReleased: v(3),
		Stacks:       v(4),
		OSStacks:     v(5),
		Metadata:     v(6) + v(7) + v(8) + v(9) + v(10),
		MSpan:        v(8) + v(9),
		Profiling:    v(12),
		Other:        v(11),
		Total:        v(13),
		Threads:      v(14),
		Created:      v(15),
	}
}

// runServer serves one implementation until the process is killed. It
// prints "listening ADDR" on stdout once it accepts connections.
func runServer(cfg serverConfig) error {
	mux := http.NewServeMux()
	var dropped atomic.Int64
	var pub publisher
	var err error
	switch cfg.name {
	case "realtime", "realtime-redis", "realtime-nats":
		pub, err = serveRealtime(mux, cfg)
	case "centrifuge", "centrifuge-redis":
		pub, err = serveCentrifuge(mux, cfg)
	case "melody":
		pub = serveMelody(mux, &dropped)
	case "coalesce":
		pub = serveCoalesce(mux, &dropped)
	case "floor":
		serveFloor(mux)
		pub = func(context.Context, string, []byte) error { return nil }
	default:
		return fmt.Errorf("unknown server %q", cfg.name)
	}
	if err != nil {
		return err
	}

	mux.HandleFunc("GET /bench/ready", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /bench/publish", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		// The body holds one payload, or several, one a line, published
		// one after another as the application would.
		ch := r.URL.Query().Get("ch")
		for len(data) > 0 {
			line, rest, _ := bytes.Cut(data, []byte{'\n'})
			data = rest
			if err := pub(r.Context(), ch, line); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /bench/gc", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		debug.FreeOSMemory()
		writeStats(w, &dropped)
	})
	mux.HandleFunc("GET /bench/stats", func(w http.ResponseWriter, r *http.Request) {
		writeStats(w, &dropped)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	return (&http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}).Serve(ln)
}

func writeStats(w http.ResponseWriter, dropped *atomic.Int64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	json.NewEncoder(w).Encode(serverStats{
		Goroutines: runtime.NumGoroutine(),
		HeapInuse:  ms.HeapInuse,
		HeapSys:    ms.HeapSys,
		StackInuse: ms.StackInuse,
		Sys:        ms.Sys,
		NumGC:      ms.NumGC,
		Dropped:    dropped.Load(),
		Mem:        readMemClasses(),
	})
}

// serveRealtime mounts this project's hub, with every transport, under
// /realtime/.
func serveRealtime(mux *http.ServeMux, cfg serverConfig) (publisher, error) {
	var bp realtime.Backplane
	switch cfg.name {
	case "realtime-redis":
		client := redis.NewClient(&redis.Options{Addr: cfg.redis, PoolSize: 32})
		b, err := redisbackplane.New(client, &redisbackplane.Options{Prefix: cfg.prefix})
		if err != nil {
			return nil, err
		}
		bp = b
	case "realtime-nats":
		b, err := newNATSBackplane(cfg)
		if err != nil {
			return nil, err
		}
		bp = b
	}
	hub, err := realtime.New(&realtime.Options{Backplane: bp})
	if err != nil {
		return nil, err
	}
	mux.Handle("/realtime/", realtime.NewHandler(hub, nil))
	return func(ctx context.Context, channel string, data []byte) error {
		_, err := hub.Publish(ctx, channel, data)
		return err
	}, nil
}

// serveCentrifuge mounts a centrifuge node at /connection/websocket. Every
// client is admitted anonymously and may subscribe to any channel.
func serveCentrifuge(mux *http.ServeMux, cfg serverConfig) (publisher, error) {
	node, err := centrifuge.New(centrifuge.Config{LogLevel: centrifuge.LogLevelNone})
	if err != nil {
		return nil, err
	}
	if cfg.name == "centrifuge-redis" {
		shard, err := centrifuge.NewRedisShard(node, centrifuge.RedisShardConfig{Address: cfg.redis})
		if err != nil {
			return nil, err
		}
		broker, err := centrifuge.NewRedisBroker(node, centrifuge.RedisBrokerConfig{
			Prefix: cfg.prefix,
			Shards: []*centrifuge.RedisShard{shard},
		})
		if err != nil {
			return nil, err
		}
		node.SetBroker(broker)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{}}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		return nil, err
	}
	mux.Handle("/connection/websocket", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(*http.Request) bool { return true },
	}))
	return func(ctx context.Context, channel string, data []byte) error {
		_, err := node.Publish(channel, data)
		return err
	}, nil
}

// joinRequest parses the simple peers' join frame: "join a,b,c".
func joinRequest(frame []byte) ([]string, bool) {
	rest, ok := bytes.CutPrefix(frame, []byte("join "))
	if !ok {
		return nil, false
	}
	return strings.Split(string(rest), ","), true
}

// envelope is the simple peers' message: {"channel":"x","data":<payload>}.
func envelope(channel string, data []byte) []byte {
	b := make([]byte, 0, len(channel)+len(data)+24)
	b = append(b, `{"channel":"`...)
	b = append(b, channel...)
	b = append(b, `","data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// serveMelody mounts a melody hub at /ws with a channel index of its
// sessions; each session has a buffer as large as this project's default
// queue, so that it drops nothing a realtime connection would keep.
func serveMelody(mux *http.ServeMux, dropped *atomic.Int64) publisher {
	m := melody.New()
	m.Config.MessageBufferSize = 4096
	m.Config.MaxMessageSize = 64 << 10
	var mu sync.RWMutex
	chans := make(map[string]map[*melody.Session]struct{})
	m.HandleMessage(func(s *melody.Session, frame []byte) {
		names, ok := joinRequest(frame)
		if !ok {
			return
		}
		mu.Lock()
		for _, n := range names {
			set := chans[n]
			if set == nil {
				set = make(map[*melody.Session]struct{})
				chans[n] = set
			}
			set[s] = struct{}{}
		}
		mu.Unlock()
		s.Set("chans", names)
		s.Write(fmt.Appendf(nil, `{"joined":%d}`, len(names)))
	})
	m.HandleDisconnect(func(s *melody.Session) {
		v, ok := s.Get("chans")
		if !ok {
			return
		}
		mu.Lock()
		for _, n := range v.([]string) {
			delete(chans[n], s)
			if len(chans[n]) == 0 {
				delete(chans, n)
			}
		}
		mu.Unlock()
	})
	m.HandleError(func(s *melody.Session, err error) {
		if err == melody.ErrMessageBufferFull {
			dropped.Add(1)
		}
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		m.HandleRequest(w, r)
	})
	return func(ctx context.Context, channel string, data []byte) error {
		msg := envelope(channel, data)
		mu.RLock()
		defer mu.RUnlock()
		for s := range chans[channel] {
			s.Write(msg)
		}
		return nil
	}
}

// serveFloor mounts the floor at /ws: a bare coder/websocket server that
// only reads, with the read loop inside the HTTP handler.
func serveFloor(mux *http.ServeMux) {
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			if _, _, err := ws.Read(context.Background()); err != nil {
				return
			}
		}
	})
}

// coalesceConn is one connection of the bare coalescing hub: a queue and
// a writer that sends everything queued in one frame.
type coalesceConn struct {
	ws   *websocket.Conn
	mu   sync.Mutex
	q    [][]byte
	wake chan struct{}
}

func (c *coalesceConn) push(m []byte, dropped *atomic.Int64) {
	c.mu.Lock()
	if len(c.q) >= 4096 {
		c.mu.Unlock()
		dropped.Add(1)
		return
	}
	c.q = append(c.q, m)
	first := len(c.q) == 1
	c.mu.Unlock()
	if first {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

func (c *coalesceConn) writer(ctx context.Context) {
	var buf []byte
	var batch [][]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		}
		c.mu.Lock()
		batch, c.q = c.q, batch[:0]
		c.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		buf = append(buf[:0], '[')
		for i, m := range batch {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, m...)
		}
		buf = append(buf, ']')
		clear(batch)
		if err := c.ws.Write(ctx, websocket.MessageText, buf); err != nil {
			c.ws.CloseNow()
			return
		}
	}
}

// serveCoalesce mounts the bare coalescing hub at /ws.
func serveCoalesce(mux *http.ServeMux, dropped *atomic.Int64) publisher {
	var mu sync.RWMutex
	chans := make(map[string]map[*coalesceConn]struct{})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		ws.SetReadLimit(64 << 10)
		ctx, cancel := context.WithCancel(context.Background())
		c := &coalesceConn{ws: ws, wake: make(chan struct{}, 1)}
		go c.writer(ctx)
		var joined []string
		defer func() {
			cancel()
			ws.CloseNow()
			mu.Lock()
			for _, n := range joined {
				delete(chans[n], c)
				if len(chans[n]) == 0 {
					delete(chans, n)
				}
			}
			mu.Unlock()
		}()
		for {
			_, frame, err := ws.Read(ctx)
			if err != nil {
				return
			}
			names, ok := joinRequest(frame)
			if !ok {
				continue
			}
			mu.Lock()
			for _, n := range names {
				set := chans[n]
				if set == nil {
					set = make(map[*coalesceConn]struct{})
					chans[n] = set
				}
				set[c] = struct{}{}
			}
			mu.Unlock()
			joined = append(joined, names...)
			c.push(fmt.Appendf(nil, `{"joined":%d}`, len(names)), dropped)
		}
	})
	return func(ctx context.Context, channel string, data []byte) error {
		msg := envelope(channel, data)
		mu.RLock()
		defer mu.RUnlock()
		for c := range chans[channel] {
			c.push(msg, dropped)
		}
		return nil
	}
}
