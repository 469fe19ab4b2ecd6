package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestChat runs the chat example (examples/chat, built and started as its
// own process) and has two people talk in it, with the transport the page
// negotiates and with each one forced by ?transport=. It saves
// screenshots of the chat page as test artifacts (chat.png and
// chat-<transport>.png).
func TestChat(t *testing.T) {
	browserCtx(t) // skip early without a browser, before building
	url := startChat(t)
	for _, force := range []string{"", "websocket", "sse", "longpoll"} {
		t.Run(cmp.Or(force, "negotiated"), func(t *testing.T) {
			t.Parallel()
			// A room per case, as the cases share one server.
			want, query, room := "websocket", "", "#general"
			if force != "" {
				want, query, room = force, "?transport="+force, "#"+force
			}
			alice, bob := newTab(t, "alice", nil), newTab(t, "bob", nil)
			for _, tb := range []*tab{alice, bob} {
				tb.signIn(url + "/" + query + room)
			}
			for _, tb := range []*tab{alice, bob} {
				tb.wait(`document.getElementById('status').dataset.state === 'connected' &&
					document.getElementById('room-state').textContent === ''`, connectTimeout, "the chat to connect and join "+room)
			}
			alice.say("hello bob, over " + want)
			bob.wait(fmt.Sprintf(`[...document.querySelectorAll('#messages .text')].some((e) => e.textContent === %q)`,
				"hello bob, over "+want), 10*time.Second, "alice's message")
			bob.say("hi alice")
			alice.wait(`[...document.querySelectorAll('#messages .text')].some((e) => e.textContent === 'hi alice')`,
				10*time.Second, "bob's message")
			for _, tb := range []*tab{alice, bob} {
				status := eval[string](tb, `document.getElementById('status-text').textContent`)
				assert.Equal(t, "connected · "+want, status, "%s: the page shows the transport in use", tb.name)
			}
			alice.screenshot(strings.TrimSuffix("chat-"+force, "-"))
		})
	}
}

// signIn opens the chat at url and enters the tab's name in the dialog.
func (tb *tab) signIn(url string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	err := chromedp.Do(ctx,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS("#name-input")),
		chromedp.SendKeys(chromedp.CSS("#name-input"), tb.name),
		chromedp.Click(chromedp.CSS("#name-form button[type=submit]")),
	)
	require.NoError(tb.t, err, "%s: signing in to the chat", tb.name)
}

// say posts text in the chat's composer.
func (tb *tab) say(text string) {
	tb.t.Helper()
	tb.wait(`!document.getElementById('text').disabled`, connectTimeout, "the composer to be enabled")
	ctx, cancel := context.WithTimeout(tb.ctx, evalTimeout)
	defer cancel()
	err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#text"), text),
		chromedp.Click(chromedp.CSS("#send")),
	)
	require.NoError(tb.t, err, "%s: posting", tb.name)
}

// startChat builds examples/chat and runs it on a free port of 127.0.0.1
// until the test ends; it returns the chat's URL.
func startChat(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "chat")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./examples/chat")
	build.Dir = ".."
	out, err := build.CombinedOutput()
	require.NoError(t, err, "building the chat example: %s", out)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()

	var logs syncBuffer
	cmd := exec.Command(bin, "-addr", addr)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			assert.NoError(t, err, "the chat server's exit")
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Error("the chat server did not stop within 15 s of SIGINT")
		}
		if t.Failed() {
			t.Logf("chat server log:\n%s", logs.String())
		}
	})

	url := "http://" + addr
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 15*time.Second, 20*time.Millisecond, "the chat server to answer")
	return url
}

// syncBuffer is a bytes.Buffer for several writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
