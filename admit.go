package realtime

import (
	"errors"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// Admit applies the hub's origin policy and Options.Authenticate to a
// request that would open a connection. On success it returns the
// connection's Identity. Otherwise it writes the refusal (403 for a
// foreign origin or ErrForbidden, 401 for other authentication errors,
// 503 while the hub shuts down) and returns false. HTTP transports call
// it before upgrading or streaming.
func (h *Hub) Admit(w http.ResponseWriter, r *http.Request) (Identity, bool) {
	h.mu.RLock()
	closing := h.closing
	h.mu.RUnlock()
	if closing {
		http.Error(w, "realtime: server shutting down", http.StatusServiceUnavailable)
		return Identity{}, false
	}
	if err := h.CheckOrigin(r); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return Identity{}, false
	}
	if h.opts.Authenticate == nil {
		return Identity{}, true
	}
	id, err := h.opts.Authenticate(r)
	if err != nil {
		status := http.StatusUnauthorized
		if errors.Is(err, ErrForbidden) {
			status = http.StatusForbidden
		}
		http.Error(w, err.Error(), status)
		return Identity{}, false
	}
	return id, true
}

// errOrigin is returned for a request from an origin that may not connect.
var errOrigin = errors.New("realtime: origin not allowed")

// CheckOrigin reports whether r comes from a page that may connect: one
// without an Origin header (not a browser), one of the request's own
// host, or one that Options.OriginPatterns allows.
func (h *Hub) CheckOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return errOrigin
	}
	if strings.EqualFold(u.Host, r.Host) {
		return nil
	}
	for _, pattern := range h.opts.OriginPatterns {
		target := u.Host
		if strings.Contains(pattern, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(target)); ok {
			return nil
		}
	}
	return errOrigin
}
