package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// Bearer tokens the fake authenticator knows.
const (
	tokAdmin  = "tok-admin"
	tokReader = "tok-reader"
	tokOther  = "tok-other"
)

// fakeAuth is a hand-written Authenticator: token → principal.
type fakeAuth map[string]Principal

func (f fakeAuth) AuthenticateBearer(_ context.Context, token string) (Principal, error) {
	p, ok := f[token]
	if !ok {
		return Principal{}, errors.New("unknown token")
	}
	return p, nil
}

var testAuth = fakeAuth{
	tokAdmin:  {ClientID: "admin-cli", Scopes: []string{ScopeAdmin}},
	tokReader: {ClientID: "reader-cli", Scopes: []string{ScopeAdminRead}},
	tokOther:  {ClientID: "other-cli", Scopes: []string{"orders:read"}},
}

// fakeKeys is a hand-written KeyAdmin keeping keys in memory.
type fakeKeys struct {
	mu   sync.Mutex
	keys []storage.SigningKey
	now  func() time.Time
}

func (k *fakeKeys) List(context.Context) ([]storage.SigningKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]storage.SigningKey(nil), k.keys...), nil
}

func (k *fakeKeys) Rotate(context.Context) (*storage.SigningKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now().UTC()
	for i := range k.keys {
		switch k.keys[i].Status {
		case storage.KeyActive:
			k.keys[i].Status, k.keys[i].RetiredAt, k.keys[i].RemoveAt = storage.KeyRetired, now, now.Add(time.Hour)
		case storage.KeyNext:
			k.keys[i].Status = storage.KeyActive
		}
	}
	key := storage.SigningKey{KID: storage.NewID("k"), Alg: "ES256", Status: storage.KeyNext, CreatedAt: now, ActivatesAt: now.Add(time.Hour)}
	k.keys = append(k.keys, key)
	return &key, nil
}

// backend is a store the suite runs against.
type backend struct {
	name string
	open func(t testing.TB) storage.Store
}

// backends: SQLite always, Postgres when MANDATE_TEST_DATABASE_URL is set (a set but
// unreachable URL fails the test).
func backends() []backend {
	b := []backend{{"sqlite", openSQLite}}
	if os.Getenv(pgtest.EnvURL) != "" {
		b = append(b, backend{"postgres", openPostgres})
	}
	return b
}

func openSQLite(t testing.TB) storage.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mandate.db"))
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openPostgres(t testing.TB) storage.Store { return pgtest.Open(t) }

// forEachBackend runs fn once per backend, each with a fresh store and server.
func forEachBackend(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			fn(t, newEnv(t, b.open(t)))
		})
	}
}

// env is one API server over HTTP on a real store.
type env struct {
	t      testing.TB
	srv    *httptest.Server
	store  storage.Store
	hasher *secret.Hasher
	keys   *fakeKeys
	val    *validator

	mu  sync.Mutex
	now time.Time
}

func newEnv(t testing.TB, store storage.Store, opts ...func(*Deps)) *env {
	t.Helper()
	return newEnvAuth(t, store, testAuth, opts...)
}

func newEnvAuth(t testing.TB, store storage.Store, auth Authenticator, opts ...func(*Deps)) *env {
	t.Helper()
	m, err := secret.NewMaster(strings.Repeat("s", 32))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, store: store, hasher: secret.NewHasher(m), now: time.Now().UTC()}
	e.keys = &fakeKeys{now: e.clock}
	e.val, err = newValidator(specYAML)
	if err != nil {
		t.Fatalf("spec: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d := Deps{Store: store, Hasher: e.hasher, Auth: auth, Keys: e.keys, Explain: newExplainer(t, store, m, e.clock),
		Logger: logger, Now: e.clock}
	for _, o := range opts {
		o(&d)
	}
	e.srv = httptest.NewServer(NewHandler(d))
	t.Cleanup(e.srv.Close)
	return e
}

// testIssuer is the issuer of the exchange service behind POST /explain.
const testIssuer = "https://mandate.test"

