package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// target is one implementation under test: a server mode and the
// protocol its clients speak.
type target struct {
	label  string
	server string
	proto  string
}

var (
	tRealtimeWS   = target{"realtime ws", "realtime", "realtime-ws"}
	tRealtimeSSE  = target{"realtime sse", "realtime", "realtime-sse"}
	tRealtimePoll = target{"realtime long-poll", "realtime", "realtime-poll"}
	tCentrifuge   = target{"centrifuge", "centrifuge", "centrifuge"}
	tMelody       = target{"melody", "melody", "melody"}
	tCoalesce     = target{"coalescing coder/websocket hub", "coalesce", "coalesce"}
	tFloor        = target{"floor (coder/websocket, read only)", "floor", "floor"}

	tRealtimeRedis   = target{"realtime ws + redisbackplane", "realtime-redis", "realtime-ws"}
	tRealtimeNATS    = target{"realtime ws + natsbackplane", "realtime-nats", "realtime-ws"}
	tCentrifugeRedis = target{"centrifuge + Redis broker", "centrifuge-redis", "centrifuge"}
)

// config holds the sizes of every scenario.
type config struct {
	idleConns int
	idleMax   int // 0: from the open-files limit

	fanSubs, fanMsgs, fanSize, fanBatch, fanPublishers, fanRuns int

	latSubs, latSize int
	latRates         []int
	latDur           time.Duration

	chConns, chChannels, chPer, chRate int
	chDur                              time.Duration

	redis, nats, prefix string
	profileDir          string
	profiled            bool            // the fan-out CPU profile was taken
	profiledCross       map[target]bool // the cross-node CPU profiles of a target were taken
	transports          []target        // which of this project's transports the load scenarios cover
	peers               bool            // whether they cover the peers
}

// pubClient publishes over one keep-alive connection to a server's
// control endpoint, as the server's application would.
var pubClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 30 * time.Second}

func publish(addr string, ch int32, data []byte) error {
	resp, err := pubClient.Post("http://"+addr+"/bench/publish?ch="+channelName(ch), "application/json", bytes.NewReader(data))
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("publish: %s", resp.Status)
	}
	return nil
}

// tally sums what a set of clients received.
type tally struct {
	recv, dup, reordered int64
	closed               int
	lastAt               int64
}

func count(clients []*client) tally {
	var t tally
	for _, c := range clients {
		t.recv += c.recv.Load()
		t.dup += c.dup.Load()
		t.reordered += c.reordered.Load()
		t.lastAt = max(t.lastAt, c.lastAt.Load())
		if c.closed.Load() {
			t.closed++
		}
	}
	return t
}

var debugHook func()

