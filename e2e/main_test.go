package e2e

import (
	"context"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(stopsBrowser{m})
}

// stopsBrowser runs the tests and then stops the shared browser, so that
// the leak check after it sees none of the browser's goroutines.
type stopsBrowser struct{ m *testing.M }

func (s stopsBrowser) Run() int {
	code := s.m.Run()
	stopBrowser()
	return code
}

// installHint says how to get the browser these tests need.
const installHint = "apt-get install -y --no-install-recommends chromium"

// browser is the one Chromium of this test binary, started by the first
// test that needs it.
var browser struct {
	once sync.Once
	ctx  context.Context // the chromedp context that owns the browser
	stop func()
	err  error
}

// chromiumPath returns where Chromium is, or "" if it is not installed:
// $REALTIME_CHROMIUM if set, else /usr/bin/chromium, else chromium on PATH.
func chromiumPath() string {
	if p := os.Getenv("REALTIME_CHROMIUM"); p != "" {
		if p, err := exec.LookPath(p); err == nil {
			return p
		}
		return ""
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// browserCtx returns the context of the shared browser, starting it on
// first use. Without a browser the test is skipped, or fails under CI.
func browserCtx(t testing.TB) context.Context {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		msg := "Chromium is not installed (no $REALTIME_CHROMIUM, /usr/bin/chromium or chromium on PATH); install it with: " + installHint
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	browser.once.Do(func() { browser.ctx, browser.stop, browser.err = startBrowser(path) })
	require.NoError(t, browser.err, "starting Chromium at %s", path)
	return browser.ctx
}

func startBrowser(path string) (context.Context, func(), error) {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // the tests may run as root
		chromedp.DisableGPU,
		// The HTTP/2 test serves a self-signed certificate.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1024, 720),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-proxy-server", true),
		// Every page is on 127.0.0.1: resolve no host name at all.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	// No timeout here: the context of the first Run bounds the browser's life.
	if err := chromedp.Do(bctx); err != nil {
		bcancel()
		acancel()
		return nil, nil, err
	}
	stop := func() {
		ctx, cancel := context.WithTimeout(bctx, 15*time.Second)
		chromedp.Cancel(ctx)
		cancel()
		bcancel()
		acancel()
	}
	return bctx, stop, nil
}

func stopBrowser() {
	if browser.stop != nil {
		browser.stop()
	}
}
