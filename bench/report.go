package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// report gathers every scenario's results and renders them as markdown.
type report struct {
	cfg               *config
	started, finished time.Time
	idle              []idleResult
	fanout            []fanoutResult
	latency           []latResult
	channels          []chanResult
	crossnode         []fanoutResult
	notes             []string
}

const (
	beginMarker = "<!-- results:begin -->"
	endMarker   = "<!-- results:end -->"
)

// spliceResults replaces the results section of the document at path.
func spliceResults(path, md string) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(doc)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", path, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + md + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

func machine() string {
	var b strings.Builder
	model := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := "?"
	if info, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(v, &kb)
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(&b, "%d CPUs (%s), %s memory, Linux %s, %s %s/%s",
		runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return b.String()
}

func mb(kb int64) string { return fmt.Sprintf("%.1f", float64(kb)/1024) }

func rate(r float64) string {
	switch {
	case r >= 1e6:
		return fmt.Sprintf("%.2fM", r/1e6)
	case r >= 1e3:
		return fmt.Sprintf("%.0fk", r/1e3)
	}
	return fmt.Sprintf("%.0f", r)
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

func (rep *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("Run of %s, %s (%s).\n\n", rep.started.UTC().Format("2006-01-02 15:04 UTC"),
		rep.finished.Sub(rep.started).Round(time.Second), machine())
	p("The load generator runs on the same 2 cores as the server under test, so absolute rates are low and move between runs; compare within a run. Its CPU is listed as \"load CPU\". \"realtime ÷ this\" compares this project's WebSocket row to the row's server.\n\n")

	if len(rep.idle) > 0 {
		p("### 1. Idle connections\n\n")
		p("Each connection has joined one of 100 channels (the floor joins nothing). RSS from /proc after 3 s of quiet: as the runtime left it, and after a forced GC that returns free memory to the OS. KB are KiB. The second count, where there is one, is the most connections one process can hold here: the open-files limit less a margin (the driver holds the other ends under the same limit).\n\n")
		p("| server | conns | connect time | base RSS MB | KB/conn | KB/conn after GC | Go heap KB/conn | stacks KB/conn | goroutines | realtime ws ÷ this (after GC) | RSS after clients left MB (as is / after GC) |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range rep.idle {
			ref := rep.idleRef(r.conns)
			if r.err != nil {
				p("| %s | %d | error: %s | | | | | | | | |\n", r.target.label, r.conns, oneLine(r.err))
				continue
			}
			p("| %s | %d | %.1f s | %s | %.1f | %.1f | %.1f | %.1f | %d | %s | %s / %s |\n",
				r.target.label, r.conns, r.connectTime.Seconds(), mb(r.baseKB), r.perConnRaw(), r.perConn(),
				r.heapPerConn(), r.stackPerConn(), r.stats.Goroutines,
				ratio(ref, r.perConn()), mb(r.mem.endKB), mb(r.mem.endGCKB))
		}
		p("\n")
	}
	if len(rep.fanout) > 0 {
		p("### 2. Fan-out (6: with SSE and long-poll)\n\n")
		p("%d subscribers of one channel; %d messages of %d bytes published as fast as the server accepts them: %s, in requests of %d that the server publishes one after another. Deliveries/s counts from the first publish to the last delivery.\n\n",
			rep.cfg.fanSubs, rep.cfg.fanMsgs, rep.cfg.fanSize, publishers(rep.cfg.fanPublishers), rep.cfg.fanBatch)
		rep.fanoutTable(&b, rep.fanout, "realtime ws")
	}
	if len(rep.latency) > 0 {
		p("### 3. Latency (6: with SSE and long-poll)\n\n")
		p("%d subscribers of one channel; %d-byte messages at each rate for %s. Latency is from just before the publish request to the frame's arrival at the subscriber.\n\n",
			rep.cfg.latSubs, rep.cfg.latSize, rep.cfg.latDur)
		p("| server | msg/s | delivered / expected | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | realtime ws p99 ÷ this | server CPU s | of it in the kernel | CPU µs/delivery | load CPU s | RSS peak MB | RSS end MB (as is / after GC) |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, r := range rep.latency {
			if r.err != nil && len(r.phases) == 0 {
				p("| %s | | error: %s | | | | | | | | | | | | | |\n", r.target.label, oneLine(r.err))
				continue
			}
			for i, ph := range r.phases {
				refP99 := rep.latRef(i)
				p("| %s | %d | %d / %d | %d | %d | %s | %s | %s | %s | %s | %.2f | %.0f%% | %.2f | %.2f | %s | %s / %s |\n",
					r.target.label, ph.rate, ph.got.recv, ph.expected, ph.lost(), ph.got.dup,
					ms(ph.pct(0.5)), ms(ph.pct(0.99)), ms(ph.pct(0.999)), ms(ph.pct(1)),
					ratio(float64(refP99), float64(ph.pct(0.99))),
					ph.serverCPU, 100*ph.serverSys/max(ph.serverCPU, 1e-9), ph.serverCPU/float64(max(1, ph.got.recv))*1e6, ph.loadCPU,
					mb(r.mem.peakKB), mb(r.mem.endKB), mb(r.mem.endGCKB))
			}
			if r.err != nil {
				p("| %s | | error: %s | | | | | | | | | | | | | |\n", r.target.label, oneLine(r.err))
			}
		}
		p("\n")
	}
	if len(rep.channels) > 0 {
		c := rep.cfg
		p("### 4. Many channels\n\n")
		p("%d connections, each in %d of %d channels chosen at random (about %d members a channel); %d publishes a second to random channels for %s, 128 bytes each.\n\n",
			c.chConns, c.chPer, c.chChannels, c.chConns*c.chPer/c.chChannels, c.chRate, c.chDur)
		p("| server | publishes | delivered / expected | lost | dup | p50 ms | p99 ms | p99.9 ms | max ms | server CPU s | CPU µs/delivery | realtime ws ÷ this (CPU/delivery) | load CPU s | RSS joined MB (after GC) | RSS peak MB | RSS end MB (as is / after GC) |\n")
		p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		var ref float64
		for _, r := range rep.channels {
			if r.target == tRealtimeWS && r.err == nil {
				ref = r.phase.serverCPU / float64(max(1, r.phase.got.recv))
			}
		}
		for _, r := range rep.channels {
			if r.err != nil && r.phase.published == 0 {
				p("| %s | error: %s | | | | | | | | | | | | | | |\n", r.target.label, oneLine(r.err))
				continue
			}
			ph := r.phase
			per := ph.serverCPU / float64(max(1, ph.got.recv))
			p("| %s | %d | %d / %d | %d | %d | %s | %s | %s | %s | %.2f | %.2f | %s | %.2f | %s | %s | %s / %s |\n",
				r.target.label, ph.published, ph.got.recv, ph.expected, ph.lost(), ph.got.dup,
				ms(ph.pct(0.5)), ms(ph.pct(0.99)), ms(ph.pct(0.999)), ms(ph.pct(1)),
				ph.serverCPU, per*1e6, ratio(ref, per), ph.loadCPU, mb(r.connKB), mb(r.mem.peakKB), mb(r.mem.endKB), mb(r.mem.endGCKB))
		}
		p("\n")
	}
	if len(rep.crossnode) > 0 {
		p("### 5. Cross-node\n\n")
		p("Two server processes on the shared Redis or NATS (JetStream, a stream of this run's own, deleted after it); %d subscribers split evenly over both; %d messages of %d bytes published through the first node as fast as it accepts them. CPU and RSS are both nodes' together; the broker's own CPU is not counted.\n\n",
			rep.cfg.fanSubs, rep.cfg.fanMsgs, rep.cfg.fanSize)
		rep.fanoutTable(&b, rep.crossnode, tRealtimeRedis.label)
	}
	rep.retained(&b)
	for _, n := range rep.notes {
		p("%s\n\n", n)
	}
	rep.targets(&b)
	return b.String()
}

func publishers(n int) string {
	if n == 1 {
		return "one publisher"
	}
	return fmt.Sprintf("%d concurrent publishers (\"out of order\" counts messages that came before an earlier one of the same publisher)", n)
}

func oneLine(err error) string {
	return strings.ReplaceAll(strings.ReplaceAll(err.Error(), "|", "/"), "\n", " ")
}

func (rep *report) idleRef(conns int) float64 {
	for _, r := range rep.idle {
		if r.target == tRealtimeWS && r.conns == conns && r.err == nil {
			return r.perConn()
		}
	}
	return 0
}

func (rep *report) latRef(phase int) time.Duration {
	for _, r := range rep.latency {
		if r.target == tRealtimeWS && phase < len(r.phases) {
			return r.phases[phase].pct(0.99)
		}
	}
	return 0
}

func (rep *report) fanoutTable(b *strings.Builder, rows []fanoutResult, refLabel string) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	var refRate, refCPU float64
	for _, r := range rows {
		if r.target.label == refLabel && r.err == nil {
			refRate, refCPU = r.rate(), r.cpuPerDelivery()
		}
	}
	p("| server | delivered / expected | lost | dup | out of order | dropped by server | deliveries/s (median) | every run | %s ÷ this (rate) | publish time s | delivery time s | server CPU s | CPU µs/delivery | %s ÷ this (CPU/delivery) | load CPU s | base RSS MB | RSS peak MB | RSS end MB (as is / after GC) |\n", refLabel, refLabel)
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		if r.err != nil && r.got.recv == 0 {
			p("| %s | error: %s | | | | | | | | | | | | | | | | |\n", r.target.label, oneLine(r.err))
			continue
		}
		var runs []string
		for _, x := range r.rates {
			runs = append(runs, rate(x))
		}
		p("| %s | %d / %d | %d | %d | %d | %d | %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %s | %.2f | %s | %s | %s / %s |\n",
			r.target.label, r.got.recv, r.expected, r.lost(), r.got.dup, r.got.reordered, r.dropped, rate(r.rate()), strings.Join(runs, ", "),
			ratio(refRate, r.rate()), r.publish.Seconds(), r.elapsed.Seconds(), r.serverCPU, r.cpuPerDelivery(),
			ratio(refCPU, r.cpuPerDelivery()), r.loadCPU, mb(r.mem.baseKB), mb(r.mem.peakKB), mb(r.mem.endKB), mb(r.mem.endGCKB))
		if r.err != nil {
			p("| %s | error: %s | | | | | | | | | | | | | | | | |\n", r.target.label, oneLine(r.err))
		}
	}
	p("\n")
}