// awaitDeliveries waits until the clients received want deliveries, or
// nothing arrived for stall, or limit passed.
func awaitDeliveries(clients []*client, want int64, stall, limit time.Duration) tally {
	deadline := time.Now().Add(limit)
	last, lastChange := int64(-1), time.Now()
	for {
		t := count(clients)
		if t.recv >= want || time.Now().After(deadline) {
			return t
		}
		if t.recv != last {
			last, lastChange = t.recv, time.Now()
		} else if time.Since(lastChange) > stall {
			return t
		} else if debugHook != nil && time.Since(lastChange) > time.Second {
			debugHook()
			debugHook = nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// memResult is the memory a server held before, during and after a
// scenario.
type memResult struct {
	baseKB    int64 // fresh server, after a forced GC
	peakKB    int64 // sampled during the load
	endKB     int64 // 5 s after the clients left, as the runtime left it
	endGCKB   int64 // then, after a forced GC
	peakConns int

	// The runtime's account of its memory, fresh and after the clients
	// left (both after a forced GC), summed over the servers.
	baseMem, endMem memClasses
	// profile, if not empty, is where heap profiles of the fresh server
	// and of the server after the clients left are saved: profile +
	// "-fresh.pb.gz" and profile + "-end.pb.gz".
	profile string
}

// fresh has each server collect garbage and return free memory, and
// records what it holds as the base of the scenario.
func (m *memResult) fresh(servers []*server) {
	for _, s := range servers {
		p, st := s.gc()
		m.baseKB += p.rssKB
		m.baseMem = m.baseMem.plus(st.Mem)
	}
	if m.profile != "" && len(servers) > 0 {
		saveProfile(servers[0], "/debug/pprof/heap", m.profile+"-fresh.pb.gz")
	}
}

// profileName names the heap profiles of a scenario's server when
// profiles are asked for (-profile), or returns "".
func profileName(cfg *config, scenario string, t target) string {
	if cfg.profileDir == "" {
		return ""
	}
	return filepath.Join(cfg.profileDir, scenario+"-"+strings.TrimPrefix(t.proto, "realtime-")+"-heap")
}

// settle disconnects the clients, waits and samples the servers' memory.
func settle(servers []*server, clients []*client, m *memResult, t target) {
	closeAll(clients)
	closeIdleHTTP()
	wait := 5 * time.Second
	if t.proto == "realtime-poll" {
		// A long-poll session is forgotten its session timeout (30 s by
		// default) after it ends, so that a poll can still fetch the close.
		wait = 35 * time.Second
	}
	time.Sleep(wait)
	for _, s := range servers {
		m.endKB += s.sample().rssKB
	}
	for _, s := range servers {
		p, st := s.gc()
		m.endGCKB += p.rssKB
		m.endMem = m.endMem.plus(st.Mem)
	}
	if m.profile != "" && len(servers) > 0 {
		saveProfile(servers[0], "/debug/pprof/heap", m.profile+"-end.pb.gz")
	}
}

func startServers(t target, n int, cfg *config) ([]*server, error) {
	var servers []*server
	for range n {
		s, err := startServer(t.server, "-redis", cfg.redis, "-nats", cfg.nats, "-prefix", cfg.prefix)
		if err != nil {
			stopAll(servers)
			return nil, err
		}
		servers = append(servers, s)
	}
	return servers, nil
}

func stopAll(servers []*server) {
	for _, s := range servers {
		s.stop()
	}
}

func cpuOf(servers []*server) float64 {
	var sum float64
	for _, s := range servers {
		sum += s.sample().cpu
	}
	return sum
}

func pids(servers []*server) []int {
	var p []int
	for _, s := range servers {
		p = append(p, s.pid())
	}
	return p
}

func selfCPU() float64 {
	p, _ := readProc(os.Getpid())
	return p.cpu
}

// idleResult is scenario 1 for one target.
type idleResult struct {
	target      target
	conns       int
	connectTime time.Duration
	baseKB      int64
	baseStats   serverStats
	rawKB       int64 // with the connections, as the runtime left it
	gcKB        int64 // with the connections, after a forced GC
	stats       serverStats
	mem         memResult
	err         error
}

func (r idleResult) perConn() float64 { return float64(r.gcKB-r.baseKB) / float64(r.conns) }

// heapPerConn is the Go heap in use per connection.
func (r idleResult) heapPerConn() float64 {
	used := int64(r.stats.HeapInuse) - int64(r.baseStats.HeapInuse)
	return float64(used) / 1024 / float64(r.conns)
}

// stackPerConn is the goroutine stacks in use per connection.
func (r idleResult) stackPerConn() float64 {
	used := int64(r.stats.StackInuse) - int64(r.baseStats.StackInuse)
	return float64(used) / 1024 / float64(r.conns)
}

func (r idleResult) perConnRaw() float64 {
	return float64(r.rawKB-r.baseKB) / float64(r.conns)
}

// idleMost is the second connection count of scenario 1: max, or if it
// is 0 the most connections one process can hold under its open-files
// limit, less a margin for everything else it has open. The driver and
// each server have the same limit.
func idleMost(max int) int {
	if max != 0 {
		return max
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return int(lim.Cur) - 600
}

func runIdle(ctx context.Context, t target, n int, cfg *config) idleResult {
	r := idleResult{target: t, conns: n}
	servers, err := startServers(t, 1, cfg)
	if err != nil {
		r.err = err
		return r
	}
	defer stopAll(servers)
	s := servers[0]
	base, bst := s.gc()
	r.baseKB, r.baseStats = base.rssKB, bst
	r.mem.baseKB, r.mem.baseMem = base.rssKB, bst.Mem
	if r.mem.profile = profileName(cfg, "idle", t); r.mem.profile != "" {
		saveProfile(s, "/debug/pprof/heap", r.mem.profile+"-fresh.pb.gz")
	}
	clients, took, err := connectAll(ctx, protocols[t.proto], s.addr, n, func(i int) []int32 {
		if t.server == "floor" {
			return nil
		}
		return []int32{int32(i % 100)}
	})
	if err != nil {
		r.err = err
		return r
	}
	r.connectTime = took
	time.Sleep(3 * time.Second)
	r.rawKB = s.sample().rssKB
	p, st := s.gc()
	r.gcKB, r.stats = p.rssKB, st
	r.mem.peakKB = max(r.rawKB, r.gcKB)
	if cfg.profileDir != "" && t == tRealtimeWS {
		saveProfile(s, "/debug/pprof/heap", filepath.Join(cfg.profileDir, "idle-ws-heap.pb.gz"))
		saveProfile(s, "/debug/pprof/goroutine", filepath.Join(cfg.profileDir, "idle-ws-goroutine.pb.gz"))
	}
	if cfg.profileDir != "" && t == tRealtimeSSE {
		saveProfile(s, "/debug/pprof/heap", filepath.Join(cfg.profileDir, "idle-sse-heap.pb.gz"))
	}
	if n := count(clients).closed; n > 0 {
		r.err = fmt.Errorf("%d connections dropped while idle", n)
	}
	settle(servers, clients, &r.mem, t)
	return r
}

// profileCPU saves a CPU profile of s over secs seconds as file in dir,
// in the background; the channel it returns is closed once it is saved.
func profileCPU(s *server, secs int, dir, file string) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		saveProfile(s, "/debug/pprof/profile?seconds="+itoa(secs), filepath.Join(dir, file))
	}()
	return done
}

func saveProfile(s *server, path, file string) {
	resp, err := s.http.Get("http://" + s.addr + path)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}

// fanoutResult is scenario 2 (or 5, on two nodes) for one target.
type fanoutResult struct {
	target    target
	nodes     int
	subs      int
	msgs      int
	expected  int64
	got       tally
	publish   time.Duration // until the last publish was accepted
	elapsed   time.Duration // from the first publish to the last delivery
	serverCPU float64
	loadCPU   float64
	mem       memResult
	dropped   int64
	rates     []float64 // of every run, when repeated
	err       error
}

func (r fanoutResult) rate() float64 { return float64(r.got.recv) / r.elapsed.Seconds() }
func (r fanoutResult) cpuPerDelivery() float64 {
	return r.serverCPU / float64(r.got.recv) * 1e6
}
func (r fanoutResult) lost() int64 { return r.expected - r.got.recv }

// repeatFanout runs runFanout runs times and keeps the run with the
// median rate, noting every run's rate.
func repeatFanout(ctx context.Context, t target, nodes, subs, msgs, size, runs int, cfg *config) fanoutResult {
	var all []fanoutResult
	for i := range runs {
		if i > 0 {
			pause()
		}
		r := runFanout(ctx, t, nodes, subs, msgs, size, cfg)
		if r.err != nil {
			return r
		}
		all = append(all, r)
	}
	slices.SortFunc(all, func(a, b fanoutResult) int { return cmp.Compare(a.rate(), b.rate()) })
	med := all[len(all)/2]
	for _, r := range all {
		med.rates = append(med.rates, r.rate())
	}
	return med
}

// runFanout publishes msgs messages to one channel with subs members as
// fast as the first server accepts them; members are spread over nodes
// servers.
func runFanout(ctx context.Context, t target, nodes, subs, msgs, size int, cfg *config) fanoutResult {
	r := fanoutResult{target: t, nodes: nodes, subs: subs, msgs: msgs, expected: int64(subs) * int64(msgs)}
	servers, err := startServers(t, nodes, cfg)
	if err != nil {
		r.err = err
		return r
	}
	defer stopAll(servers)
	if nodes == 1 {
		r.mem.profile = profileName(cfg, "fanout", t)
	} else {
		// The first node's: the one publishes go through.
		r.mem.profile = profileName(cfg, "crossnode-"+t.server, t)
	}
	r.mem.fresh(servers)
	orderLanes = cfg.fanPublishers
	defer func() { orderLanes = 1 }()
	clients := make([]*client, 0, subs)
	for k, s := range servers {
		n := subs / nodes
		if k < subs%nodes {
			n++
		}
		cs, _, err := connectAll(ctx, protocols[t.proto], s.addr, n, func(int) []int32 { return []int32{0} })
		if err != nil {
			closeAll(clients)
			r.err = err
			return r
		}
		clients = append(clients, cs...)
	}
	time.Sleep(300 * time.Millisecond)
	pctx, cancel := context.WithCancel(ctx)
	peak := rssPeak(pctx, pids(servers), 100*time.Millisecond)
	var profDone chan struct{}
	if cfg.profileDir != "" && t == tRealtimeWS && nodes == 1 && !cfg.profiled {
		cfg.profiled = true
		profDone = profileCPU(servers[0], 8, cfg.profileDir, "fanout-ws-cpu.pb.gz")
		time.Sleep(200 * time.Millisecond)
	}
	if cfg.profileDir != "" && nodes > 1 && strings.HasPrefix(t.server, "realtime") && !cfg.profiledCross[t] {
		// Both nodes of the first run: the first publishes, both deliver.
		if cfg.profiledCross == nil {
			cfg.profiledCross = map[target]bool{}
		}
		cfg.profiledCross[t] = true
		var saved []chan struct{}
		for k, s := range servers {
			saved = append(saved, profileCPU(s, 3, cfg.profileDir, fmt.Sprintf("crossnode-%s-node%d-cpu.pb.gz", t.server, k+1)))
		}
		profDone = make(chan struct{})
		go func() {
			defer close(profDone)
			for _, done := range saved {
				<-done
			}
		}()
		time.Sleep(200 * time.Millisecond)
	}
	cpu0, load0 := cpuOf(servers), selfCPU()
	if os.Getenv("BENCH_DEBUG") != "" {
		debugHook = func() {
			fmt.Fprintf(os.Stderr, "stalled at %d deliveries\n", count(clients).recv)
			saveProfile(servers[0], "/debug/pprof/goroutine?debug=2", "/tmp/stall-server.txt")
			f, _ := os.Create("/tmp/stall-load.txt")
			pprofLookup(f)
			f.Close()
			out, _ := exec.Command("sh", "-c", "ss -tni | head -60").CombinedOutput()
			os.WriteFile("/tmp/stall-ss.txt", out, 0o644)
		}
	}
	t0 := nowMicros()
	// Each publisher sends its share of the seqs in batches; with one, the
	// channel's order is the seq order.
	var wg sync.WaitGroup
	var errOnce sync.Once
	for pub := range cfg.fanPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var batch []byte
			n := 0
			for seq := 1 + pub; seq <= msgs; seq += cfg.fanPublishers {
				batch = append(batch, payload(0, int64(seq), size)...)
				n++
				if n < cfg.fanBatch && seq+cfg.fanPublishers <= msgs {
					batch = append(batch, '\n')
					continue
				}
				if err := publish(servers[0].addr, 0, batch); err != nil {
					errOnce.Do(func() { r.err = err })
					return
				}
				batch, n = batch[:0], 0
			}
		}()
	}
	wg.Wait()
	r.publish = time.Duration(nowMicros()-t0) * time.Microsecond
	r.got = awaitDeliveries(clients, r.expected, 5*time.Second, 120*time.Second)
	r.serverCPU, r.loadCPU = cpuOf(servers)-cpu0, selfCPU()-load0
	r.elapsed = time.Duration(r.got.lastAt-t0) * time.Microsecond
	if os.Getenv("BENCH_DEBUG") != "" {
		var ends []int64
		for _, c := range clients {
			ends = append(ends, (c.lastAt.Load()-t0)/1000)
		}
		slices.Sort(ends)
		fmt.Fprintf(os.Stderr, "client finish ms: p10 %d p50 %d p90 %d p99 %d max %d\n", ends[len(ends)/10], ends[len(ends)/2], ends[len(ends)*9/10], ends[len(ends)*99/100], ends[len(ends)-1])
	}
	cancel()
	r.mem.peakKB = <-peak
	for _, s := range servers {
		r.dropped += s.stats().Dropped
	}
	if profDone != nil {
		<-profDone
	}
	settle(servers, clients, &r.mem, t)
	return r
}

