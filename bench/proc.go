package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/<pid>/stat.
const clockTicks = 100

// procSample is a process's resident memory and CPU time so far.
type procSample struct {
	rssKB int64
	cpu   float64 // seconds, user and system
	sys   float64 // seconds of it in the kernel
}

func readProc(pid int) (procSample, error) {
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				s.rssKB, _ = strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name, which is in parentheses and may
	// contain spaces.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) > 13 {
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		s.cpu = float64(ut+st) / clockTicks
		s.sys = float64(st) / clockTicks
	}
	return s, nil
}

// server is a server process started by the driver.
type server struct {
	name string
	cmd  *exec.Cmd
	addr string // host:port
	http *http.Client
}

// startServer runs this executable in server mode and waits until it
// answers.
func startServer(name string, extra ...string) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-server", name, "-listen", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{name: name, cmd: cmd, http: &http.Client{Timeout: 30 * time.Second}}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		s.stop()
		return nil, fmt.Errorf("server %s did not start: %q %v", name, line, err)
	}
	s.addr = addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := s.http.Get("http://" + addr + "/bench/ready")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("server %s not ready: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) sample() procSample {
	p, _ := readProc(s.pid())
	return p
}

// gc has the server collect garbage and return free memory to the OS,
// then samples it.
func (s *server) gc() (procSample, serverStats) {
	var st serverStats
	resp, err := s.http.Post("http://"+s.addr+"/bench/gc", "", nil)
	if err == nil {
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	return s.sample(), st
}

func (s *server) stats() serverStats {
	var st serverStats
	resp, err := s.http.Get("http://" + s.addr + "/bench/stats")
	if err == nil {
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	return st
}

// stop kills the server process by its PID and reaps it.
func (s *server) stop() {
	if s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

// rssPeak samples a set of processes every interval until ctx ends and
// reports the highest summed RSS.
func rssPeak(ctx context.Context, pids []int, interval time.Duration) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			var sum int64
			for _, pid := range pids {
				p, _ := readProc(pid)
				sum += p.rssKB
			}
			peak = max(peak, sum)
			select {
			case <-ctx.Done():
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}