// targets checks the targets against this run.
func (rep *report) targets(b *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	type row struct{ target, measured, verdict string }
	var rows []row
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**not met**"
	}
	for _, r := range rep.idle {
		if r.err != nil {
			continue
		}
		switch r.target {
		case tRealtimeWS:
			rows = append(rows, row{fmt.Sprintf("idle WebSocket ≤ 12 KB/conn (%d connections)", r.conns), fmt.Sprintf("%.1f KB after GC, %.1f KB as is", r.perConn(), r.perConnRaw()), verdict(r.perConn() <= 12)})
		case tRealtimeSSE:
			rows = append(rows, row{fmt.Sprintf("idle SSE (HTTP/1.1) ≤ 16 KB/conn (%d connections)", r.conns), fmt.Sprintf("%.1f KB after GC, %.1f KB as is", r.perConn(), r.perConnRaw()), verdict(r.perConn() <= 16)})
		}
	}
	find := func(rows []fanoutResult, t target) *fanoutResult {
		for i := range rows {
			if rows[i].target == t && rows[i].err == nil && rows[i].got.recv > 0 {
				return &rows[i]
			}
		}
		return nil
	}
	if ws, cf := find(rep.fanout, tRealtimeWS), find(rep.fanout, tCentrifuge); ws != nil && cf != nil {
		x := ws.rate() / cf.rate()
		rows = append(rows, row{"fan-out ≥ 2× centrifuge deliveries/s", fmt.Sprintf("%.2f× (%s vs %s)", x, rate(ws.rate()), rate(cf.rate())), verdict(x >= 2)})
		y := ws.cpuPerDelivery() / cf.cpuPerDelivery()
		rows = append(rows, row{"fan-out CPU/delivery ≤ ½ centrifuge's", fmt.Sprintf("%.2f× (%.2f vs %.2f µs)", y, ws.cpuPerDelivery(), cf.cpuPerDelivery()), verdict(y <= 0.5)})
	}
	for i := range rep.cfg.latRates {
		var ws, cf *latPhase
		for _, r := range rep.latency {
			if i >= len(r.phases) {
				continue
			}
			switch r.target {
			case tRealtimeWS:
				ws = &r.phases[i]
			case tCentrifuge:
				cf = &r.phases[i]
			}
		}
		if ws != nil && cf != nil && cf.pct(0.99) > 0 {
			x := float64(ws.pct(0.99)) / float64(cf.pct(0.99))
			rows = append(rows, row{fmt.Sprintf("latency p99 ≤ ½ centrifuge's at %d msg/s", ws.rate),
				fmt.Sprintf("%.2f× (%s vs %s ms)", x, ms(ws.pct(0.99)), ms(cf.pct(0.99))), verdict(x <= 0.5)})
		}
	}
	for _, t := range []target{tRealtimeRedis, tRealtimeNATS} {
		if rr, cr := find(rep.crossnode, t), find(rep.crossnode, tCentrifugeRedis); rr != nil && cr != nil {
			x := rr.rate() / cr.rate()
			rows = append(rows, row{"cross-node ≥ 1.5× centrifuge + Redis (" + t.label + ")",
				fmt.Sprintf("%.2f× (%s vs %s)", x, rate(rr.rate()), rate(cr.rate())), verdict(x >= 1.5)})
		}
	}
	if lp, ws := find(rep.fanout, tRealtimePoll), find(rep.fanout, tRealtimeWS); lp != nil && ws != nil {
		x := lp.rate() / ws.rate()
		rows = append(rows, row{"long-poll fan-out loses nothing, ≥ ⅓ of WebSocket", fmt.Sprintf("lost %d; %.2f× of WebSocket", lp.lost(), x), verdict(lp.lost() == 0 && x >= 1.0/3)})
	}
	// Zero loss and flat memory for this project's rows.
	var lost int64
	var worst string
	var worstGrowth float64
	var worstMem memResult
	check := func(label string, l int64, m memResult) {
		lost += max(0, l)
		if m.baseKB > 0 && m.peakKB > m.baseKB {
			// What stays, as a share of what the load added.
			g := float64(m.endGCKB-m.baseKB) / float64(m.peakKB-m.baseKB)
			if worst == "" || g > worstGrowth {
				worst, worstGrowth, worstMem = label, g, m
			}
		}
	}
	for _, r := range rep.idle {
		if r.target.server == "realtime" && r.err == nil {
			check(fmt.Sprintf("idle %s %d", r.target.label, r.conns), 0, r.mem)
		}
	}
	for _, r := range rep.fanout {
		if r.target.server == "realtime" {
			check("fan-out "+r.target.label, r.lost(), r.mem)
		}
	}
	for _, r := range rep.latency {
		if r.target.server == "realtime" {
			for _, ph := range r.phases {
				check(fmt.Sprintf("latency %s %d msg/s", r.target.label, ph.rate), ph.lost(), r.mem)
			}
		}
	}
	for _, r := range rep.channels {
		if r.target.server == "realtime" {
			check("channels "+r.target.label, r.phase.lost(), r.mem)
		}
	}
	for _, r := range rep.crossnode {
		if strings.HasPrefix(r.target.server, "realtime") {
			check("cross-node "+r.target.label, r.lost(), r.mem)
		}
	}
	if worst != "" {
		rows = append(rows, row{"every scenario of this project: zero loss", fmt.Sprintf("%d deliveries lost in all", lost), verdict(lost == 0)})
		measured := fmt.Sprintf("at worst %.0f%% stays (%s: %s MB fresh, %s MB peak, %s MB after)", worstGrowth*100, worst,
			mb(worstMem.baseKB), mb(worstMem.peakKB), mb(worstMem.endGCKB))
		if worstMem.endMem.Total > 0 {
			measured += fmt.Sprintf("; of it %.1f MB live heap objects, goroutine structures included, the rest held by the runtime (see \"What stays after the load\")",
				(float64(worstMem.endMem.HeapObjects)-float64(worstMem.baseMem.HeapObjects))/(1<<20))
		}
		rows = append(rows, row{"RSS flat after load ends: after the clients left and a GC, at most 10% of what the load added stays",
			measured, verdict(worstGrowth <= 0.10)})
	}
	if len(rows) == 0 {
		return
	}
	p("### Targets of issue 6 in this run\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, r := range rows {
		p("| %s | %s | %s |\n", r.target, r.measured, r.verdict)
	}
	p("\n")
}

