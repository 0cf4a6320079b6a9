package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/mandatehq/mandate/migrations"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
	"github.com/mandatehq/mandate/storage/storagetest"
)

func open(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// rawProvider opens the file at path without a store, for tests that migrate it by hand.
func rawProvider(t *testing.T, path string) (*sql.DB, *goose.Provider) {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p, err := migrations.NewProvider(migrations.SQLite, db)
	if err != nil {
		t.Fatal(err)
	}
	return db, p
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return open(t, filepath.Join(t.TempDir(), "m.db"))
	})
}

// TestConformanceShared runs the cases that need two processes' handles on one file.
func TestConformanceShared(t *testing.T) {
	storagetest.RunShared(t, func(t *testing.T) (storage.Store, storage.Store) {
		path := filepath.Join(t.TempDir(), "m.db")
		return open(t, path), open(t, path)
	})
}

// The server's second start reuses the file: the data is there and the schema is current.
func TestReopenKeepsData(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "mandate.db")
	now := time.Now().UTC().Truncate(time.Microsecond)

	first, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatalf("first Open: %v", err)
	}
	c := &storage.Client{ID: "cli_1", Name: "kept", AllowedScopes: []string{"a"}, CreatedAt: now, UpdatedAt: now}
	if err := first.CreateClient(ctx, c); err != nil {
		t.Fatalf("CreateClient: %v", err)
	}
	if err := first.MarkUsed(ctx, storage.ReplayMark{Key: "k", ExpiresAt: now.Add(time.Hour)}, now); err != nil {
		t.Fatalf("MarkUsed: %v", err)
	}
	// The file is in WAL mode, which lets reads run alongside the writer.
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Errorf("no write-ahead log next to the database file: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	second := open(t, path)
	got, err := second.GetClient(ctx, "cli_1")
	if err != nil {
		t.Fatalf("GetClient after reopen: %v", err)
	}
	if got.Name != "kept" || len(got.AllowedScopes) != 1 || !got.CreatedAt.Equal(now) {
		t.Errorf("client after reopen: %+v", got)
	}
	// Replay protection survives a restart.
	err = second.MarkUsed(ctx, storage.ReplayMark{Key: "k", ExpiresAt: now.Add(time.Hour)}, now)
	if err == nil {
		t.Error("a replay mark set before the restart was accepted again after it")
	}
	st, err := second.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	if st.Behind() || st.Current == 0 {
		t.Errorf("MigrationStatus after reopen: %+v, want current = latest > 0", st)
	}
}

func TestMigrationStatusOfFreshFile(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "m.db"))
	st, err := s.MigrationStatus(t.Context())
	if err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	if st.Current != st.Latest || st.Latest < 1 {
		t.Errorf("MigrationStatus of a freshly opened file: %+v, want current = latest >= 1", st)
	}
}

func TestOpenRefusesInMemory(t *testing.T) {
	for _, path := range []string{"", ":memory:", "file::memory:?cache=shared", "file:x.db?mode=memory", "x.db?_pragma=foo"} {
		if s, err := sqlite.Open(t.Context(), path); err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded, want an error", path)
		}
	}
}

