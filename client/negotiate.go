package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Auto, as Options.Transport, makes the client negotiate: the URL given
// to Dial is where the hub is mounted (realtime.NewHandler), the client
// asks it which transports it offers, and tries them in the server's
// order (WebSocket, SSE, long-polling), each for up to attemptTimeout,
// until one delivers the welcome. It does so again on every reconnect.
const Auto = "auto"

// attemptTimeout bounds one transport's try under Auto.
const attemptTimeout = 5 * time.Second

// offer is one transport the server offers.
type offer struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// negotiate asks the hub mounted at mount which transports it offers.
func negotiate(ctx context.Context, mount string, o *Options) ([]offer, error) {
	u, err := url.Parse(mount)
	if err != nil {
		return nil, err
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/negotiate"
	if strings.HasPrefix(u.Scheme, "ws") {
		u.Scheme = "http" + strings.TrimPrefix(u.Scheme, "ws")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, v := range o.Header {
		req.Header[k] = v
	}
	resp, err := o.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("negotiate: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var n struct {
		Transports []offer `json:"transports"`
	}
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, fmt.Errorf("negotiate: %w", err)
	}
	if len(n.Transports) == 0 {
		return nil, errors.New("negotiate: the server offers no transport")
	}
	return n.Transports, nil
}

// endpoint returns the URL of a transport's endpoint under mount.
func endpoint(mount string, of offer) string {
	u, err := url.Parse(mount)
	if err != nil {
		return mount
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + of.Path
	return u.String()
}

// dialAuto negotiates and tries each offered transport in turn.
func (c *Client) dialAuto(ctx context.Context, cursor string) (link, wireMessage, string, error) {
	offers, err := negotiate(ctx, c.url, &c.opts)
	if err != nil {
		return nil, wireMessage{}, "", err
	}
	var errs []error
	for _, of := range offers {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		l, welcome, err := c.dialTransport(actx, of.Name, endpoint(c.url, of), cursor)
		cancel()
		if err == nil {
			return l, welcome, of.Name, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", of.Name, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, wireMessage{}, "", errors.Join(errs...)
}