// retained splits what stays of this project's servers after each
// scenario (the clients gone, a forced GC) by what holds it, from the
// runtime's own account (runtime/metrics): the difference from the fresh
// server.
func (rep *report) retained(b *strings.Builder) {
	type row struct {
		label string
		m     memResult
	}
	var rows []row
	add := func(scenario string, t target, m memResult) {
		if m.baseMem.Total > 0 && m.endMem.Total > 0 {
			rows = append(rows, row{scenario + ": " + t.label, m})
		}
	}
	for _, r := range rep.idle {
		add(fmt.Sprintf("idle %d", r.conns), r.target, r.mem)
	}
	for _, r := range rep.fanout {
		add("fan-out", r.target, r.mem)
	}
	for _, r := range rep.latency {
		add("latency", r.target, r.mem)
	}
	for _, r := range rep.channels {
		add("channels", r.target, r.mem)
	}
	for _, r := range rep.crossnode {
		add("cross-node", r.target, r.mem)
	}
	if len(rows) == 0 {
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("### What stays after the load\n\n")
	p("Each server after its clients left and a forced GC, against the same server fresh: the RSS from /proc that stays, split by the runtime's account of its memory (runtime/metrics, /memory/classes; differences in MiB). " +
		"\"heap objects\" is live data, including one goroutine structure (480 B) for every goroutine that ever ran at the same time: the runtime keeps them for good. " +
		"\"heap unused\" is free room in spans that still hold a live object (fragmentation). " +
		"\"stacks\" are goroutine stacks, of the goroutines left and those the runtime keeps cached. \"runtime metadata\" is span structures, which the runtime never frees, and GC bookkeeping. " +
		"\"poller and other\" is mostly the network poller's descriptor of every connection that was open at once, also never freed (about 580 B per connection). " +
		"\"not counted\" is RSS outside the runtime's account: the binary's pages, thread stacks.\n\n")
	p("| scenario | RSS fresh MB | RSS peak MB | RSS after MB | stays MB | stays %% of added | heap objects | heap unused | heap free | stacks | runtime metadata | poller and other | not counted | goroutines created | OS threads |\n")
	p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	d := func(a, b uint64) string { return fmt.Sprintf("%+.1f", (float64(a)-float64(b))/(1<<20)) }
	for _, r := range rows {
		m := r.m
		stays := m.endGCKB - m.baseKB
		share := "–"
		if m.peakKB > m.baseKB {
			share = fmt.Sprintf("%.0f%%", 100*float64(stays)/float64(m.peakKB-m.baseKB))
		}
		resident := float64(m.endMem.resident()) - float64(m.baseMem.resident())
		uncounted := float64(stays)*1024 - resident
		e, f := m.endMem, m.baseMem
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %+.1f | %d | %d → %d |\n",
			r.label, mb(m.baseKB), mb(m.peakKB), mb(m.endGCKB), mb(stays), share,
			d(e.HeapObjects, f.HeapObjects), d(e.HeapUnused, f.HeapUnused), d(e.HeapFree, f.HeapFree),
			d(e.Stacks, f.Stacks), d(e.Metadata, f.Metadata), d(e.Other+e.OSStacks+e.Profiling, f.Other+f.OSStacks+f.Profiling),
			uncounted/(1<<20), e.Created-f.Created, f.Threads, e.Threads)
	}
	p("\n")
}
