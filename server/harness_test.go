package server

// The harness of the reliability tests: several replicas, each a whole Server with its own
// store handle (its own connection pool or SQLite connections, as a separate process would
// have) on one store, each served over real HTTP.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
	"github.com/mandatehq/mandate/storage/sqlite"
)

const (
	testIssuer      = "https://mandate.test"
	testAdminSecret = "bootstrap-admin-secret-0123456789abcdef"
	testDeployment  = "deployment-secret-0123456789abcdef-reliability"
)

// backend opens handles on one fresh store and holds it against writers.
type backend struct {
	name string
	// open returns n handles on one fresh, migrated store; timeout is the database timeout
	// the replicas will use (SQLite's busy wait must not outlast it).
	open func(t *testing.T, n int, timeout time.Duration) []storage.Store
	// hold takes the lock that issuance needs, from outside the replicas, until release.
	hold func(t *testing.T) (release func())
}

func sqliteBackend(t *testing.T) backend {
	path := filepath.Join(t.TempDir(), "mandate.db")
	return backend{
		name: "sqlite",
		open: func(t *testing.T, n int, timeout time.Duration) []storage.Store {
			var out []storage.Store
			for range n {
				s, err := sqlite.OpenWith(t.Context(), path, sqlite.Options{BusyTimeout: timeout})
				if err != nil {
					t.Fatalf("sqlite: %v", err)
				}
				t.Cleanup(func() { _ = s.Close() })
				out = append(out, s)
			}
			return out
		},
		// Another process's write transaction: BEGIN IMMEDIATE holds the file's write lock.
		hold: func(t *testing.T) func() {
			s, err := sqlite.Open(t.Context(), path)
			if err != nil {
				t.Fatal(err)
			}
			held, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
			go func() {
				done <- s.InTx(context.Background(), func(storage.Store) error {
					close(held)
					<-release
					return nil
				})
			}()
			<-held
			var once sync.Once
			return func() {
				once.Do(func() {
					close(release)
					if err := <-done; err != nil {
						t.Errorf("holding transaction: %v", err)
					}
					_ = s.Close()
				})
			}
		},
	}
}

func postgresBackend(t *testing.T) backend {
	b := backend{name: "postgres"}
	var schema, schemaURL string
	b.open = func(t *testing.T, n int, _ time.Duration) []storage.Store {
		schema, schemaURL = pgtest.Schema(t)
		var out []storage.Store
		for i := range n {
			s, err := postgres.Open(t.Context(), pgtest.BaseURL(t), postgres.Options{Schema: schema, MaxConns: 4})
			if err != nil {
				t.Fatalf("postgres: %v", err)
			}
			t.Cleanup(func() { _ = s.Close() })
			if i == 0 {
				p, err := s.Migrations()
				if err == nil {
					_, err = p.Up(t.Context())
				}
				if err != nil {
					t.Fatalf("migrate: %v", err)
				}
			}
			out = append(out, s)
		}
		return out
	}
	// An operator's (or a migration's) lock on the table every issuance writes and every
	// token check reads.
	b.hold = func(t *testing.T) func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, schemaURL)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := conn.Begin(ctx)
		if err == nil {
			_, err = tx.Exec(ctx, `LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE`)
		}
		if err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		return func() {
			once.Do(func() {
				_ = tx.Rollback(ctx)
				_ = conn.Close(ctx)
			})
		}
	}
	return b
}

// pgtestSkip skips t without MANDATE_TEST_DATABASE_URL.
func pgtestSkip(t *testing.T) { pgtest.BaseURL(t) }

func onBackends(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, mk := range []func(*testing.T) backend{sqliteBackend, postgresBackend} {
		b := mk(t)
		t.Run(b.name, func(t *testing.T) {
			if b.name == "postgres" {
				pgtestSkip(t)
			}
			fn(t, b)
		})
	}
}