// latPhase is one publishing rate of scenario 3 (or 4).
type latPhase struct {
	rate      int // messages per second
	published int64
	expected  int64
	got       tally // deliveries during this phase
	lat       []uint32
	serverCPU float64
	serverSys float64 // of serverCPU, in the kernel
	loadCPU   float64
	behind    int // publishes that started more than an interval late
}

func (p latPhase) pct(q float64) time.Duration {
	if len(p.lat) == 0 {
		return 0
	}
	i := min(len(p.lat)-1, int(q*float64(len(p.lat))))
	return time.Duration(p.lat[i]) * time.Microsecond
}

func (p latPhase) lost() int64 { return p.expected - p.got.recv }

type latResult struct {
	target  target
	subs    int
	phases  []latPhase
	mem     memResult
	dropped int64
	err     error
}

// runLatency has subs members in one channel and publishes at each rate
// of cfg.latRates for cfg.latDur.
func runLatency(ctx context.Context, t target, cfg *config) latResult {
	r := latResult{target: t, subs: cfg.latSubs}
	servers, err := startServers(t, 1, cfg)
	if err != nil {
		r.err = err
		return r
	}
	defer stopAll(servers)
	s := servers[0]
	r.mem.profile = profileName(cfg, "latency", t)
	r.mem.fresh(servers)
	clients, _, err := connectAll(ctx, protocols[t.proto], s.addr, cfg.latSubs, func(int) []int32 { return []int32{0} })
	if err != nil {
		r.err = err
		return r
	}
	time.Sleep(time.Second)
	pctx, cancel := context.WithCancel(ctx)
	peak := rssPeak(pctx, []int{s.pid()}, 200*time.Millisecond)
	var seq int64
	for i, rate := range cfg.latRates {
		var profDone chan struct{}
		if cfg.profileDir != "" && t == tRealtimeWS {
			profDone = profileCPU(s, max(1, int(cfg.latDur/time.Second)-1), cfg.profileDir, "latency-ws-cpu-"+itoa(i)+".pb.gz")
		}
		ph := latPhase{rate: rate}
		for _, c := range clients {
			c.startRecording()
		}
		before := count(clients)
		s0, load0 := s.sample(), selfCPU()
		n := int64(rate) * int64(cfg.latDur/time.Second)
		interval := time.Second / time.Duration(rate)
		start := time.Now()
		for i := range n {
			due := start.Add(time.Duration(i) * interval)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			} else if -d > interval {
				ph.behind++
			}
			seq++
			if err := publish(s.addr, 0, payload(0, seq, cfg.latSize)); err != nil {
				r.err = err
				break
			}
			ph.published++
		}
		ph.expected = ph.published * int64(len(clients))
		after := awaitDeliveries(clients, before.recv+ph.expected, 5*time.Second, 60*time.Second)
		s1 := s.sample()
		ph.serverCPU, ph.serverSys, ph.loadCPU = s1.cpu-s0.cpu, s1.sys-s0.sys, selfCPU()-load0
		if profDone != nil {
			<-profDone
		}
		ph.got = tally{recv: after.recv - before.recv, dup: after.dup - before.dup,
			reordered: after.reordered - before.reordered, closed: after.closed - before.closed}
		for _, c := range clients {
			ph.lat = append(ph.lat, c.takeLatencies()...)
		}
		slices.Sort(ph.lat)
		r.phases = append(r.phases, ph)
		if r.err != nil {
			break
		}
	}
	cancel()
	r.mem.peakKB = <-peak
	r.dropped = s.stats().Dropped
	settle(servers, clients, &r.mem, t)
	return r
}

