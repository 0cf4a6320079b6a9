package authz_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// backend opens a fresh, migrated store for one test.
type backend struct {
	name string
	open func(t testing.TB) storage.Store
}

// backends are SQLite always, and Postgres when MANDATE_TEST_DATABASE_URL is set (a set but
// unreachable database fails the test).
func backends() []backend {
	bs := []backend{{"sqlite", openSQLite}}
	if os.Getenv(pgtest.EnvURL) != "" {
		bs = append(bs, backend{"postgres", openPostgres})
	}
	return bs
}

// eachBackend runs fn once per backend, each with its own store.
func eachBackend(t *testing.T, fn func(t *testing.T, store storage.Store)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { fn(t, b.open(t)) })
	}
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

// clock is the one clock every component of a test shares; tests move it forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// Fixture ids.
const (
	clientID   = "mcp-web"
	otherID    = "mcp-other"
	ordersAPI  = "orders_api"
	billingAPI = "billing_api"
	ordersURI  = "https://orders.example.com"
	tenant     = "acme"
	userSub    = "user_123"
	agentID    = "agent_456"
)

// env is one running authorization server over a real store, with registered fixtures:
// clients mcp-web and mcp-other (client_secret_basic), audiences orders_api and billing_api,
// and a grant letting mcp-web act for user_123 toward both.
type env struct {
	t       testing.TB
	store   storage.Store
	srv     *httptest.Server
	issuer  string
	clock   *clock
	keys    *keys.Manager
	svc     *exchange.Service
	handler *authz.Server
	hasher  *secret.Hasher
	secrets map[string]string
	signers map[string]*envelope.Signer // each client's envelope key
	privs   map[string]*ecdsa.PrivateKey
	jwks    map[string][]byte
	grantID string
	logs    *syncBuffer // the server's log, JSON lines at debug level
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent log writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newEnv(t testing.TB, store storage.Store) *env { return newEnvIssuer(t, store, "") }

// newEnvIssuer is newEnv with a fixed issuer ("" = the test server's URL), for the shared
// vectors, which name theirs.
func newEnvIssuer(t testing.TB, store storage.Store, issuer string) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, store: store, clock: &clock{}, secrets: map[string]string{},
		signers: map[string]*envelope.Signer{}, privs: map[string]*ecdsa.PrivateKey{}, jwks: map[string][]byte{},
		logs: &syncBuffer{}}
	master, err := secret.NewMaster(strings.Repeat("s", 40))
	if err != nil {
		t.Fatal(err)
	}
	e.hasher = secret.NewHasher(master)
	sealer, err := keys.NewSealer(master)
	if err != nil {
		t.Fatal(err)
	}
	e.keys, err = keys.NewManager(store, sealer, keys.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.keys.Ensure(ctx); err != nil {
		t.Fatalf("keys.Ensure: %v", err)
	}

	e.srv = httptest.NewUnstartedServer(nil)
	e.issuer = "http://" + e.srv.Listener.Addr().String()
	if issuer != "" {
		e.issuer = issuer
	}
	e.svc, err = exchange.New(exchange.Deps{
		Store:    store,
		Verifier: &envelope.Verifier{Issuer: e.issuer, Now: e.clock.Now},
		Signer:   e.keys,
		Now:      e.clock.Now,
	}, exchange.Config{Issuer: e.issuer})
	if err != nil {
		t.Fatal(err)
	}
	e.handler = authz.NewHandler(authz.Deps{
		Issuer: e.issuer, Exchange: e.svc, Store: store, Keys: e.keys, Hasher: e.hasher, Now: e.clock.Now,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	e.srv.Config.Handler = e.handler
	e.srv.Start()
	t.Cleanup(e.srv.Close)

	e.addClient(&storage.Client{ID: clientID, AllowedTenants: []string{tenant}})
	e.addClient(&storage.Client{ID: otherID})
	e.addAudience(&storage.Audience{ID: ordersAPI, ResourceURIs: []string{ordersURI},
		Scopes:       []string{"orders:read", "orders:write"},
		AllowedModes: []string{envelope.ModeOnBehalfOf, envelope.ModeServiceIdentity, envelope.ModeRestrictedUser}})
	e.addAudience(&storage.Audience{ID: billingAPI, Scopes: []string{"billing:read"}})
	e.grantID = e.addGrant(&storage.Grant{Subject: userSub})
	return e
}

// addClient registers c with defaults: client_secret_basic with a generated secret, the token
// exchange grant, and an inline JWKS holding a fresh ES256 envelope key.
func (e *env) addClient(c *storage.Client) {
	e.t.Helper()
	now := e.clock.Now()
	if c.TokenEndpointAuthMethod == "" {
		c.TokenEndpointAuthMethod = authz.AuthClientSecretBasic
	}
	if c.GrantTypes == nil {
		c.GrantTypes = []string{exchange.GrantTypeTokenExchange}
	}
	if c.SecretHash == nil && c.TokenEndpointAuthMethod != authz.AuthPrivateKeyJWT {
		plain, hash := e.hasher.Generate()
		c.SecretHash = hash
		e.secrets[c.ID] = plain
	}
	if c.JWKS == nil && c.JWKSURI == "" {
		priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		kid := c.ID + "-key1"
		s, err := envelope.NewSigner(priv, kid)
		if err != nil {
			e.t.Fatal(err)
		}
		s.Now = e.clock.Now
		e.signers[c.ID] = s
		e.privs[c.ID] = priv
		c.JWKS = jwksOf(e.t, priv, kid)
	}
	e.jwks[c.ID] = c.JWKS
	c.CreatedAt, c.UpdatedAt = now, now
	if err := e.store.CreateClient(context.Background(), c); err != nil {
		e.t.Fatalf("CreateClient %s: %v", c.ID, err)
	}
}

func jwksOf(t testing.TB, priv *ecdsa.PrivateKey, kid string) []byte {
	t.Helper()
	k, err := jwk.Import(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, kid)
	b, err := json.Marshal(map[string]any{"keys": []jwk.Key{k}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) addAudience(a *storage.Audience) {
	e.t.Helper()
	now := e.clock.Now()
	a.CreatedAt, a.UpdatedAt = now, now
	if err := e.store.CreateAudience(context.Background(), a); err != nil {
		e.t.Fatalf("CreateAudience %s: %v", a.ID, err)
	}
}

// addGrant stores g with defaults (tenant acme, client mcp-web, both audiences, every
// fixture scope, every mode, valid for an hour) and returns its id.
func (e *env) addGrant(g *storage.Grant) string {
	e.t.Helper()
	now := e.clock.Now()
	if g.ID == "" {
		g.ID = storage.NewID("grt")
	}
	if g.Tenant == "" {
		g.Tenant = tenant
	}
	if g.ClientID == "" {
		g.ClientID = clientID
	}
	if g.Audiences == nil {
		g.Audiences = []string{ordersAPI, billingAPI}
	}
	if g.Scopes == nil {
		g.Scopes = []string{"orders:read", "orders:write", "billing:read"}
	}
	if g.Modes == nil {
		g.Modes = []string{envelope.ModeOnBehalfOf, envelope.ModeServiceIdentity, envelope.ModeRestrictedUser}
	}
	if g.NotBefore.IsZero() {
		g.NotBefore = now.Add(-time.Minute)
	}
	if g.ExpiresAt.IsZero() {
		g.ExpiresAt = now.Add(time.Hour)
	}
	g.CreatedAt, g.CreatedBy = now, "test"
	if err := e.store.CreateGrant(context.Background(), g); err != nil {
		e.t.Fatalf("CreateGrant: %v", err)
	}
	return g.ID
}

// claims is the default envelope of client mcp-web for user_123.
func (e *env) claims(client string) envelope.Claims {
	return envelope.Claims{
		Issuer:        client,
		Audience:      envelope.Audience{e.issuer},
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: userSub, Tenant: tenant},
		Agent:         envelope.Agent{ID: agentID},
		Session:       envelope.Session{ID: "sess_789", TraceID: "req_abc"},
		Authorization: envelope.Authorization{Scopes: []string{"orders:read", "orders:write", "billing:read"}},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf},
	}
}

// envelope signs the default envelope of client after mut changes it.
func (e *env) envelope(client string, mut func(*envelope.Claims)) string {
	e.t.Helper()
	c := e.claims(client)
	if mut != nil {
		mut(&c)
	}
	tok, err := e.signers[client].Sign(c)
	if err != nil {
		e.t.Fatalf("sign envelope: %v", err)
	}
	return tok
}

// exchangeForm is a token exchange request for envelope tok toward audience aud.
func exchangeForm(tok, aud string) url.Values {
	v := url.Values{
		"grant_type":         {exchange.GrantTypeTokenExchange},
		"subject_token":      {tok},
		"subject_token_type": {envelope.TokenType},
	}
	if aud != "" {
		v.Set("audience", aud)
	}
	return v
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    []byte
}

func (r *response) str(k string) string { s, _ := r.body[k].(string); return s }

// post sends form to path authenticated as client with client_secret_basic (client "" sends
// no credentials).
func (e *env) post(path, client string, form url.Values) *response {
	e.t.Helper()
	return e.do(path, form, func(req *http.Request) {
		if client != "" {
			req.SetBasicAuth(url.QueryEscape(client), url.QueryEscape(e.secrets[client]))
		}
	})
}

func (e *env) do(path string, form url.Values, edit func(*http.Request)) *response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if edit != nil {
		edit(req)
	}
	return e.send(req)
}

func (e *env) send(req *http.Request) *response {
	e.t.Helper()
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := &response{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			e.t.Fatalf("decode %s: %v: %s", req.URL.Path, err, raw)
		}
	}
	return r
}

