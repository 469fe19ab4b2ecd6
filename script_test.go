package realtime_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The browser client stays small, and is served with validators.
func TestClientScriptServed(t *testing.T) {
	t.Parallel()
	th := newTestHub(t, nil, nil)
	resp, err := http.Get(th.base + "realtime.js")
	require.NoError(t, err)
	script, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "text/javascript; charset=utf-8", resp.Header.Get("Content-Type"))
	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)

	req, _ := http.NewRequest(http.MethodGet, th.base+"realtime.js", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)

	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write(script)
	w.Close()
	t.Logf("realtime.js: %d bytes, %d gzipped", len(script), gz.Len())
	assert.Less(t, gz.Len(), 12<<10, "the client grew past its size budget")

	resp, err = http.Get(th.base + "realtime.d.ts")
	require.NoError(t, err)
	types, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(types), "connect")
}
