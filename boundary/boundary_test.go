package boundary

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandatehq/mandate/envelope"
)

// idpServer is a real HTTP JWKS for one P-256 key, and a minter of inbound tokens.
type idpServer struct {
	key *ecdsa.PrivateKey
	url string
}

func newIdP(t *testing.T) *idpServer {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p := &idpServer{key: k}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pub, _ := k.PublicKey.ECDH()
		b := pub.Bytes()
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{map[string]string{"kty": "EC", "crv": "P-256", "kid": "idp1", "alg": "ES256",
			"x": base64.RawURLEncoding.EncodeToString(b[1:33]), "y": base64.RawURLEncoding.EncodeToString(b[33:65])}}})
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *idpServer) mint(claims map[string]any) string {
	hb, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": "idp1", "typ": "at+jwt"})
	cb, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	d := sha256.Sum256([]byte(in))
	r, s, _ := ecdsa.Sign(rand.Reader, p.key, d[:])
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

const mcpResource = "https://mcp.test/mcp"

func (p *idpServer) claims() map[string]any {
	now := time.Now()
	return map[string]any{"iss": "https://idp.test", "sub": "alice", "aud": mcpResource, "tenant": "acme",
		"scope": "orders:read balance:read", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "sid": "s-1"}
}

func newBoundary(t *testing.T, p *idpServer, mut func(*Config)) *Boundary {
	cfg := Config{Issuer: "https://idp.test", JWKSURL: p.url, Audience: mcpResource, ClientID: "webapp", AgentID: "agent_1"}
	if mut != nil {
		mut(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMiddlewareRemovesTokenAndSetsIdentity(t *testing.T) {
	p := newIdP(t)
	b := newBoundary(t, p, nil)
	tok := p.mint(p.claims())
	var sawAuth string
	var id *Identity
	h := b.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth = r.Header.Get("Authorization")
		id, _ = FromContext(r.Context())
	}))
	req := httptest.NewRequest("POST", "/mcp", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || id == nil {
		t.Fatalf("status %d, identity %v", rec.Code, id)
	}
	if sawAuth != "" {
		t.Fatal("the handler saw the Authorization header")
	}
	dump, _ := json.Marshal(id)
	if strings.Contains(string(dump), tok) || strings.Contains(fmt.Sprintf("%+v", *id), tok[:40]) {
		t.Fatal("the identity holds the token")
	}
	want := envelope.Actor{Type: "user", Sub: "alice", Tenant: "acme"}
	if id.Actor != want || id.Agent.ID != "agent_1" || id.Agent.ClientID != "webapp" || id.Session.ID != "s-1" ||
		id.Session.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || id.Mode != envelope.ModeOnBehalfOf || len(id.Scopes) != 2 {
		t.Fatalf("identity = %+v", id)
	}
	if tp := id.Traceparent(); !strings.HasPrefix(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Fatalf("downstream traceparent %q must keep the trace id with a new span id", tp)
	}

	// Refusals.
	for name, c := range map[string]struct {
		auth   string
		status int
		code   string
	}{
		"no token":      {"", 401, ""},
		"wrong aud":     {"Bearer " + p.mint(with(p.claims(), "aud", "https://other.test")), 401, "invalid_token"},
		"wrong iss":     {"Bearer " + p.mint(with(p.claims(), "iss", "https://evil.test")), 401, "invalid_token"},
		"expired":       {"Bearer " + p.mint(with(p.claims(), "exp", time.Now().Add(-time.Hour).Unix())), 401, "invalid_token"},
		"no tenant":     {"Bearer " + p.mint(with(p.claims(), "tenant", nil)), 401, "invalid_token"},
		"garbage token": {"Bearer abc.def.ghi", 401, "invalid_token"},
	} {
		req := httptest.NewRequest("POST", "/mcp", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		ch := rec.Header().Get("WWW-Authenticate")
		if rec.Code != c.status || (c.code == "" && ch != "Bearer") || (c.code != "" && !strings.Contains(ch, `error="`+c.code+`"`)) {
			t.Errorf("%s: status %d challenge %q", name, rec.Code, ch)
		}
	}
}

func with(m map[string]any, k string, v any) map[string]any {
	if v == nil {
		delete(m, k)
	} else {
		m[k] = v
	}
	return m
}

func TestClaimMapping(t *testing.T) {
	p := newIdP(t)
	b := newBoundary(t, p, func(c *Config) {
		c.Claims = ClaimMapping{Subject: "ext.uid", Tenant: "ext.org", Scopes: "scp", AgentID: "azp", Session: "session_id"}
	})
	cl := p.claims()
	cl["ext"] = map[string]any{"uid": json.Number("12345"), "org": "globex"}
	cl["scp"] = []string{"a", "b"}
	cl["azp"] = "claude-desktop"
	id, err := b.Authenticate(context.Background(), p.mint(cl), http.Header{"Mcp-Session-Id": {"mcp-sess"}})
	if err != nil {
		t.Fatal(err)
	}
	if id.Actor.Sub != "12345" || id.Actor.Tenant != "globex" || id.Agent.ID != "claude-desktop" ||
		strings.Join(id.Scopes, ",") != "a,b" || id.Session.ID != "mcp-sess" || len(id.Session.TraceID) != 32 {
		t.Fatalf("identity = %+v", id)
	}
	// Default tenant, and a wrongly typed claim.
	b2 := newBoundary(t, p, func(c *Config) { c.Claims.DefaultTenant = "default" })
	id, err = b2.Authenticate(context.Background(), p.mint(with(p.claims(), "tenant", nil)), http.Header{})
	if err != nil || id.Actor.Tenant != "default" {
		t.Fatalf("default tenant: %v %+v", err, id)
	}
	if _, err := b2.Authenticate(context.Background(), p.mint(with(p.claims(), "sub", map[string]any{"x": 1})), http.Header{}); err == nil {
		t.Fatal("an object sub was accepted")
	}
}

func TestParseTraceparent(t *testing.T) {
	for in, ok := range map[string]bool{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":      true,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what": true,  // future version, extra field
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what": false, // version 00 has no extra
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":      false,
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":      false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":      false,
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":      false, // uppercase
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":      false,
		"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01":       false,
		"": false,
	} {
		tp, got := ParseTraceparent(in)
		if got != ok {
			t.Errorf("ParseTraceparent(%q) ok = %v, want %v", in, got, ok)
		}
		if ok && tp.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("trace id = %q", tp.TraceID)
		}
	}
}

// tokenEndpoint is a stand-in for Mandate's token endpoint that checks the request shape
// and counts exchanges (the real endpoint is exercised end to end in examples/stack).
type tokenEndpoint struct {
	n         atomic.Int32
	expiresIn int
	fail      string
	mu        sync.Mutex
	lastForm  map[string][]string
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	u, pw, ok := r.BasicAuth()
	if !ok || u != "webapp" || pw != "s3cret" || r.ParseForm() != nil ||
		r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" || r.PostForm.Get("subject_token") == "" {
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"error":"invalid_request"}`))
		return
	}
	e.mu.Lock()
	e.lastForm = r.PostForm
	e.mu.Unlock()
	n := e.n.Add(1)
	time.Sleep(10 * time.Millisecond) // let concurrent callers pile up on the singleflight
	if e.fail != "" {
		w.WriteHeader(400)
		_, _ = w.Write([]byte(`{"error":"` + e.fail + `","error_description":"no active delegation grant"}`))
		return
	}
	fmt.Fprintf(w, `{"access_token":"tok-%d-%s","token_type":"Bearer","expires_in":%d,"scope":"orders:read"}`, n, r.PostForm.Get("audience"), e.expiresIn)
}

func TestDelegatorCache(t *testing.T) {
	ep := &tokenEndpoint{expiresIn: 300}
	srv := httptest.NewServer(ep)
	defer srv.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, _ := envelope.NewSigner(key, "env1")
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	d, err := NewDelegator(DelegatorConfig{Issuer: "https://mandate.test", TokenURL: srv.URL, ClientID: "webapp", ClientSecret: "s3cret", Signer: signer, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	alice := &Identity{Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: "acme"}, Agent: envelope.Agent{ID: "agent_1"},
		Session: envelope.Session{ID: "s1", TraceID: NewTraceID()}, Scopes: []string{"orders:read"}, Mode: envelope.ModeOnBehalfOf}
	bob := *alice
	bob.Actor.Sub = "bob"
	ctx := context.Background()

	// 20 concurrent callers, one exchange.
	var wg sync.WaitGroup
	toks := make([]string, 20)
	for i := range toks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks[i], _ = d.Token(ctx, alice, "orders_api", "orders:read")
		}()
	}
	wg.Wait()
	if ep.n.Load() != 1 || toks[0] == "" || toks[0] != toks[19] {
		t.Fatalf("exchanges = %d, tokens %q %q", ep.n.Load(), toks[0], toks[19])
	}
	ep.mu.Lock()
	form := ep.lastForm
	ep.mu.Unlock()
	if form["audience"][0] != "orders_api" || form["scope"][0] != "orders:read" || form["subject_token_type"][0] != envelope.TokenType {
		t.Fatalf("exchange form = %v", form)
	}
	// Cache hit, also with the scopes in another order.
	if tok, _ := d.Token(ctx, alice, "orders_api", "orders:read", "orders:read"); tok != toks[0] || ep.n.Load() != 1 {
		t.Fatalf("no cache hit: %q, %d exchanges", tok, ep.n.Load())
	}
	// Other user, other audience: separate entries.
	d.Token(ctx, &bob, "orders_api", "orders:read")
	d.Token(ctx, alice, "billing_api", "orders:read")
	if ep.n.Load() != 3 {
		t.Fatalf("exchanges = %d, want 3", ep.n.Load())
	}
	// Shortly before expiry (300 s, refreshed 30 s early) the token is replaced.
	advance(269 * time.Second)
	if tok, _ := d.Token(ctx, alice, "orders_api", "orders:read"); tok != toks[0] {
		t.Fatal("token replaced too early")
	}
	advance(2 * time.Second)
	if tok, _ := d.Token(ctx, alice, "orders_api", "orders:read"); tok == toks[0] || ep.n.Load() != 4 {
		t.Fatalf("token not refreshed near expiry: %q, %d exchanges", tok, ep.n.Load())
	}
	// Refusals become ExchangeErrors and are not cached.
	ep.fail = "invalid_request"
	d.Forget(alice, "orders_api", "orders:read")
	_, err = d.Token(ctx, alice, "orders_api", "orders:read")
	var xe *ExchangeError
	if !errorsAs(err, &xe) || xe.Code != "invalid_request" || !strings.Contains(err.Error(), "orders_api") {
		t.Fatalf("err = %v", err)
	}
	if _, err := d.Token(ctx, nil, "orders_api"); err != ErrNoIdentity {
		t.Fatalf("nil identity: %v", err)
	}
}