// newExplainer is the real exchange service over store, on the test's clock, with signing
// keys of its own (Explain signs nothing, but the service is the endpoint's).
func newExplainer(t testing.TB, store storage.Store, m *secret.Master, clock func() time.Time) *exchange.Service {
	t.Helper()
	sealer, err := keys.NewSealer(m)
	if err != nil {
		t.Fatal(err)
	}
	km, err := keys.NewManager(store, sealer, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := km.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc, err := exchange.New(exchange.Deps{Store: store, Verifier: &envelope.Verifier{Issuer: testIssuer, Now: clock},
		Signer: km, Now: clock}, exchange.Config{Issuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

// advance moves the server's clock on.
func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// resp is one answer, already checked against openapi.yaml.
type resp struct {
	status int
	header http.Header
	body   []byte
}

// req describes one call; body is marshalled to JSON unless it is a string or []byte.
type req struct {
	method, path, token string
	body                any
	contentType         string // default application/json when there is a body
}

// call sends r and validates the answer against the spec (status included).
func (e *env) call(r req) resp {
	e.t.Helper()
	var body io.Reader
	var raw []byte
	switch b := r.body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			e.t.Fatal(err)
		}
	}
	if raw != nil {
		body = bytes.NewReader(raw)
	}
	hr, err := http.NewRequest(r.method, e.srv.URL+r.path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if raw != nil {
		ct := r.contentType
		if ct == "" {
			ct = "application/json"
		}
		hr.Header.Set("Content-Type", ct)
	}
	if r.token != "" {
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	res, err := e.srv.Client().Do(hr)
	if err != nil {
		e.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	got := resp{status: res.StatusCode, header: res.Header, body: out}
	e.checkAgainstSpec(hr, got)
	return got
}

// checkAgainstSpec validates an answer with openapi3filter.ValidateResponse. Answers for
// paths the spec lacks (404, 405) are checked as problems by hand.
func (e *env) checkAgainstSpec(hr *http.Request, got resp) {
	e.t.Helper()
	if ct := got.header.Get("Content-Type"); got.status >= 400 && ct != problemContentType {
		e.t.Errorf("%s %s: %d with Content-Type %q, want %s", hr.Method, hr.URL.Path, got.status, ct, problemContentType)
	}
	route, params, err := e.val.findRoute(hr)
	if err != nil {
		if got.status != 404 && got.status != 405 {
			e.t.Errorf("%s %s: no route in the spec but status %d", hr.Method, hr.URL.Path, got.status)
		}
		var p Problem
		if err := json.Unmarshal(got.body, &p); err != nil || p.Status != got.status || p.Type == "" || p.Title == "" {
			e.t.Errorf("%s %s: not a problem document: %s", hr.Method, hr.URL.Path, got.body)
		}
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: hr, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		},
		Status:  got.status,
		Header:  got.header,
		Body:    io.NopCloser(bytes.NewReader(got.body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		e.t.Errorf("%s %s → %d does not match openapi.yaml: %v\nbody: %s", hr.Method, hr.URL.Path, got.status, err, got.body)
	}
}

// must calls and fails the test unless the status is want.
func (e *env) must(want int, r req) resp {
	e.t.Helper()
	got := e.call(r)
	if got.status != want {
		e.t.Fatalf("%s %s: status %d, want %d; body: %s", r.method, r.path, got.status, want, got.body)
	}
	return got
}

func decode[T any](t *testing.T, r resp) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %T: %v; body: %s", v, err, r.body)
	}
	return v
}

// wantProblem checks status and that every one of fields is named in errors.
func wantProblem(t *testing.T, r resp, status int, fields ...string) Problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body: %s", r.status, status, r.body)
	}
	p := decode[Problem](t, r)
	if p.Status != status {
		t.Errorf("problem status %d, want %d", p.Status, status)
	}
	named := map[string]bool{}
	if p.Errors != nil {
		for _, fe := range *p.Errors {
			named[fe.Field] = true
		}
	}
	for _, f := range fields {
		if !named[f] {
			t.Errorf("problem does not name field %q: %s", f, r.body)
		}
	}
	return p
}

// auditEvents returns the store's audit records of event, newest first.
func (e *env) auditEvents(event string) []storage.AuditRecord {
	e.t.Helper()
	items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: event, Page: storage.Page{Limit: 500}})
	if err != nil {
		e.t.Fatalf("ListAudit: %v", err)
	}
	return items
}

// publicJWK returns a fresh P-256 public key as a JWK member map, and its private twin.
func testJWKs(t *testing.T, kid string) (public, private map[string]any) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := jwk.Import(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := pk.Set(jwk.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.PublicKeyOf(pk)
	if err != nil {
		t.Fatal(err)
	}
	toMap := func(k jwk.Key) map[string]any {
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	return toMap(pub), toMap(pk)
}
