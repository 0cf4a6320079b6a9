// Package pgtest gives a test a Postgres schema of its own, so tests of every package can run
// in parallel against the one database CI provides (MANDATE_TEST_DATABASE_URL).
//
// Without the variable the calling test is skipped; with it set, a database that does not
// answer fails the test, so CI cannot pass by skipping. It is for tests only.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandatehq/mandate/storage/postgres"
)

// EnvURL names the variable holding the test database's URL.
const EnvURL = "MANDATE_TEST_DATABASE_URL"

// BaseURL returns the test database's URL, or skips t when none is configured.
func BaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u == "" {
		t.Skip(EnvURL + " is not set; Postgres cases skipped")
	}
	return u
}

// Schema creates a fresh, empty schema, dropped when the test ends. It returns the schema's
// name and a URL whose search_path selects it (pgx passes unknown URL parameters to the
// server as settings).
func Schema(t testing.TB) (name, schemaURL string) {
	t.Helper()
	base := BaseURL(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name = "t_" + hex.EncodeToString(b[:])
	Exec(t, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() { Exec(t, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", EnvURL, err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return name, u.String()
}

// migrating serializes migrations within a test binary: goose's advisory lock is database-wide,
// and waiting on it means polling, which slows parallel tests down for nothing.
var migrating sync.Mutex

// Open returns a migrated store in a fresh schema, closed when the test ends.
func Open(t testing.TB) *postgres.Store {
	t.Helper()
	name, _ := Schema(t)
	ctx := context.Background()
	s, err := postgres.Open(ctx, BaseURL(t), postgres.Options{Schema: name, MaxConns: 4})
	if err != nil {
		t.Fatalf("postgres.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	p, err := s.Migrations()
	if err != nil {
		t.Fatalf("migrations: %v", err)
	}
	migrating.Lock()
	_, err = p.Up(ctx)
	migrating.Unlock()
	if err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	return s
}

// Exec runs one statement on its own connection to the test database.
func Exec(t testing.TB, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, BaseURL(t))
	if err != nil {
		t.Fatalf("%s is set but Postgres does not answer: %v", EnvURL, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