// chanResult is scenario 4 for one target.
type chanResult struct {
	target  target
	conns   int
	phase   latPhase
	connKB  int64 // RSS with every connection joined, after a forced GC
	mem     memResult
	dropped int64
	err     error
}

// runChannels has every connection join chPer of chChannels channels at
// random and publishes to random channels at chRate for chDur.
func runChannels(ctx context.Context, t target, cfg *config) chanResult {
	r := chanResult{target: t, conns: cfg.chConns}
	servers, err := startServers(t, 1, cfg)
	if err != nil {
		r.err = err
		return r
	}
	defer stopAll(servers)
	s := servers[0]
	r.mem.profile = profileName(cfg, "channels", t)
	r.mem.fresh(servers)
	rng := rand.New(rand.NewPCG(6, 6))
	members := make([]int64, cfg.chChannels)
	memberships := make([][]int32, cfg.chConns)
	for i := range memberships {
		seen := map[int32]bool{}
		for len(memberships[i]) < cfg.chPer {
			ch := int32(rng.IntN(cfg.chChannels))
			if !seen[ch] {
				seen[ch] = true
				memberships[i] = append(memberships[i], ch)
				members[ch]++
			}
		}
	}
	clients, _, err := connectAll(ctx, protocols[t.proto], s.addr, cfg.chConns, func(i int) []int32 { return memberships[i] })
	if err != nil {
		r.err = err
		return r
	}
	time.Sleep(time.Second)
	p, _ := s.gc()
	r.connKB = p.rssKB
	pctx, cancel := context.WithCancel(ctx)
	peak := rssPeak(pctx, []int{s.pid()}, 200*time.Millisecond)
	ph := latPhase{rate: cfg.chRate}
	for _, c := range clients {
		c.startRecording()
	}
	var profDone chan struct{}
	if cfg.profileDir != "" && t == tRealtimeWS {
		profDone = profileCPU(s, max(1, int(cfg.chDur/time.Second)-1), cfg.profileDir, "channels-ws-cpu.pb.gz")
	}
	cpu0, load0 := s.sample().cpu, selfCPU()
	seqs := make([]int64, cfg.chChannels)
	n := int64(cfg.chRate) * int64(cfg.chDur/time.Second)
	interval := time.Second / time.Duration(cfg.chRate)
	// Publishes go out from a few connections at once, each channel's in
	// order from one of them.
	const lanes = 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	start := time.Now()
	for lane := range lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lrng := rand.New(rand.NewPCG(uint64(lane), 4))
			for i := int64(lane); i < n; i += lanes {
				due := start.Add(time.Duration(i) * interval)
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				ch := int32(lrng.IntN(cfg.chChannels/lanes)*lanes + lane)
				mu.Lock()
				seqs[ch]++
				seq := seqs[ch]
				ph.published++
				ph.expected += members[ch]
				mu.Unlock()
				if err := publish(s.addr, ch, payload(int(ch), seq, 128)); err != nil {
					mu.Lock()
					r.err = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	ph.got = awaitDeliveries(clients, ph.expected, 5*time.Second, 60*time.Second)
	ph.serverCPU, ph.loadCPU = s.sample().cpu-cpu0, selfCPU()-load0
	if profDone != nil {
		<-profDone
	}
	for _, c := range clients {
		ph.lat = append(ph.lat, c.takeLatencies()...)
	}
	slices.Sort(ph.lat)
	r.phase = ph
	cancel()
	r.mem.peakKB = <-peak
	r.dropped = s.stats().Dropped
	settle(servers, clients, &r.mem, t)
	return r
}

func itoa(n int) string { return strconv.Itoa(n) }

func pprofLookup(w io.Writer) { pprof.Lookup("goroutine").WriteTo(w, 2) }
