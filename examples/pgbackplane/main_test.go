package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const startPostgres = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

// testDSN is the database the tests use: REALTIME_PG_DSN, or the local
// default of the example.
func testDSN() string {
	if dsn := os.Getenv("REALTIME_PG_DSN"); dsn != "" {
		return dsn
	}
	return defaultDSN
}

// testPool returns a pool on the test database, closed when the test
// ends; configure, if not nil, may change its settings first. Without a
// reachable PostgreSQL it skips the test, or fails it when CI is true.
func testPool(t *testing.T, configure func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testDSN())
	require.NoError(t, err)
	if configure != nil {
		configure(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		msg := "no PostgreSQL at " + cfg.ConnConfig.Host + " (" + err.Error() + "); start one with: " + startPostgres +
			", or set REALTIME_PG_DSN"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return pool
}

// uniquePrefix returns a table prefix no other test uses, whose tables
// are dropped when the test ends (after the nodes made later are closed).
func uniquePrefix(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	prefix := "rt_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+
			prefix+"_channels, "+prefix+"_messages, "+prefix+"_nodes, "+prefix+"_direct")
		if err != nil {
			t.Errorf("drop tables of %s: %v", prefix, err)
		}
	})
	return prefix
}

// newNode returns a new node on pool with opts, closed when the test ends.
func newNode(t *testing.T, pool *pgxpool.Pool, opts Options) *Backplane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bp, err := New(ctx, pool, &opts)
	require.NoError(t, err)
	t.Cleanup(func() { bp.Close() })
	return bp
}
