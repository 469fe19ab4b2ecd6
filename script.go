package realtime

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed web/realtime.js web/realtime.d.ts
var web embed.FS

// ClientScriptHandler serves the browser client, an ES module with no
// dependencies, for any request path: mount it where pages import it, for
// example at "/realtime/realtime.js". Responses carry an ETag and ask
// browsers to revalidate, so a new server version is picked up at once
// and an unchanged script costs a 304. [NewHandler] also serves its
// TypeScript declarations as realtime.d.ts.
func ClientScriptHandler() http.Handler {
	return embeddedFile("web/realtime.js", "text/javascript; charset=utf-8")
}

func embeddedFile(name, contentType string) http.Handler {
	content, err := web.ReadFile(name)
	if err != nil {
		panic("realtime: embedded file missing: " + err.Error())
	}
	sum := sha256.Sum256(content)
	etag := `"` + hex.EncodeToString(sum[:12]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("ETag", etag)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(content))
	})
}
