package main

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
	"github.com/realtimekit/realtime/backplanetest"
)

// TestCluster runs three hubs on one database behind a round-robin
// proxy, with clients of every transport.
func TestCluster(t *testing.T) {
	pool := testPool(t, nil)
	backplanetest.RunCluster(t, func(t *testing.T) backplanetest.NewNode {
		prefix := uniquePrefix(t, pool)
		return func() realtime.Backplane { return newNode(t, pool, Options{Prefix: prefix}) }
	})
}

// TestOutage cuts the database away from two nodes through a proxy and
// brings it back.
func TestOutage(t *testing.T) {
	shared := testPool(t, nil)
	cfg := shared.Config().ConnConfig
	proxy := backplanetest.NewProxy(t, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	host, port, err := net.SplitHostPort(proxy.Addr())
	require.NoError(t, err)
	pool := testPool(t, func(c *pgxpool.Config) {
		c.ConnConfig.Host = host
		p, _ := strconv.Atoi(port)
		c.ConnConfig.Port = uint16(p)
		c.ConnConfig.ConnectTimeout = time.Second
	})
	prefix := uniquePrefix(t, shared)
	backplanetest.RunOutage(t, backplanetest.Outage{
		NewNode: func() realtime.Backplane { return newNode(t, pool, Options{Prefix: prefix}) },
		Cut:     func(*testing.T) { proxy.Cut() },
		Restore: func(t *testing.T) { proxy.Restore(t) },
	})
}
