package downstream

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func newTestVerifier(t *testing.T, is *issuer, c *clock, mut func(*Config)) *Verifier {
	t.Helper()
	cfg := Config{Issuer: testIssuer, Audience: "orders_api", JWKSURL: is.url, Now: c.Now,
		JWKS: JWKSOptions{MinRefreshInterval: time.Minute}}
	if mut != nil {
		mut(&cfg)
	}
	v, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// serveOnce runs one request through v.Protect(handler, scopes...).
func serveOnce(v *Verifier, auth string, scopes ...string) (*httptest.ResponseRecorder, *Principal) {
	var got *Principal
	h := v.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = FromContext(r.Context())
	}), scopes...)
	req := httptest.NewRequest("GET", "/orders/1", nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec, got
}

func TestProtectRFC6750(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	now := c.Now()
	with := func(f func(h, cl map[string]any)) string {
		h := map[string]any{"typ": "at+jwt"}
		cl := goodClaims(now)
		f(h, cl)
		return is.mint(h, cl)
	}
	good := with(func(h, cl map[string]any) {})
	tampered := good[:len(good)-4] + "AAAA"

	cases := []struct {
		name      string
		auth      string
		scopes    []string
		status    int
		challenge string // exact WWW-Authenticate prefix
	}{
		{"no token", "", nil, 401, "Bearer"},
		{"other scheme", "Basic YWxpY2U6c2VjcmV0", nil, 401, "Bearer"},
		{"empty bearer", "Bearer ", nil, 400, `Bearer error="invalid_request"`},
		{"two tokens", "Bearer a b", nil, 400, `Bearer error="invalid_request"`},
		{"valid", "Bearer " + good, []string{"orders:read"}, 200, ""},
		{"valid lowercase scheme", "bearer " + good, nil, 200, ""},
		{"typ application/at+jwt", "Bearer " + with(func(h, _ map[string]any) { h["typ"] = "application/AT+JWT" }), nil, 200, ""},
		{"typ JWT", "Bearer " + with(func(h, _ map[string]any) { h["typ"] = "JWT" }), nil, 401, `Bearer error="invalid_token"`},
		{"no typ", "Bearer " + with(func(h, _ map[string]any) { delete(h, "typ") }), nil, 401, `Bearer error="invalid_token"`},
		{"alg none", "Bearer " + with(func(h, _ map[string]any) { h["alg"] = "none" }), nil, 401, `Bearer error="invalid_token"`},
		{"alg HS256", "Bearer " + with(func(h, _ map[string]any) { h["alg"] = "HS256" }), nil, 401, `Bearer error="invalid_token"`},
		{"alg ES384 not allowed", "Bearer " + with(func(h, _ map[string]any) { h["alg"] = "ES384" }), nil, 401, `Bearer error="invalid_token"`},
		{"embedded jwk", "Bearer " + with(func(h, _ map[string]any) { h["jwk"] = map[string]any{"kty": "EC"} }), nil, 401, `Bearer error="invalid_token"`},
		{"jku", "Bearer " + with(func(h, _ map[string]any) { h["jku"] = "https://evil.test/jwks" }), nil, 401, `Bearer error="invalid_token"`},
		{"bad signature", "Bearer " + tampered, nil, 401, `Bearer error="invalid_token"`},
		{"wrong audience", "Bearer " + with(func(_, cl map[string]any) { cl["aud"] = "billing_api" }), nil, 401, `Bearer error="invalid_token"`},
		{"wrong issuer", "Bearer " + with(func(_, cl map[string]any) { cl["iss"] = testIssuer + "/" }), nil, 401, `Bearer error="invalid_token"`},
		{"expired", "Bearer " + with(func(_, cl map[string]any) { cl["exp"] = now.Add(-31 * time.Second).Unix() }), nil, 401, `Bearer error="invalid_token"`},
		{"expired within leeway", "Bearer " + with(func(_, cl map[string]any) { cl["exp"] = now.Add(-10 * time.Second).Unix() }), nil, 200, ""},
		{"no exp", "Bearer " + with(func(_, cl map[string]any) { delete(cl, "exp") }), nil, 401, `Bearer error="invalid_token"`},
		{"iat in the future", "Bearer " + with(func(_, cl map[string]any) { cl["iat"] = now.Add(2 * time.Minute).Unix() }), nil, 401, `Bearer error="invalid_token"`},
		{"exp as string", "Bearer " + with(func(_, cl map[string]any) { cl["exp"] = "soon" }), nil, 401, `Bearer error="invalid_token"`},
		{"missing scope", "Bearer " + good, []string{"orders:read", "orders:delete"}, 403, `Bearer error="insufficient_scope"`},
		{"token in URL", "", nil, 400, `Bearer error="invalid_request"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var rec *httptest.ResponseRecorder
			if tc.name == "token in URL" {
				h := v.Protect(http.NotFoundHandler())
				req := httptest.NewRequest("GET", "/orders/1?access_token="+url.QueryEscape(good), nil)
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, req)
			} else {
				rec, _ = serveOnce(v, tc.auth, tc.scopes...)
			}
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d (body %s)", rec.Code, tc.status, rec.Body)
			}
			got := rec.Header().Get("WWW-Authenticate")
			if tc.challenge == "" {
				if got != "" {
					t.Fatalf("WWW-Authenticate = %q on success", got)
				}
				return
			}
			if tc.challenge == "Bearer" && got != "Bearer" {
				t.Fatalf("WWW-Authenticate = %q, want a bare Bearer challenge", got)
			}
			if !strings.HasPrefix(got, tc.challenge) {
				t.Fatalf("WWW-Authenticate = %q, want prefix %q", got, tc.challenge)
			}
			if strings.Contains(got, good[:20]) || strings.Contains(rec.Body.String(), good[:20]) {
				t.Fatal("the token leaked into the answer")
			}
			if tc.status == 403 && !strings.Contains(got, `scope="orders:read orders:delete"`) {
				t.Fatalf("insufficient_scope challenge lacks the scope: %q", got)
			}
			if tc.challenge != "Bearer" {
				var body map[string]string
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || !strings.Contains(tc.challenge, body["error"]) || body["error"] == "" {
					t.Fatalf("body %q does not carry the error code", rec.Body)
				}
			}
		})
	}
}

func TestPrincipal(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	rec, p := serveOnce(v, "Bearer "+is.mint(nil, goodClaims(c.Now())), "orders:read")
	if rec.Code != 200 || p == nil {
		t.Fatalf("status %d, principal %v", rec.Code, p)
	}
	if p.ActorType != ActorUser || p.User != "alice" || p.Service != "" || p.Subject != "alice" || p.Tenant != "acme" ||
		p.Mode != "on_behalf_of" || p.TraceID != "trace-1" || p.GrantID != "grt_1" || p.ClientID != "webapp" ||
		p.SessionID != "sess-1" || !p.HasScope("orders:write") || len(p.Scopes) != 2 {
		t.Fatalf("principal = %+v", p)
	}
	// The agent Mandate vouched for is the outermost act; the rest of the chain is the MCP
	// server's own statement.
	if p.Agent != (Actor{Sub: "agent_1", ClientID: "webapp"}) || len(p.PriorActors) != 1 || p.PriorActors[0] != (Actor{Sub: "planner"}) {
		t.Fatalf("agent %+v, prior actors %+v", p.Agent, p.PriorActors)
	}
	// service_identity for a user: sub is the client, the user is actor_sub.
	cl := goodClaims(c.Now())
	cl["sub"], cl["delegation_mode"] = "webapp", "service_identity"
	delete(cl, "act")
	_, p = serveOnce(v, "Bearer "+is.mint(nil, cl))
	if p == nil || p.Subject != "webapp" || p.User != "alice" || p.ActorType != ActorUser ||
		p.Agent != (Actor{Sub: "agent_1", ClientID: "webapp"}) || len(p.PriorActors) != 0 {
		t.Fatalf("service_identity principal = %+v", p)
	}
}

// A service actor is a service, never a user: a handler that authorizes on User (as most
// do) must find it empty, and the service's name in Service.
func TestServiceActorIsNeverAUser(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	cl := goodClaims(c.Now())
	cl["sub"], cl["delegation_mode"], cl["actor_type"], cl["actor_sub"] = "webapp", "service_identity", "service", "nightly-batch"
	delete(cl, "act")
	delete(cl, "grant_id")
	rec, p := serveOnce(v, "Bearer "+is.mint(nil, cl))
	if rec.Code != 200 || p == nil {
		t.Fatalf("status %d %s", rec.Code, rec.Body)
	}
	if p.ActorType != ActorService || p.User != "" || p.Service != "nightly-batch" || p.Tenant != "acme" ||
		p.Agent != (Actor{Sub: "agent_1", ClientID: "webapp"}) {
		t.Fatalf("service principal = %+v", p)
	}
}

// Verifiers fail closed on what would make them guess who the caller is (sdk-contract §2):
// a token from a token exchange without actor_type, with one they do not know, or whose
// actor type contradicts its mode.
func TestActorTypeIsRequired(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	for name, mut := range map[string]func(cl map[string]any){
		"no actor_type":      func(cl map[string]any) { delete(cl, "actor_type") },
		"empty actor_type":   func(cl map[string]any) { cl["actor_type"] = "" },
		"unknown actor_type": func(cl map[string]any) { cl["actor_type"] = "robot" },
		"service on behalf of": func(cl map[string]any) {
			cl["actor_type"] = "service"
		},
		"service without actor_sub": func(cl map[string]any) {
			cl["actor_type"], cl["delegation_mode"], cl["sub"] = "service", "service_identity", "webapp"
			delete(cl, "actor_sub")
			delete(cl, "act")
		},
		"user in service_identity without actor_sub": func(cl map[string]any) {
			cl["delegation_mode"], cl["sub"] = "service_identity", "webapp"
			delete(cl, "actor_sub")
			delete(cl, "act")
		},
	} {
		cl := goodClaims(c.Now())
		mut(cl)
		rec, p := serveOnce(v, "Bearer "+is.mint(nil, cl))
		if rec.Code != 401 || p != nil || !strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s: %d %q, principal %+v; want 401 invalid_token", name, rec.Code, rec.Header().Get("WWW-Authenticate"), p)
		}
		if name == "no actor_type" && !strings.Contains(rec.Header().Get("WWW-Authenticate"), "token has no actor_type") {
			t.Errorf("no actor_type: challenge %q", rec.Header().Get("WWW-Authenticate"))
		}
	}
}

func TestUnknownKidRefreshIsRateLimited(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	if rec, _ := serveOnce(v, "Bearer "+is.mint(nil, goodClaims(c.Now()))); rec.Code != 200 {
		t.Fatalf("first token: %d", rec.Code)
	}
	if n := v.JWKS().Fetches(); n != 1 {
		t.Fatalf("fetches after first token = %d, want 1", n)
	}
	// The issuer rotates: a token with the new kid triggers one refresh (the last fetch is
	// older than the interval).
	c.Add(2 * time.Minute)
	is.addKey("k2")
	if rec, _ := serveOnce(v, "Bearer "+is.mint(nil, goodClaims(c.Now()))); rec.Code != 200 {
		t.Fatalf("token with the rotated kid: %d %s", rec.Code, rec.Body)
	}
	if n := v.JWKS().Fetches(); n != 2 {
		t.Fatalf("fetches after rotation = %d, want 2", n)
	}
	// Made-up kids within the interval cost no fetch.
	for i := 0; i < 5; i++ {
		rec, _ := serveOnce(v, "Bearer "+is.mint(map[string]any{"typ": "at+jwt", "kid": "nope"}, goodClaims(c.Now())))
		if rec.Code != 401 {
			t.Fatalf("unknown kid: %d", rec.Code)
		}
	}
	if n := v.JWKS().Fetches(); n != 2 {
		t.Fatalf("fetches after unknown kids = %d, want still 2", n)
	}
	if h := is.hits.Load(); h != 2 {
		t.Fatalf("issuer saw %d JWKS requests, want 2", h)
	}
	// After the interval an unknown kid may refresh again.
	c.Add(61 * time.Second)
	serveOnce(v, "Bearer "+is.mint(map[string]any{"typ": "at+jwt", "kid": "nope"}, goodClaims(c.Now())))
	if n := v.JWKS().Fetches(); n != 3 {
		t.Fatalf("fetches after the interval = %d, want 3", n)
	}
}

func TestJWKSUnavailableIs503(t *testing.T) {
	is := newIssuer(t)
	is.down.Store(true)
	c := &clock{t: time.Now()}
	v := newTestVerifier(t, is, c, nil)
	rec, _ := serveOnce(v, "Bearer "+is.mint(nil, goodClaims(c.Now())))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("status %d, challenge %q; want 503 without a challenge", rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
}

func TestIntrospection(t *testing.T) {
	is := newIssuer(t)
	c := &clock{t: time.Now()}
	active := true
	var gotAuthOK bool
	// A stand-in for Mandate's RFC 7662 endpoint (the real one is exercised end to end in
	// examples/stack).
	intro := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		gotAuthOK = ok && u == "orders-api" && p == "s3cret%2F" // form-encoded before base64
		if !gotAuthOK {
			w.WriteHeader(401)
			return
		}
		if !active {
			_, _ = w.Write([]byte(`{"active":false}`))
			return
		}
		cl := goodClaims(c.Now())
		cl["active"] = true
		_ = json.NewEncoder(w).Encode(cl)
	}))
	defer intro.Close()
	v := newTestVerifier(t, is, c, func(cfg *Config) {
		cfg.Introspection = &IntrospectionConfig{Endpoint: intro.URL, ClientID: "orders-api", ClientSecret: "s3cret/"}
	})
	run := func() *httptest.ResponseRecorder {
		h := v.ProtectOnline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), "orders:read")
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("Authorization", "Bearer opaque-or-jwt")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := run(); rec.Code != 200 || !gotAuthOK {
		t.Fatalf("active token: %d (auth ok %v)", rec.Code, gotAuthOK)
	}
	active = false
	if rec := run(); rec.Code != 401 || !strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Fatalf("inactive token: %d %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
	}
}