// replica is one running Server behind real listeners.
type replica struct {
	srv    *Server
	store  storage.Store
	public *httptest.Server
	admin  *httptest.Server
}

// startTogether starts one replica per store at the same moment, as a deployment's replicas
// start, and runs their background work until the test ends.
func startTogether(t *testing.T, stores []storage.Store, o Options) []*replica {
	t.Helper()
	master, err := secret.NewMaster(testDeployment)
	if err != nil {
		t.Fatal(err)
	}
	o.Master, o.Issuer, o.BootstrapAdminSecret = master, testIssuer, testAdminSecret
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	reps := make([]*replica, len(stores))
	errs := make([]error, len(stores))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, st := range stores {
		wg.Go(func() {
			<-start
			o := o
			o.Store = st
			srv, err := New(context.Background(), o)
			reps[i], errs[i] = &replica{srv: srv, store: st}, err
		})
	}
	close(start)
	wg.Wait()
	for i, r := range reps {
		if errs[i] != nil {
			t.Fatalf("replica %d: New: %v", i, errs[i])
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { r.srv.Run(ctx); close(done) }()
		// A change committed before a replica listens is one it cannot hear (it drops its
		// caches when it starts listening, for that reason): the tests' changes come after.
		select {
		case <-r.srv.watching:
		case <-time.After(30 * time.Second):
			t.Fatalf("replica %d: the change feed is not watched after 30s", i)
		}
		r.public = httptest.NewServer(r.srv.PublicHandler())
		r.admin = httptest.NewServer(r.srv.AdminHandler())
		t.Cleanup(func() {
			r.public.Close()
			r.admin.Close()
			cancel()
			<-done
		})
	}
	return reps
}

// answer is one HTTP answer, timed.
type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
	took   time.Duration
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }

var client = &http.Client{Timeout: 60 * time.Second}

func send(t *testing.T, req *http.Request) answer {
	t.Helper()
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", req.Method, req.URL.Path, err)
		return answer{}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	a := answer{status: res.StatusCode, header: res.Header, raw: string(raw), took: time.Since(start)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

// form posts a form to the public listener as clientID (client_secret_basic).
func (r *replica) form(t *testing.T, path, clientID, secret string, f url.Values) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.public.URL+path, strings.NewReader(f.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	return send(t, req)
}

// clientToken is client_credentials as clientID.
func (r *replica) clientToken(t *testing.T, clientID, secret string) answer {
	t.Helper()
	return r.form(t, "/oauth2/token", clientID, secret, url.Values{"grant_type": {"client_credentials"}})
}

// adminToken is a token for the admin API from this replica.
func (r *replica) adminToken(t *testing.T) string {
	t.Helper()
	a := r.clientToken(t, "mandate-admin", testAdminSecret)
	if a.status != http.StatusOK || a.str("access_token") == "" {
		t.Fatalf("admin client_credentials: %d %s", a.status, a.raw)
	}
	return a.str("access_token")
}

func (r *replica) introspect(t *testing.T, tok string) answer {
	t.Helper()
	return r.form(t, "/oauth2/introspect", "mandate-admin", testAdminSecret, url.Values{"token": {tok}})
}

func (r *replica) revoke(t *testing.T, tok string) answer {
	t.Helper()
	return r.form(t, "/oauth2/revoke", "mandate-admin", testAdminSecret, url.Values{"token": {tok}})
}

// call sends an admin API request with a bearer token.
func (r *replica) call(t *testing.T, method, path, token string, body any) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, r.admin.URL+"/admin/v1"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	return send(t, req)
}

// jwksKIDs lists the kids a replica publishes.
func (r *replica) jwksKIDs(t *testing.T) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.public.URL+"/.well-known/jwks.json", nil)
	a := send(t, req)
	var doc struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(a.raw), &doc); err != nil {
		t.Fatalf("JWKS: %v: %s", err, a.raw)
	}
	var kids []string
	for _, k := range doc.Keys {
		kids = append(kids, k.KID)
	}
	return kids
}
