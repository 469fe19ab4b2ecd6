// Command bench measures this project's hub against the libraries its
// users would pick instead, in the same run on the same machine: memory
// per idle connection, fan-out throughput and CPU per delivery, delivery
// latency, many channels, and two nodes on a real broker. See
// BENCHMARKS.md.
//
// Every server runs in a process of its own (this executable with
// -server), so that the memory and CPU read from /proc are the server's
// alone; this process drives the scenarios and is the load generator.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	var (
		serverName = flag.String("server", "", "run as the named server instead of driving the benchmark")
		listen     = flag.String("listen", "127.0.0.1:0", "server mode: listen address")
		scenarios  = flag.String("scenarios", "all", "comma-separated: idle, fanout, latency, channels, crossnode, transports; or all")
		redisAddr  = flag.String("redis", "127.0.0.1:6379", "Redis for the cross-node scenario")
		natsURL    = flag.String("nats", "nats://127.0.0.1:4222", "NATS for the cross-node scenario")
		prefix     = flag.String("prefix", "", "key prefix on the shared broker (default: one per run)")
		out        = flag.String("out", "results", "directory for latest.md and profiles")
		doc        = flag.String("doc", "BENCHMARKS.md", "file whose results section a run of all scenarios replaces (empty: none)")
		profile    = flag.Bool("profile", false, "save pprof profiles in -out: this project's idle heap and its fan-out, latency, many-channels and cross-node CPU, and every server's heap fresh and after its clients left")
		peers      = flag.Bool("peers", true, "measure the peers too (false: this project only)")

		cfg config
	)
	flag.IntVar(&cfg.idleConns, "idle-conns", 10000, "scenario 1: idle connections")
	flag.IntVar(&cfg.idleMax, "idle-max", 0, "scenario 1: also this many, the most a process may hold (0: the open-files limit less a margin; negative: none)")
	flag.IntVar(&cfg.fanSubs, "fanout-subs", 1000, "scenarios 2 and 5: subscribers of the channel")
	flag.IntVar(&cfg.fanMsgs, "fanout-msgs", 2000, "scenarios 2 and 5: messages published")
	flag.IntVar(&cfg.fanSize, "fanout-size", 128, "scenarios 2 and 5: payload bytes")
	flag.IntVar(&cfg.fanBatch, "fanout-batch", 100, "scenarios 2 and 5: payloads per publish request to the server, which publishes them one after another")
	flag.IntVar(&cfg.fanPublishers, "fanout-publishers", 4, "scenarios 2 and 5: concurrent publishers (above 1 the channel's order is not checked)")
	flag.IntVar(&cfg.fanRuns, "fanout-runs", 3, "scenarios 2 and 5: runs of each server; the table shows the median")
	flag.IntVar(&cfg.latSubs, "latency-subs", 10000, "scenario 3: subscribers of the channel")
	flag.IntVar(&cfg.latSize, "latency-size", 256, "scenario 3: payload bytes")
	rates := flag.String("latency-rates", "5,20", "scenario 3: messages per second, one phase each")
	flag.DurationVar(&cfg.latDur, "latency-duration", 20*time.Second, "scenario 3: length of each phase")
	flag.IntVar(&cfg.chConns, "channels-conns", 10000, "scenario 4: connections")
	flag.IntVar(&cfg.chChannels, "channels-count", 1000, "scenario 4: channels")
	flag.IntVar(&cfg.chPer, "channels-per-conn", 5, "scenario 4: channels each connection joins")
	flag.IntVar(&cfg.chRate, "channels-rate", 2000, "scenario 4: publishes per second to random channels")
	flag.DurationVar(&cfg.chDur, "channels-duration", 10*time.Second, "scenario 4: publishing time")
	flag.Parse()

	if *serverName != "" {
		err := runServer(serverConfig{name: *serverName, listen: *listen, redis: *redisAddr, nats: *natsURL, prefix: *prefix})
		log.Fatalf("server %s: %v", *serverName, err)
	}

	for _, s := range strings.Split(*rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || r <= 0 {
			log.Fatalf("bad -latency-rates %q", *rates)
		}
		cfg.latRates = append(cfg.latRates, r)
	}
	cfg.redis, cfg.nats, cfg.prefix, cfg.peers = *redisAddr, *natsURL, *prefix, *peers
	if cfg.prefix == "" {
		cfg.prefix = fmt.Sprintf("rtbench%d", time.Now().Unix())
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	if *profile {
		cfg.profileDir = *out
	}

	want := map[string]bool{}
	all := *scenarios == "all"
	if all {
		for _, s := range []string{"idle", "fanout", "latency", "channels", "crossnode"} {
			want[s] = true
		}
		cfg.transports = []target{tRealtimeWS, tRealtimeSSE, tRealtimePoll}
	} else {
		cfg.transports = []target{tRealtimeWS}
		for _, s := range strings.Split(*scenarios, ",") {
			s = strings.TrimSpace(s)
			switch s {
			case "idle", "fanout", "latency", "channels", "crossnode":
				want[s] = true
			case "transports":
				want["fanout"], want["latency"] = true, true
				cfg.transports = []target{tRealtimeWS, tRealtimeSSE, tRealtimePoll}
			default:
				log.Fatalf("unknown scenario %q", s)
			}
		}
	}

	rep := &report{cfg: &cfg, started: time.Now()}
	ctx := context.Background()
	latest := filepath.Join(*out, "latest.md")
	progress := func(format string, args ...any) {
		// What is measured so far survives a run that stops early.
		rep.finished = time.Now()
		os.WriteFile(latest, []byte(rep.markdown()), 0o644)
		fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	loadTargets := func(withTransports bool) []target {
		var ts []target
		if withTransports {
			ts = append(ts, cfg.transports...)
		} else {
			ts = append(ts, tRealtimeWS)
		}
		if cfg.peers {
			ts = append(ts, tCentrifuge, tMelody, tCoalesce)
		}
		return ts
	}

	if want["idle"] {
		ts := []target{tRealtimeWS, tRealtimeSSE, tRealtimePoll}
		if cfg.peers {
			ts = append(ts, tCentrifuge, tMelody, tCoalesce, tFloor)
		}
		counts := []int{cfg.idleConns}
		if most := idleMost(cfg.idleMax); most > cfg.idleConns {
			counts = append(counts, most)
		}
		for _, n := range counts {
			for _, t := range ts {
				progress("idle: %s, %d connections", t.label, n)
				r := runIdle(ctx, t, n, &cfg)
				logErr(r.err)
				rep.idle = append(rep.idle, r)
				pause()
			}
		}
	}
	if want["fanout"] {
		for _, t := range loadTargets(true) {
			progress("fanout: %s, %d subscribers, %d messages", t.label, cfg.fanSubs, cfg.fanMsgs)
			r := repeatFanout(ctx, t, 1, cfg.fanSubs, cfg.fanMsgs, cfg.fanSize, cfg.fanRuns, &cfg)
			logErr(r.err)
			rep.fanout = append(rep.fanout, r)
			pause()
		}
	}
	if want["latency"] {
		for _, t := range loadTargets(true) {
			progress("latency: %s, %d subscribers, rates %v", t.label, cfg.latSubs, cfg.latRates)
			r := runLatency(ctx, t, &cfg)
			logErr(r.err)
			rep.latency = append(rep.latency, r)
			pause()
		}
	}
	if want["channels"] {
		for _, t := range loadTargets(false) {
			progress("channels: %s, %d connections in %d of %d channels", t.label, cfg.chConns, cfg.chPer, cfg.chChannels)
			r := runChannels(ctx, t, &cfg)
			logErr(r.err)
			rep.channels = append(rep.channels, r)
			pause()
		}
	}
	if want["crossnode"] {
		ts := []target{tRealtimeRedis}
		if err := checkNATS(cfg.nats); err != nil {
			rep.notes = append(rep.notes, "Cross-node over NATS skipped: "+err.Error()+".")
		} else {
			ts = append(ts, tRealtimeNATS)
		}
		if cfg.peers {
			ts = append(ts, tCentrifugeRedis)
		}
		for _, t := range ts {
			progress("crossnode: %s, 2 nodes, %d subscribers, %d messages", t.label, cfg.fanSubs, cfg.fanMsgs)
			r := repeatFanout(ctx, t, 2, cfg.fanSubs, cfg.fanMsgs, cfg.fanSize, cfg.fanRuns, &cfg)
			logErr(r.err)
			rep.crossnode = append(rep.crossnode, r)
			pause()
			if t == tRealtimeNATS {
				if err := removeNATSStream(cfg.nats, cfg.prefix); err != nil {
					progress("could not remove the NATS stream %s: %v", cfg.prefix, err)
				}
			}
		}
	}
	rep.finished = time.Now()

	md := rep.markdown()
	fmt.Print(md)
	if err := os.WriteFile(latest, []byte(md), 0o644); err != nil {
		log.Fatal(err)
	}
	if all && *doc != "" {
		if err := spliceResults(*doc, md); err != nil {
			log.Fatal(err)
		}
		progress("results written to %s", *doc)
	}
}

func logErr(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "    error: %v\n", err)
	}
}

// pause lets sockets of the last run leave TIME_WAIT and the machine
// cool down between runs.
func pause() { time.Sleep(2 * time.Second) }