// wantError asserts an RFC 6749 error answer.
func wantError(t *testing.T, r *response, status int, code string) {
	t.Helper()
	if r.status != status || r.str("error") != code {
		t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, code)
	}
	if r.header.Get("Cache-Control") != "no-store" || r.header.Get("Pragma") != "no-cache" {
		t.Errorf("Cache-Control %q Pragma %q, want no-store, no-cache", r.header.Get("Cache-Control"), r.header.Get("Pragma"))
	}
	if r.str("error_description") == "" {
		t.Errorf("no error_description in %s", r.raw)
	}
}

// wantToken asserts a granted token answer and returns the token's verified claims.
func (e *env) wantToken(t *testing.T, r *response) exchange.TokenClaims {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", r.status, r.raw)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", r.header.Get("Cache-Control"))
	}
	if r.str("token_type") != "Bearer" {
		t.Errorf("token_type %q", r.str("token_type"))
	}
	return e.verify(t, r.str("access_token"))
}

// verify checks tok with Mandate's published keys (as a resource server would) and decodes it.
func (e *env) verify(t *testing.T, tok string) exchange.TokenClaims {
	t.Helper()
	payload, _, err := e.keys.Verify(tok)
	if err != nil {
		t.Fatalf("issued token does not verify: %v", err)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.SplitN(tok, ".", 2)[0])
	var h struct{ Typ, Alg, Kid string }
	_ = json.Unmarshal(hdr, &h)
	if h.Typ != "at+jwt" || h.Alg != "ES256" || h.Kid == "" {
		t.Errorf("header %s, want typ at+jwt, alg ES256, a kid", hdr)
	}
	var c exchange.TokenClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
