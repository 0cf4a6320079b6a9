package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/groupcommit"
	"github.com/mandatehq/mandate/storage/storagetest"
)

// The tests need a real Postgres: MANDATE_TEST_DATABASE_URL names a database the tests may
// create and drop schemas in. Unset, they skip; set but unreachable, they fail.
const urlEnv = "MANDATE_TEST_DATABASE_URL"

// testPoolSize keeps each test's pool small: the suite runs subtests in parallel against one
// server, whose max_connections (100 by default) other test processes share.
const testPoolSize = 4

func testURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(urlEnv)
	if u == "" {
		t.Skip(urlEnv + " is not set; skipping the Postgres tests (e.g. " + urlEnv +
			"=postgres://postgres@127.0.0.1:5432/test?sslmode=disable)")
	}
	return u
}

// freshSchema creates an empty schema with a random name and drops it, with everything in
// it, when the test ends.
func freshSchema(t testing.TB, url string) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "mandate_test_" + hex.EncodeToString(b[:])
	admin(t, url, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
	t.Cleanup(func() { admin(t, url, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE") })
	return name
}

// admin runs one statement on a connection of its own.
func admin(t testing.TB, url, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", urlEnv, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// migrateMu serializes this process's migrations. goose's Postgres session lock is
// database-wide and a waiting migrator polls it every 5 s, so a suite that migrates a schema
// per subtest would otherwise spend most of its time asleep. TestConcurrentMigrations
// exercises the lock itself without this mutex.
var migrateMu sync.Mutex

// openStore opens a Store on a fresh, migrated schema, closed when the test ends.
func openStore(t testing.TB, opts Options) *Store {
	t.Helper()
	url := testURL(t)
	opts.Schema = freshSchema(t, url)
	if opts.MaxConns == 0 {
		opts.MaxConns = testPoolSize
	}
	ctx := context.Background()
	s, err := Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	p, err := s.Migrations()
	if err != nil {
		t.Fatalf("Migrations: %v", err)
	}
	migrateMu.Lock()
	_, err = p.Up(ctx)
	migrateMu.Unlock()
	if err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	return s
}

// TestConformance runs the one storage suite against Postgres, each subtest on a schema of
// its own.
func TestConformance(t *testing.T) {
	testURL(t)
	storagetest.Run(t, func(t *testing.T) storage.Store { return openStore(t, Options{}) })
}

// TestConformanceShared runs the cases that need two replicas' handles on one schema.
func TestConformanceShared(t *testing.T) {
	url := testURL(t)
	storagetest.RunShared(t, func(t *testing.T) (storage.Store, storage.Store) {
		a := openStore(t, Options{})
		b, err := Open(t.Context(), url, Options{Schema: a.schema(t), MaxConns: testPoolSize})
		if err != nil {
			t.Fatalf("Open a second handle: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return a, b
	})
}

// schema is the schema s works in.
func (s *Store) schema(t testing.TB) string {
	t.Helper()
	var name string
	if err := s.pool.QueryRow(t.Context(), `SELECT current_schema()`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestOpenFailsWhenUnreachable(t *testing.T) {
	// Port 1 on loopback: nothing listens there, so the connection is refused at once.
	_, err := Open(t.Context(), "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5", Options{})
	if err == nil {
		t.Fatal("Open of an unreachable server succeeded")
	}
	if !strings.Contains(err.Error(), "cannot reach 127.0.0.1:1/test") {
		t.Errorf("error does not say what it could not reach: %v", err)
	}
}

func TestOpenDoesNotLeakThePassword(t *testing.T) {
	_, err := Open(t.Context(), "postgres://u:hunter2-secret@127.0.0.1:1/test?sslmode=bogus", Options{})
	if err == nil {
		t.Fatal("Open with an invalid sslmode succeeded")
	}
	if strings.Contains(err.Error(), "hunter2-secret") {
		t.Errorf("error quotes the password: %v", err)
	}
}

func TestOpenRefusesAMissingSchema(t *testing.T) {
	url := testURL(t)
	_, err := Open(t.Context(), url, Options{MaxConns: 1, Schema: "mandate_test_no_such_schema"})
	if err == nil || !strings.Contains(err.Error(), `schema "mandate_test_no_such_schema" does not exist`) {
		t.Fatalf("Open with a missing schema: %v, want a does-not-exist error", err)
	}
}

func TestMigrationStatusUpDown(t *testing.T) {
	url := testURL(t)
	ctx := t.Context()
	schema := freshSchema(t, url)
	s, err := Open(ctx, url, Options{MaxConns: testPoolSize, Schema: schema})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()

	st, err := s.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus on an empty schema: %v", err)
	}
	if !st.Behind() || st.Current != 0 || st.Latest < 1 {
		t.Fatalf("empty schema: status %+v, want behind at 0", st)
	}
	// Behind means the tables are not there: a store call fails rather than finding nothing.
	if _, err := s.GetClient(ctx, "x"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetClient before migrating: %v, want a missing-table error", err)
	}

	p, err := s.Migrations()
	if err != nil {
		t.Fatalf("Migrations: %v", err)
	}
	migrateMu.Lock()
	_, err = p.Up(ctx)
	migrateMu.Unlock()
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	st, err = s.MigrationStatus(ctx)
	if err != nil || st.Behind() || st.Current != st.Latest {
		t.Fatalf("after Up: status %+v, %v; want current = latest", st, err)
	}
	if _, err := s.GetClient(ctx, "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetClient after Up: %v, want ErrNotFound", err)
	}

	migrateMu.Lock()
	_, err = p.Down(ctx)
	migrateMu.Unlock()
	if err != nil {
		t.Fatalf("Down: %v", err)
	}
	// Versions need not be contiguous (numbers are reserved for work landing in parallel):
	// one step down is the version before the latest.
	srcs := p.ListSources()
	st, err = s.MigrationStatus(ctx)
	if err != nil || len(srcs) < 2 || st.Current != srcs[len(srcs)-2].Version {
		t.Fatalf("after Down: status %+v, %v; want one version behind", st, err)
	}
	migrateMu.Lock()
	_, err = p.DownTo(ctx, 0)
	migrateMu.Unlock()
	if err != nil {
		t.Fatalf("DownTo 0: %v", err)
	}
	var tables int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1
		AND tablename <> 'goose_db_version'`, schema).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("after DownTo 0, %d tables are left in the schema", tables)
	}
}

// Two replicas starting at once both run Up on a fresh schema. goose's Postgres session lock
// (added by migrations.NewProvider) must make one wait for the other: without it both would
// create the same tables and one would fail (checked: with goose.NewProvider and no locker,
// this test fails on a duplicate pg_type key).
func TestConcurrentMigrations(t *testing.T) {
	url := testURL(t)
	ctx := t.Context()
	schema := freshSchema(t, url)
	// Create goose's version table first, as `serve` checking the status does. Otherwise
	// goose's own retry around creating that table staggers the replicas by a second and
	// hides a missing lock.
	s0, err := Open(ctx, url, Options{MaxConns: 2, Schema: schema})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := s0.MigrationStatus(ctx); err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	s0.Close()
	const replicas = 2
	var wg sync.WaitGroup
	errs := make([]error, replicas)
	for i := range replicas {
		wg.Go(func() {
			s, err := Open(ctx, url, Options{MaxConns: 2, Schema: schema})
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			p, err := s.Migrations()
			if err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = p.Up(ctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: Up: %v", i, err)
		}
	}
	s, err := Open(ctx, url, Options{MaxConns: 2, Schema: schema})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	st, err := s.MigrationStatus(ctx)
	if err != nil || st.Behind() {
		t.Fatalf("after concurrent Ups: status %+v, %v", st, err)
	}
	// Each version is recorded once: the second replica found nothing left to do.
	var applied, distinct int
	if err := s.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT version_id)
		FROM goose_db_version WHERE version_id > 0`).Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	p, err := s.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if want := len(p.ListSources()); applied != distinct || distinct != want {
		t.Errorf("goose_db_version holds %d rows for %d versions, want %d once each", applied, distinct, want)
	}
}

// ---------------------------------------------------------------------------------------------
// RecordIssuance

func issuanceFixture(t testing.TB, s *Store) (grantID string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if err := s.CreateClient(ctx, &storage.Client{ID: "cli_bench", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatalf("CreateClient: %v", err)
	}
	g := &storage.Grant{ID: storage.NewID("grt"), Tenant: "acme", Subject: "*", ClientID: "cli_bench",
		Audiences: []string{"orders"}, Scopes: []string{"orders:read"}, Modes: []string{"on_behalf_of"},
		NotBefore: now.Add(-time.Hour), ExpiresAt: now.Add(time.Hour), CreatedAt: now}
	if err := s.CreateGrant(ctx, g); err != nil {
		t.Fatalf("CreateGrant: %v", err)
	}
	return g.ID
}

func issuance(grantID, jti, replayKey string) storage.Issuance {
	now := time.Now()
	return storage.Issuance{
		Audit: storage.AuditRecord{ID: storage.NewID("aud"), Time: now, Event: "token_exchange",
			Outcome: storage.OutcomeGranted, ClientID: "cli_bench", ActorSub: "user_1", Tenant: "acme",
			Audience: "orders", GrantedScopes: []string{"orders:read"}, TokenJTI: jti, GrantID: grantID},
		TokenExpiresAt:  now.Add(5 * time.Minute),
		ReplayKey:       replayKey,
		ReplayExpiresAt: now.Add(6 * time.Minute),
	}
}

// counter counts what a connection sends: statements (through pgx's tracer) and writes to
// the socket, each of which opens a round trip.
type counter struct {
	queries atomic.Int64
	writes  atomic.Int64
}

func (c *counter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.queries.Add(1)
	return ctx
}

func (c *counter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

type countingConn struct {
	net.Conn
	c *counter
}

func (cc countingConn) Write(b []byte) (int, error) {
	cc.c.writes.Add(1)
	return cc.Conn.Write(b)
}

func (c *counter) configure(cfg *pgxpool.Config) {
	cfg.ConnConfig.Tracer = c
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{conn, c}, nil
	}
	// No liveness ping on acquire: it would be a round trip of its own.
	cfg.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
}

// RecordIssuance, the token endpoint's hot path, is one statement and one round trip on a
// warm connection: no BEGIN, no COMMIT.
func TestRecordIssuanceIsOneRoundTrip(t *testing.T) {
	var c counter
	s := openStore(t, Options{MaxConns: 1, configure: c.configure})
	ctx := t.Context()
	grantID := issuanceFixture(t, s)
	// The first call on the connection prepares the statement (pgx caches it).
	if err := s.RecordIssuance(ctx, issuance(grantID, "warm", "env|warm")); err != nil {
		t.Fatalf("RecordIssuance: %v", err)
	}
	const n = 20
	q0, w0 := c.queries.Load(), c.writes.Load()
	for i := range n {
		id := storage.NewID("jti")
		if err := s.RecordIssuance(ctx, issuance(grantID, id, "env|"+id)); err != nil {
			t.Fatalf("RecordIssuance %d: %v", i, err)
		}
	}
	if q := c.queries.Load() - q0; q != n {
		t.Errorf("%d issuances ran %d statements, want %d", n, q, n)
	}
	if w := c.writes.Load() - w0; w != n {
		t.Errorf("%d issuances took %d round trips, want %d", n, w, n)
	}
	// A conflict is one round trip too.
	w0 = c.writes.Load()
	if err := s.RecordIssuance(ctx, issuance(grantID, "again", "env|warm")); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("replay: %v, want ErrConflict", err)
	}
	if w := c.writes.Load() - w0; w != 1 {
		t.Errorf("a rejected issuance took %d round trips, want 1", w)
	}
}

// RecordIssuances (group commit) writes a batch of any size in one statement and one round
// trip, conflicts included.
func TestRecordIssuancesIsOneRoundTrip(t *testing.T) {
	var c counter
	s := openStore(t, Options{MaxConns: 1, configure: c.configure})
	ctx := t.Context()
	grantID := issuanceFixture(t, s)
	batch := func(n int) []storage.Issuance {
		out := make([]storage.Issuance, n)
		for i := range out {
			id := storage.NewID("jti")
			out[i] = issuance(grantID, id, "env|"+id)
		}
		return out
	}
	for _, err := range s.RecordIssuances(ctx, batch(2)) { // prepares the statement
		if err != nil {
			t.Fatalf("RecordIssuances: %v", err)
		}
	}
	for _, n := range []int{2, 16, 128} {
		b := batch(n)
		b[n-1].ReplayKey = b[0].ReplayKey // a replay inside the batch
		q0, w0 := c.queries.Load(), c.writes.Load()
		errs := s.RecordIssuances(ctx, b)
		if q, w := c.queries.Load()-q0, c.writes.Load()-w0; q != 1 || w != 1 {
			t.Errorf("a batch of %d ran %d statements in %d round trips, want 1 and 1", n, q, w)
		}
		for i, err := range errs {
			if wantConflict := i == n-1; errors.Is(err, storage.ErrConflict) != wantConflict || (!wantConflict && err != nil) {
				t.Errorf("batch of %d, row %d: %v", n, i, err)
			}
		}
	}
}

// A group commit that reaches the earliest deadline of its callers is cancelled whole: every
// caller is answered unavailable, none later than its own deadline, and no row of the batch
// is written behind their backs (each envelope stays usable for the retry).
func TestGroupCommitCutShortWritesNothing(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	grantID := issuanceFixture(t, s)
	// Another transaction holds the grant's row: every issuance under it waits (FOR SHARE).
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT 1 FROM grants WHERE id = $1 FOR UPDATE`, grantID); err != nil {
		t.Fatal(err)
	}
	gs := groupcommit.Wrap(s, groupcommit.Options{})
	call := func(name string, timeout time.Duration, out chan<- error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := gs.RecordIssuance(ctx, issuance(grantID, "jti_"+name, "env|"+name))
		if took := time.Since(start); took > timeout+time.Second {
			err = fmt.Errorf("%s answered after %s, its deadline was %s: %w", name, took, timeout, err)
		}
		out <- err
	}
	first := make(chan error, 1)
	go call("first", 300*time.Millisecond, first) // a batch of its own, stuck on the lock
	time.Sleep(100 * time.Millisecond)
	second, third := make(chan error, 1), make(chan error, 1)
	go call("second", 800*time.Millisecond, second) // these two wait, and then share a batch
	go call("third", time.Minute, third)            // cut short at second's deadline
	for name, ch := range map[string]chan error{"first": first, "second": second, "third": third} {
		select {
		case err := <-ch:
			if !errors.Is(err, storage.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s: %v, want unavailable", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no answer 10 s into a batch whose earliest deadline was under 1 s", name)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"first", "second", "third"} {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE token_jti = $1`,
			"jti_"+name).Scan(&n); err != nil || n != 0 {
			t.Errorf("%s's row after its batch was cut short: %d rows (%v), want none", name, n, err)
		}
		if used, err := s.ReplayKeyUsed(ctx, "env|"+name); err != nil || used {
			t.Errorf("%s's envelope used up by a batch that was cut short (%v)", name, err)
		}
	}
}

func BenchmarkRecordIssuance(b *testing.B) {
	s := openStore(b, Options{})
	grantID := issuanceFixture(b, s)
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			id := storage.NewID("jti")
			if err := s.RecordIssuance(ctx, issuance(grantID, id, "env|"+id)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := storage.NewID("jti")
				if err := s.RecordIssuance(ctx, issuance(grantID, id, "env|"+id)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	// A batch per commit: the time per issuance is what group commit pays for each row.
	for _, n := range []int{8, 32} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			batch := make([]storage.Issuance, n)
			for b.Loop() {
				for i := range batch {
					id := storage.NewID("jti")
					batch[i] = issuance(grantID, id, "env|"+id)
				}
				for _, err := range s.RecordIssuances(ctx, batch) {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/issuance")
		})
	}
}

// In Postgres a failed statement aborts the whole transaction; the Store's calls inside InTx
// run in savepoints so a caller can handle ErrConflict and carry on, as on SQLite.
func TestInTxCarriesOnAfterAConflict(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	now := time.Now()
	if err := s.CreateClient(ctx, &storage.Client{ID: "taken", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatalf("CreateClient: %v", err)
	}
	err := s.InTx(ctx, func(tx storage.Store) error {
		err := tx.CreateClient(ctx, &storage.Client{ID: "taken", CreatedAt: now, UpdatedAt: now})
		if !errors.Is(err, storage.ErrConflict) {
			t.Errorf("CreateClient on a taken id inside InTx: %v, want ErrConflict", err)
		}
		err = tx.CreateAudience(ctx, &storage.Audience{ID: "a1", ResourceURIs: []string{"https://x/", "https://x/"},
			CreatedAt: now, UpdatedAt: now})
		if err != nil {
			return err
		}
		return tx.CreateClient(ctx, &storage.Client{ID: "fresh", CreatedAt: now, UpdatedAt: now})
	})
	if err != nil {
		t.Fatalf("InTx: %v", err)
	}
	if _, err := s.GetClient(ctx, "fresh"); err != nil {
		t.Errorf("client created after the conflict: %v", err)
	}
	if a, err := s.GetAudienceByResource(ctx, "https://x/"); err != nil || a.ID != "a1" {
		t.Errorf("audience created after the conflict: %v, %v", a, err)
	}
}