// The down migrations undo the up ones cleanly, so a rollback of a release works.
func TestMigrationsDownAndUpAgain(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "m.db")
	s := open(t, path)
	now := time.Now()
	if err := s.CreateClient(ctx, &storage.Client{ID: "c", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	_, p := rawProvider(t, path)
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("migrate down to 0: %v", err)
	}
	if _, err := s.GetClient(ctx, "c"); err == nil {
		t.Fatal("GetClient after migrating down to 0 succeeded; the tables are still there")
	}
	again := open(t, path)
	if _, err := again.GetClient(ctx, "c"); err == nil {
		t.Fatal("client survived down + up")
	}
	if err := again.CreateClient(ctx, &storage.Client{ID: "c", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatalf("CreateClient after down + up: %v", err)
	}
}

// BenchmarkRecordIssuance measures the token endpoint's commit at low load: the grant
// re-check, the replay key and the audit record in a transaction of their own.
func BenchmarkRecordIssuance(b *testing.B) { benchmarkIssuances(b, 1) }

// BenchmarkRecordIssuances16 is the same under load, when group commit writes 16 issuances
// in one transaction: ns/op is per issuance.
func BenchmarkRecordIssuances16(b *testing.B) { benchmarkIssuances(b, 16) }

func benchmarkIssuances(b *testing.B, batch int) {
	ctx := context.Background()
	s := open(b, filepath.Join(b.TempDir(), "bench.db"))
	now := time.Now()
	if err := s.CreateClient(ctx, &storage.Client{ID: "cli_1", CreatedAt: now, UpdatedAt: now}); err != nil {
		b.Fatal(err)
	}
	g := &storage.Grant{ID: "grt_1", Tenant: "acme", Subject: "*", ClientID: "cli_1",
		Audiences: []string{"orders_api"}, Scopes: []string{"orders:read"}, NotBefore: now.Add(-time.Hour),
		ExpiresAt: now.Add(time.Hour), CreatedAt: now}
	if err := s.CreateGrant(ctx, g); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	rows := make([]storage.Issuance, 0, batch)
	for b.Loop() {
		i++
		jti := fmt.Sprintf("jti_%d", i)
		rows = append(rows, storage.Issuance{
			Audit: storage.AuditRecord{ID: "evt_" + jti, Time: now, Event: "token_exchange",
				Outcome: storage.OutcomeGranted, ClientID: "cli_1", AgentID: "agent_1", ActorSub: "alice",
				Tenant: "acme", DelegationMode: "on_behalf_of", TraceID: "trace", Audience: "orders_api",
				RequestedScopes: []string{"orders:read"}, GrantedScopes: []string{"orders:read"},
				EnvelopeJTI: "env_" + jti, TokenJTI: jti, GrantID: "grt_1", RemoteAddr: "192.0.2.1"},
			TokenExpiresAt:  now.Add(5 * time.Minute),
			ReplayKey:       "eie|cli_1|env_" + jti + "|orders_api",
			ReplayExpiresAt: now.Add(6 * time.Minute),
		})
		if len(rows) < batch {
			continue
		}
		var errs []error
		if batch == 1 {
			errs = []error{s.RecordIssuance(ctx, rows[0])}
		} else {
			errs = s.RecordIssuances(ctx, rows)
		}
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		rows = rows[:0]
	}
}

// The database holds client-secret hashes and sealed signing keys: like the secret file
// beside it, it and its WAL files are readable by their owner only, whatever the umask.
func TestNewFileIsOwnerOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db")
	s := open(t, path)
	now := time.Now()
	// A write, so the WAL and its index exist too.
	if err := s.CreateClient(t.Context(), &storage.Client{ID: "c", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		if perm := st.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %#o, want no access for group and others (0600)", filepath.Base(p), perm)
		}
	}
}

// A lone process hears nothing of its own commits (readers included): otherwise every poll
// would drop the server's caches for nothing.
func TestChangeFeedIgnoresOwnCommits(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "m.db"))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var mu sync.Mutex
	heard := 0
	done := make(chan error, 1)
	go func() {
		done <- s.WatchChanges(ctx, func(string) {
			mu.Lock()
			heard++
			mu.Unlock()
		})
	}()
	now := time.Now().UTC()
	for i := range 50 {
		c := &storage.Client{ID: fmt.Sprintf("c%d", i), CreatedAt: now, UpdatedAt: now}
		if err := s.InTx(ctx, func(tx storage.Store) error { return tx.CreateClient(ctx, c) }); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetClient(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // spread over a few polls
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if heard != 1 {
		t.Fatalf("the watcher was called %d times; want once (when it started), never for this process's own commits", heard)
	}
}
