// Package e2e holds the end-to-end tests of the browser client
// (web/realtime.js) in a real Chromium, driven from Go with chromedp.
//
// The tests start their own hubs, proxies and pages on 127.0.0.1 and one
// headless Chromium per test binary; each test gets fresh browser contexts.
// They need Chromium: the program named by REALTIME_CHROMIUM, else
// /usr/bin/chromium, else chromium on PATH. Without it they skip, or fail
// when the environment variable CI is set. Install it with
//
//	apt-get install -y --no-install-recommends chromium
//
// Screenshots go to the directory named by REALTIME_ARTIFACTS, by default
// realtime-artifacts in the system's temporary directory.
package e2e
