package main

// The end-to-end suite: the real server, started through run as the binary would be, on
// SQLite always and on Postgres when MANDATE_TEST_DATABASE_URL is set. Everything is
// provisioned through the admin REST API and every exchange carries a real envelope signed
// with a key the test generated and registered, so the suite checks what a deployment sees:
// SPEC §4's decision table row by row, the claims of §5 per mode, §6's endpoints and the
// audit log of §8. One server per backend is shared by the subtests; each subtest makes its
// own users, clients or grants where it changes state.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage/postgres/pgtest"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/mandatehq/mandate/envelope"
)

const (
	e2eAdminSecret = "e2e-bootstrap-admin-secret-0123456789abcdef"
	e2eSecret      = "e2e-deployment-secret-0123456789abcdef0123"
	grantTE        = "urn:ietf:params:oauth:grant-type:token-exchange"
	typeAccess     = "urn:ietf:params:oauth:token-type:access_token"
	typeJWT        = "urn:ietf:params:oauth:token-type:jwt"
)

// backendSetup prepares a fresh, empty store for one test and returns the server's env and
// extra arguments.
type backendSetup func(t *testing.T) (env map[string]string, args []string)

func sqliteBackend(t *testing.T) (map[string]string, []string) {
	return map[string]string{"MANDATE_BOOTSTRAP_ADMIN_SECRET": e2eAdminSecret},
		[]string{"--database", filepath.Join(t.TempDir(), "mandate.db")}
}

// postgresBackend gives the test its own schema, selected by the database URL's search_path.
// Unset MANDATE_TEST_DATABASE_URL skips; set but unreachable fails.
func postgresBackend(t *testing.T) (map[string]string, []string) {
	_, u := pgtest.Schema(t) // dropped at cleanup, after the server started below has stopped
	return map[string]string{
			"MANDATE_BOOTSTRAP_ADMIN_SECRET": e2eAdminSecret,
			"MANDATE_SECRET":                 e2eSecret,
		},
		[]string{"--database", u, "--auto-migrate"}
}

// onBackends runs fn once per backend, each against its own freshly started server.
func onBackends(t *testing.T, fn func(t *testing.T, s *e2eServer)) {
	for _, b := range []struct {
		name  string
		setup backendSetup
	}{{"sqlite", sqliteBackend}, {"postgres", postgresBackend}} {
		t.Run(b.name, func(t *testing.T) {
			env, args := b.setup(t)
			fn(t, startE2E(t, env, args...))
		})
	}
}

// freeAddr picks a loopback port that is free now, so the issuer can name the server's real
// URL before it starts (a discovery client compares the two).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// e2eServer is a started server whose issuer is its own public URL, with an admin token.
type e2eServer struct {
	inst       *instance
	issuer     string
	adminToken string
}

func startE2E(t *testing.T, env map[string]string, args ...string) *e2eServer {
	t.Helper()
	addr := freeAddr(t)
	issuer := "http://" + addr
	// start puts its own --public-addr first; the flag given last wins.
	inst := start(t, env, append(args, "--public-addr", addr, "--issuer", issuer)...)
	if inst.PublicURL != issuer {
		t.Fatalf("public listener on %s, want %s", inst.PublicURL, issuer)
	}
	s := &e2eServer{inst: inst, issuer: issuer}
	r := s.post(t, "/oauth2/token", url.Values{"grant_type": {"client_credentials"}}, basicAuth("mandate-admin", env["MANDATE_BOOTSTRAP_ADMIN_SECRET"]))
	if r.status != http.StatusOK || r.str("access_token") == "" {
		t.Fatalf("admin client_credentials: %d %s", r.status, r.raw)
	}
	if scope := strings.Fields(r.str("scope")); !slices.Contains(scope, "mandate:admin") {
		t.Fatalf("admin token scope %q lacks mandate:admin", r.str("scope"))
	}
	s.adminToken = r.str("access_token")
	return s
}

// reply is one HTTP answer.
type reply struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (r reply) str(k string) string { s, _ := r.body[k].(string); return s }

// clientAuth adds a client's credentials to a token-endpoint request.
type clientAuth func(form url.Values, req *http.Request)

// basicAuth is client_secret_basic: RFC 6749 §2.3.1 form-encodes both parts first.
func basicAuth(id, secret string) clientAuth {
	return func(_ url.Values, r *http.Request) {
		r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
}

func postAuth(id, secret string) clientAuth {
	return func(f url.Values, _ *http.Request) {
		f.Set("client_id", id)
		f.Set("client_secret", secret)
	}
}

func noAuth(url.Values, *http.Request) {}

func (s *e2eServer) post(t *testing.T, path string, form url.Values, auth clientAuth) reply {
	t.Helper()
	f := url.Values{}
	for k, v := range form {
		f[k] = append([]string(nil), v...)
	}
	req, err := http.NewRequest(http.MethodPost, s.issuer+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	auth(f, req)
	body := f.Encode()
	req.Body = io.NopCloser(strings.NewReader(body))
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, req)
}

func do(t *testing.T, req *http.Request) reply {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &r.body)
	}
	return r
}

// admin calls the admin REST API as the bootstrap admin and requires status want.
func (s *e2eServer) admin(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.inst.AdminURL+"/admin/v1"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+s.adminToken)
	r := do(t, req)
	if r.status != want {
		t.Fatalf("%s /admin/v1%s = %d, want %d: %s", method, path, r.status, want, r.raw)
	}
	return r.body
}

// e2eClient is a registered MCP server: its credentials and its envelope signing key.
type e2eClient struct {
	ID, Secret string
	Method     string
	key        *ecdsa.PrivateKey
	kid        string
	signer     *envelope.Signer
}

func (c *e2eClient) auth() clientAuth {
	if c.Method == "client_secret_post" {
		return postAuth(c.ID, c.Secret)
	}
	return basicAuth(c.ID, c.Secret)
}

// publicJWK is the public half of key as a JWK with kid, alg and use.
func publicJWK(t *testing.T, key *ecdsa.PrivateKey, kid string) map[string]any {
	t.Helper()
	k, err := jwk.Import(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]any{jwk.KeyIDKey: kid, jwk.AlgorithmKey: jwa.ES256(), jwk.KeyUsageKey: "sig"} {
		if err := k.Set(name, v); err != nil {
			t.Fatal(err)
		}
	}
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

// createClient registers a client through the admin API with an inline JWKS of a fresh key.
func (s *e2eServer) createClient(t *testing.T, spec map[string]any) *e2eClient {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid := "k-" + randHex(t, 4)
	spec["jwks"] = map[string]any{"keys": []any{publicJWK(t, key, kid)}}
	got := s.admin(t, http.MethodPost, "/clients", spec, http.StatusCreated)
	c := &e2eClient{key: key, kid: kid}
	c.ID, _ = got["client_id"].(string)
	c.Secret, _ = got["client_secret"].(string)
	c.Method, _ = got["token_endpoint_auth_method"].(string)
	if c.ID == "" || c.Secret == "" {
		t.Fatalf("client create answered without client_id or client_secret: %v", got)
	}
	if _, ok := got["jwks"]; !ok {
		t.Fatalf("client create answered without jwks: %v", got)
	}
	if c.signer, err = envelope.NewSigner(key, kid); err != nil {
		t.Fatal(err)
	}
	return c
}

// claims is a valid user envelope of c for user in tenant acme, traced as trace.
func (c *e2eClient) claims(s *e2eServer, user, trace string, scopes ...string) envelope.Claims {
	return envelope.Claims{
		Issuer:        c.ID,
		Audience:      envelope.Audience{s.issuer},
		Actor:         envelope.Actor{Type: envelope.ActorUser, Sub: user, Tenant: "acme"},
		Agent:         envelope.Agent{ID: "agent_456"},
		Session:       envelope.Session{ID: "sess_" + trace, TraceID: trace},
		Authorization: envelope.Authorization{Scopes: scopes, Confidence: envelope.ConfidenceVerified},
		Delegation:    envelope.Delegation{Mode: envelope.ModeOnBehalfOf},
	}
}

func (c *e2eClient) sign(t *testing.T, cl envelope.Claims) string {
	t.Helper()
	tok, err := c.signer.Sign(cl)
	if err != nil {
		t.Fatalf("sign envelope: %v", err)
	}
	return tok
}

// signRaw signs any header and claims with c's key (ES256), for envelopes the SDK refuses
// to make.
func (c *e2eClient) signRaw(t *testing.T, header map[string]any, claims any) string {
	t.Helper()
	h, _ := json.Marshal(header)
	p, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	sum := sha256.Sum256([]byte(input))
	r, sg, err := ecdsa.Sign(rand.Reader, c.key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	sg.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// teForm is a token exchange request for one audience.
func teForm(subjectToken, audience string) url.Values {
	f := url.Values{
		"grant_type":         {grantTE},
		"subject_token":      {subjectToken},
		"subject_token_type": {envelope.TokenType},
	}
	if audience != "" {
		f.Set("audience", audience)
	}
	return f
}

// fixture is what every test provisions on its server.
type fixture struct {
	main, post, noMode, ccOnly, resourceServer *e2eClient
	userGrant                                  string // user_1's grant for main
}

var allModes = []string{envelope.ModeOnBehalfOf, envelope.ModeServiceIdentity, envelope.ModeRestrictedUser}

func provision(t *testing.T, s *e2eServer) *fixture {
	t.Helper()
	s.admin(t, http.MethodPost, "/audiences", map[string]any{
		"id": "orders_api", "name": "Orders API", "resource_uris": []string{"https://orders.example.com/api"},
		"scopes": []string{"orders:read", "orders:write", "orders:admin", "orders:delete"}, "allowed_modes": allModes,
	}, http.StatusCreated)
	s.admin(t, http.MethodPost, "/audiences", map[string]any{
		"id": "billing_api", "scopes": []string{"billing:read"}, "allowed_modes": []string{envelope.ModeOnBehalfOf},
	}, http.StatusCreated)
	s.admin(t, http.MethodPost, "/audiences", map[string]any{"id": "hr_api", "scopes": []string{"hr:read"}}, http.StatusCreated)
	s.admin(t, http.MethodPost, "/audiences", map[string]any{"id": "inventory_api", "scopes": []string{"inv:read"}}, http.StatusCreated)

	// main may not hold orders:admin, whatever its grants say: the client narrows too.
	clientScopes := []string{"orders:read", "orders:write", "orders:delete", "billing:read", "inv:read"}
	clientAuds := []string{"orders_api", "billing_api", "inventory_api"}
	f := &fixture{}
	f.main = s.createClient(t, map[string]any{
		"client_id": "mcp-main", "name": "Main MCP server", "grant_types": []string{grantTE},
		"allowed_tenants": []string{"acme"}, "allowed_audiences": clientAuds, "allowed_scopes": clientScopes,
		"service_actors": []string{"svc_batch"},
	})
	f.post = s.createClient(t, map[string]any{
		"client_id": "mcp-post", "token_endpoint_auth_method": "client_secret_post", "grant_types": []string{grantTE},
		"allowed_audiences": clientAuds, "allowed_scopes": clientScopes,
	})
	f.noMode = s.createClient(t, map[string]any{
		"client_id": "mcp-obo-only", "grant_types": []string{grantTE}, "allowed_modes": []string{envelope.ModeOnBehalfOf},
	})
	f.ccOnly = s.createClient(t, map[string]any{"client_id": "svc-cc-only", "grant_types": []string{"client_credentials"}})
	f.resourceServer = s.createClient(t, map[string]any{"client_id": "orders-rs", "grant_types": []string{"client_credentials"}})
	if f.post.Method != "client_secret_post" || f.main.Method != "client_secret_basic" {
		t.Fatalf("auth methods: main %q, post %q", f.main.Method, f.post.Method)
	}

	f.userGrant = s.createGrant(t, map[string]any{
		"tenant": "acme", "subject": "user_1", "client_id": f.main.ID,
		"audiences": []string{"orders_api", "billing_api"},
		"scopes":    []string{"orders:read", "orders:write", "orders:admin", "billing:read"}, "modes": allModes,
	})
	s.createGrant(t, map[string]any{
		"tenant": "acme", "subject": "*", "client_id": f.post.ID, "audiences": []string{"orders_api"}, "scopes": []string{"orders:read"},
	})
	return f
}

func (s *e2eServer) createGrant(t *testing.T, spec map[string]any) string {
	t.Helper()
	if _, ok := spec["expires_at"]; !ok {
		spec["expires_at"] = time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
	}
	g := s.admin(t, http.MethodPost, "/grants", spec, http.StatusCreated)
	id, _ := g["id"].(string)
	if id == "" {
		t.Fatalf("grant create answered without id: %v", g)
	}
	return id
}

// checkError asserts an OAuth error answer: status, error code, a description, no-store.
func checkError(t *testing.T, r reply, status int, code string) {
	t.Helper()
	if r.status != status || r.str("error") != code {
		t.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, code)
	}
	if r.str("error_description") == "" {
		t.Errorf("error without error_description: %s", r.raw)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	if _, ok := r.body["access_token"]; ok {
		t.Errorf("an error answer carries an access_token: %s", r.raw)
	}
}

// checkGranted asserts a successful exchange answer (SPEC §4) and returns the token.
func checkGranted(t *testing.T, r reply, issuedType string) string {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("got %d %s, want 200", r.status, r.raw)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	if r.str("token_type") != "Bearer" || r.str("issued_token_type") != issuedType {
		t.Errorf("token_type %q issued_token_type %q, want Bearer %s", r.str("token_type"), r.str("issued_token_type"), issuedType)
	}
	if _, ok := r.body["refresh_token"]; ok {
		t.Errorf("a refresh token was issued: %s", r.raw)
	}
	if ei, _ := r.body["expires_in"].(float64); ei <= 0 {
		t.Errorf("expires_in = %v", r.body["expires_in"])
	}
	tok := r.str("access_token")
	if tok == "" {
		t.Fatalf("no access_token: %s", r.raw)
	}
	return tok
}

// verifyToken checks the issued token's signature with a key fetched from the JWKS (jwx),
// its header (typ at+jwt, an ES256 kid the JWKS publishes), iss, aud and times; it returns
// the claims.
func (s *e2eServer) verifyToken(t *testing.T, tok, audience string) map[string]any {
	t.Helper()
	set, err := jwk.Fetch(context.Background(), s.issuer+"/.well-known/jwks.json")
	if err != nil {
		t.Fatalf("fetch JWKS: %v", err)
	}
	msg, err := jws.Parse([]byte(tok), jws.WithCompact())
	if err != nil {
		t.Fatalf("parse token: %v", err)
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	typ, _ := h.Type()
	alg, _ := h.Algorithm()
	kid, _ := h.KeyID()
	if typ != "at+jwt" || alg != jwa.ES256() {
		t.Errorf("header typ %q alg %v, want at+jwt ES256", typ, alg)
	}
	if _, ok := set.LookupKeyID(kid); !ok {
		t.Errorf("kid %q is not in the JWKS", kid)
	}
	if _, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithValidate(true),
		jwt.WithIssuer(s.issuer), jwt.WithAudience(audience)); err != nil {
		t.Fatalf("token does not verify against the JWKS: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(msg.Payload(), &claims); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestE2EDecisionTable(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		f := provision(t, s)
		main := f.main
		// env signs a user_1 envelope of main for orders:read, after edit.
		env := func(t *testing.T, trace string, edit func(*envelope.Claims)) string {
			c := main.claims(s, "user_1", trace, "orders:read")
			if edit != nil {
				edit(&c)
			}
			return main.sign(t, c)
		}
		s.createGrant(t, map[string]any{
			"tenant": "acme", "subject": "user_obo_only", "client_id": main.ID, "audiences": []string{"orders_api"},
			"scopes": []string{"orders:read"}, "modes": []string{envelope.ModeOnBehalfOf},
		})
		now := time.Now()
		other := &e2eClient{kid: main.kid} // same kid, a key nobody registered
		other.key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		deep := &envelope.Act{Sub: "a1", Act: &envelope.Act{Sub: "a2", Act: &envelope.Act{Sub: "a3", Act: &envelope.Act{Sub: "a4"}}}}

		cases := []struct {
			name    string
			auth    clientAuth // nil: main's credentials
			auditAs string     // whose newest audit record holds reason; "": main
			form    func(t *testing.T, trace string) url.Values
			status  int
			code    string
			reason  string // the audit record's reason, checked when the envelope was read
			basic   bool   // WWW-Authenticate: Basic expected
		}{
			// Client authentication. A failure is nobody's: no record of its own (SPEC §8),
			// only the address's aggregated one (authz's tests check it).
			{name: "wrong secret over Basic", auth: basicAuth(main.ID, "not-the-secret"),
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "orders_api") },
				status: 401, code: "invalid_client", basic: true},
			{name: "unknown client over post", auth: postAuth("nobody", "whatever-secret"),
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "orders_api") },
				status: 401, code: "invalid_client"},
			{name: "no client authentication", auth: noAuth,
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "orders_api") },
				status: 401, code: "invalid_client"},
			{name: "post credentials for a basic client", auth: postAuth(main.ID, main.Secret),
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "orders_api") },
				status: 401, code: "invalid_client"},
			// Grant type.
			{name: "client without the token exchange grant", auth: f.ccOnly.auth(), auditAs: f.ccOnly.ID,
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "orders_api") },
				status: 400, code: "unauthorized_client", reason: "grant_type_not_allowed"},
			{name: "unknown grant_type",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Set("grant_type", "password")
					return f
				}, status: 400, code: "unsupported_grant_type"},
			// Parameters.
			{name: "missing subject_token",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm("", "orders_api")
					f.Del("subject_token")
					return f
				}, status: 400, code: "invalid_request", reason: "missing_subject_token"},
			{name: "empty subject_token counts as absent",
				form:   func(t *testing.T, tr string) url.Values { return teForm("", "orders_api") },
				status: 400, code: "invalid_request", reason: "missing_subject_token"},
			{name: "unknown subject_token_type",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Set("subject_token_type", "urn:ietf:params:oauth:token-type:id_token")
					return f
				}, status: 400, code: "invalid_request", reason: "bad_subject_token_type"},
			{name: "no audience or resource",
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "") },
				status: 400, code: "invalid_request", reason: "missing_target"},
			{name: "repeated subject_token",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Add("subject_token", env(t, tr+"-2", nil))
					return f
				}, status: 400, code: "invalid_request", reason: "malformed_request"},
			{name: "repeated scope",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f["scope"] = []string{"orders:read", "orders:read"}
					return f
				}, status: 400, code: "invalid_request", reason: "malformed_request"},
			{name: "repeated grant_type",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Add("grant_type", grantTE)
					return f
				}, status: 400, code: "invalid_request", reason: "malformed_request"},
			{name: "actor_token is not accepted",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Set("actor_token", env(t, tr+"-actor", nil))
					f.Set("actor_token_type", envelope.TokenType)
					return f
				}, status: 400, code: "invalid_request", reason: "malformed_request"},
			{name: "unknown requested_token_type",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "orders_api")
					f.Set("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")
					return f
				}, status: 400, code: "invalid_request", reason: "bad_requested_token_type"},
			// The envelope (SPEC §3).
			{name: "envelope is not a JWS",
				form:   func(t *testing.T, tr string) url.Values { return teForm("not.a.jws", "orders_api") },
				status: 400, code: "invalid_request", reason: "envelope_bad_format"},
			{name: "envelope over 8 KiB",
				form:   func(t *testing.T, tr string) url.Values { return teForm(strings.Repeat("a", 8193), "orders_api") },
				status: 400, code: "invalid_request", reason: "subject_token_too_large"},
			{name: "envelope for another issuer",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Audience = envelope.Audience{"https://elsewhere.example"} }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_audience_mismatch"},
			{name: "expired envelope",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) {
						c.IssuedAt, c.ExpiresAt = now.Add(-10*time.Minute), now.Add(-5*time.Minute)
					}), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_expired"},
			{name: "envelope lifetime over the client maximum",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.IssuedAt, c.ExpiresAt = now, now.Add(10*time.Minute) }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_lifetime_too_long"},
			{name: "envelope signed by an unregistered key",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(other.signRaw(t, map[string]any{"alg": "ES256", "typ": envelope.Type, "kid": main.kid},
						main.claimsSigned(s, "user_1", tr)), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_bad_signature"},
			{name: "envelope issued by another client",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Issuer, c.Agent.ClientID = f.post.ID, f.post.ID }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_issuer_mismatch"},
			{name: "envelope typ is not eie+jwt",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(main.signRaw(t, map[string]any{"alg": "ES256", "typ": "JWT", "kid": main.kid},
						main.claimsSigned(s, "user_1", tr)), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_wrong_type"},
			{name: "envelope with alg none",
				form: func(t *testing.T, tr string) url.Values {
					h, _ := json.Marshal(map[string]any{"alg": "none", "typ": envelope.Type, "kid": main.kid})
					p, _ := json.Marshal(main.claimsSigned(s, "user_1", tr))
					return teForm(base64.RawURLEncoding.EncodeToString(h)+"."+base64.RawURLEncoding.EncodeToString(p)+".", "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_bad_format"}, // the empty signature already fails the format
			{name: "envelope with alg HS256",
				form: func(t *testing.T, tr string) url.Values {
					// An HS* header is refused by the allow-list before any key or signature is looked at.
					return teForm(main.signRaw(t, map[string]any{"alg": "HS256", "typ": envelope.Type, "kid": main.kid},
						main.claimsSigned(s, "user_1", tr)), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_alg_not_allowed"},
			{name: "envelope tenant not allowed for the client",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Actor.Tenant = "globex" }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "tenant_not_allowed"},
			{name: "act chain deeper than 4",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Act = deep }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "act_chain_too_deep"},
			// The target.
			{name: "unknown audience",
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "nope_api") },
				status: 400, code: "invalid_target", reason: "unknown_audience"},
			{name: "unknown resource",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "")
					f.Set("resource", "https://unknown.example.com/")
					return f
				}, status: 400, code: "invalid_target", reason: "unknown_resource"},
			{name: "audience and resource name two audiences",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, nil), "billing_api")
					f.Set("resource", "https://orders.example.com/api")
					return f
				}, status: 400, code: "invalid_target", reason: "conflicting_targets"},
			{name: "audience not in delegation.allowed",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Delegation.Allowed = []string{"billing_api"} }), "orders_api")
				}, status: 400, code: "invalid_target", reason: "audience_not_in_envelope"},
			{name: "audience not allowed for the client",
				form:   func(t *testing.T, tr string) url.Values { return teForm(env(t, tr, nil), "hr_api") },
				status: 400, code: "invalid_target", reason: "audience_not_allowed_for_client"},
			// The mode.
			{name: "mode not allowed by the audience",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) {
						c.Delegation.Mode = envelope.ModeServiceIdentity
						c.Authorization.Scopes = []string{"billing:read"}
					}), "billing_api")
				}, status: 400, code: "invalid_request", reason: "mode_not_allowed_for_audience"},
			{name: "mode not allowed for the client", auth: f.noMode.auth(), auditAs: f.noMode.ID,
				form: func(t *testing.T, tr string) url.Values {
					c := f.noMode.claims(s, "user_1", tr, "orders:read")
					c.Delegation.Mode = envelope.ModeRestrictedUser
					return teForm(f.noMode.sign(t, c), "orders_api")
				}, status: 400, code: "invalid_request", reason: "mode_not_allowed_for_client"},
			// The grant.
			{name: "no active grant for the user",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Actor.Sub = "user_2" }), "orders_api")
				}, status: 400, code: "invalid_request", reason: "no_active_grant"},
			{name: "no grant covers the audience",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Authorization.Scopes = []string{"inv:read"} }), "inventory_api")
				}, status: 400, code: "invalid_target", reason: "grant_does_not_cover_audience_or_mode"},
			// SPEC §4 lists "mode allowed by ... the grant" under invalid_request and "a grant
			// covers this audience and mode" under invalid_target; Mandate answers a mode the
			// user's only grant does not list as the latter: no grant covers the request.
			{name: "mode not allowed by the grant",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) {
						c.Actor.Sub = "user_obo_only"
						c.Delegation.Mode = envelope.ModeRestrictedUser
					}), "orders_api")
				}, status: 400, code: "invalid_target", reason: "grant_does_not_cover_audience_or_mode"},
			// The verifier refuses this as an envelope with a value SPEC §3 does not allow,
			// before policy runs; the answer is the same invalid_request.
			{name: "service actor outside service_identity",
				form: func(t *testing.T, tr string) url.Values {
					c := main.claimsSigned(s, "svc_batch", tr)
					c.Actor.Type = envelope.ActorService
					return teForm(main.signRaw(t, map[string]any{"alg": "ES256", "typ": envelope.Type, "kid": main.kid}, c), "orders_api")
				}, status: 400, code: "invalid_request", reason: "envelope_bad_value"},
			// Scopes.
			{name: "requested scope outside the effective set",
				form: func(t *testing.T, tr string) url.Values {
					f := teForm(env(t, tr, func(c *envelope.Claims) { c.Authorization.Scopes = []string{"orders:read", "orders:admin"} }), "orders_api")
					f.Set("scope", "orders:read orders:admin") // orders:admin: the client may not hold it
					return f
				}, status: 400, code: "invalid_scope", reason: "scope_not_allowed"},
			{name: "empty effective scope",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Authorization.Scopes = []string{"hr:read"} }), "orders_api")
				}, status: 400, code: "invalid_scope", reason: "no_effective_scope"},
			{name: "envelope without scopes",
				form: func(t *testing.T, tr string) url.Values {
					return teForm(env(t, tr, func(c *envelope.Claims) { c.Authorization.Scopes = nil }), "orders_api")
				}, status: 400, code: "invalid_scope", reason: "no_effective_scope"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				trace := "tr-" + randHex(t, 8)
				auth := tc.auth
				if auth == nil {
					auth = main.auth()
				}
				r := s.post(t, "/oauth2/token", tc.form(t, trace), auth)
				checkError(t, r, tc.status, tc.code)
				challenge := r.header.Get("WWW-Authenticate")
				if tc.basic != strings.HasPrefix(challenge, "Basic") {
					t.Errorf("WWW-Authenticate = %q, want Basic: %v", challenge, tc.basic)
				}
				if tc.status == http.StatusUnauthorized {
					for _, id := range []string{main.ID, "nobody"} {
						if recs := s.audit(t, url.Values{"client_id": {id}, "limit": {"1"}}); len(recs) == 1 &&
							recs[0]["reason"] == "client_authentication_failed" {
							t.Errorf("a failed authentication recorded under the client id it claimed: %v", recs[0])
						}
					}
				}
				if tc.reason != "" {
					// The newest record of the client: a refused envelope's claims are not
					// trusted, so its trace id may be missing from the record.
					id := main.ID
					if tc.auditAs != "" {
						id = tc.auditAs
					}
					recs := s.audit(t, url.Values{"client_id": {id}, "limit": {"1"}})
					if len(recs) != 1 {
						t.Fatalf("no audit record for %s", id)
					}
					rec := recs[0]
					if rec["outcome"] != "denied" || rec["reason"] != tc.reason || rec["event"] != "token_exchange" {
						t.Errorf("audit record %v: want denied token_exchange %s", rec, tc.reason)
					}
				}
			})
		}

		t.Run("body over 64 KiB", func(t *testing.T) {
			f := teForm(env(t, "big", nil), "orders_api")
			f.Set("padding", strings.Repeat("x", 65<<10))
			r := s.post(t, "/oauth2/token", f, main.auth())
			checkError(t, r, http.StatusRequestEntityTooLarge, "invalid_request")
		})
	})
}

// claimsSigned is c.claims with the times the Signer would fill in, for signRaw.
func (c *e2eClient) claimsSigned(s *e2eServer, user, trace string) envelope.Claims {
	cl := c.claims(s, user, trace, "orders:read")
	cl.IssuedAt = time.Now().Truncate(time.Second)
	cl.ExpiresAt = cl.IssuedAt.Add(time.Minute)
	cl.JTI = "jti-" + trace
	cl.Agent.ClientID = c.ID
	cl.Agent.Type = envelope.AgentTypeMCP
	return cl
}

// auditOne returns the one audit record matching q.
func (s *e2eServer) auditOne(t *testing.T, q url.Values) map[string]any {
	t.Helper()
	items := s.audit(t, q)
	if len(items) != 1 {
		t.Fatalf("audit?%s: %d records, want 1: %v", q.Encode(), len(items), items)
	}
	return items[0]
}

func (s *e2eServer) audit(t *testing.T, q url.Values) []map[string]any {
	t.Helper()
	page := s.admin(t, http.MethodGet, "/audit?"+q.Encode(), nil, http.StatusOK)
	raw, _ := page["items"].([]any)
	out := make([]map[string]any, 0, len(raw))
	for _, it := range raw {
		m, _ := it.(map[string]any)
		out = append(out, m)
	}
	return out
}

func TestE2EModesAndClaims(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		f := provision(t, s)
		main := f.main
		// A client_id with ':' must be form-encoded inside Basic credentials (RFC 6749
		// §2.3.1), and decoded by the server before the lookup.
		colon := s.createClient(t, map[string]any{"client_id": "team:mcp.a", "grant_types": []string{grantTE}})
		s.createGrant(t, map[string]any{
			"tenant": "acme", "subject": "user_1", "client_id": colon.ID, "audiences": []string{"orders_api"}, "scopes": []string{"orders:read"},
		})
		prior := &envelope.Act{Sub: "upstream-agent", ClientID: "upstream-mcp"}
		svc := main.claimsSigned(s, "svc_batch", "svc-trace")
		svc.Actor.Type = envelope.ActorService
		svc.Delegation.Mode = envelope.ModeServiceIdentity
		svc.JTI = ""
		svc.IssuedAt, svc.ExpiresAt = time.Time{}, time.Time{}

		cases := []struct {
			name        string
			client      *e2eClient
			claims      envelope.Claims
			form        func(url.Values)
			audience    string
			issuedType  string
			sub         string
			act         map[string]any // nil: no act claim
			grantID     string
			maxLifetime float64
			scope       string
		}{
			{name: "on_behalf_of", client: main, claims: main.claims(s, "user_1", "obo", "orders:read"),
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", grantID: f.userGrant, maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": main.ID}},
			{name: "on_behalf_of with a prior actor chain", client: main,
				claims: func() envelope.Claims {
					c := main.claims(s, "user_1", "obo-chain", "orders:read")
					c.Act = prior
					return c
				}(),
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", grantID: f.userGrant, maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": main.ID,
					"act": map[string]any{"sub": "upstream-agent", "client_id": "upstream-mcp"}}},
			{name: "service_identity for a user", client: main,
				claims: func() envelope.Claims {
					c := main.claims(s, "user_1", "si-user", "orders:read")
					c.Delegation.Mode = envelope.ModeServiceIdentity
					return c
				}(),
				audience: "orders_api", issuedType: typeAccess, sub: main.ID, grantID: f.userGrant, maxLifetime: 300, scope: "orders:read"},
			{name: "service_identity for a service actor, no grant", client: main, claims: svc,
				audience: "orders_api", issuedType: typeAccess, sub: main.ID, maxLifetime: 300, scope: "orders:read"},
			{name: "restricted_user", client: main,
				claims: func() envelope.Claims {
					c := main.claims(s, "user_1", "ru", "orders:read")
					c.Delegation.Mode = envelope.ModeRestrictedUser
					return c
				}(),
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", grantID: f.userGrant, maxLifetime: 60, scope: "orders:read"},
			{name: "requested_token_type jwt, subject_token_type jwt", client: main, claims: main.claims(s, "user_1", "jwt-type", "billing:read"),
				form: func(v url.Values) {
					v.Set("requested_token_type", typeJWT)
					v.Set("subject_token_type", typeJWT)
				},
				audience: "billing_api", issuedType: typeJWT, sub: "user_1", grantID: f.userGrant, maxLifetime: 300, scope: "billing:read",
				act: map[string]any{"sub": "agent_456", "client_id": main.ID}},
			{name: "resource names the audience", client: main, claims: main.claims(s, "user_1", "resource", "orders:read"),
				form:     func(v url.Values) { v.Del("audience"); v.Set("resource", "https://orders.example.com/api") },
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", grantID: f.userGrant, maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": main.ID}},
			{name: "audience and resource name the same audience", client: main, claims: main.claims(s, "user_1", "both", "orders:read"),
				form:     func(v url.Values) { v.Set("resource", "https://orders.example.com/api") },
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", grantID: f.userGrant, maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": main.ID}},
			{name: "client_secret_basic with a form-encoded client_id", client: colon, claims: colon.claims(s, "user_1", "colon", "orders:read"),
				audience: "orders_api", issuedType: typeAccess, sub: "user_1", maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": colon.ID}},
			{name: "client_secret_post under a * grant", client: f.post, claims: f.post.claims(s, "user_9", "post", "orders:read"),
				audience: "orders_api", issuedType: typeAccess, sub: "user_9", maxLifetime: 300, scope: "orders:read",
				act: map[string]any{"sub": "agent_456", "client_id": f.post.ID}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				form := teForm(tc.client.sign(t, tc.claims), tc.audience)
				if tc.form != nil {
					tc.form(form)
				}
				r := s.post(t, "/oauth2/token", form, tc.client.auth())
				tok := checkGranted(t, r, tc.issuedType)
				if r.str("scope") != tc.scope {
					t.Errorf("scope = %q, want %q", r.str("scope"), tc.scope)
				}
				c := s.verifyToken(t, tok, tc.audience)
				want := map[string]any{
					"iss": s.issuer, "sub": tc.sub, "aud": tc.audience, "client_id": tc.client.ID, "scope": tc.scope,
					"tenant": tc.claims.Actor.Tenant, "delegation_mode": tc.claims.Delegation.Mode,
					"actor_type": tc.claims.Actor.Type, "actor_sub": tc.claims.Actor.Sub, "agent_id": tc.claims.Agent.ID,
					"trace_id": tc.claims.Session.TraceID, "session_id": tc.claims.Session.ID,
				}
				for k, v := range want {
					if c[k] != v {
						t.Errorf("claim %s = %v, want %v", k, c[k], v)
					}
				}
				if tc.grantID != "" && c["grant_id"] != tc.grantID {
					t.Errorf("grant_id = %v, want %s", c["grant_id"], tc.grantID)
				}
				if tc.grantID == "" && tc.claims.Actor.Type == envelope.ActorService {
					if _, ok := c["grant_id"]; ok {
						t.Errorf("a service actor's token names a grant: %v", c["grant_id"])
					}
				}
				if jti, _ := c["jti"].(string); jti == "" {
					t.Errorf("no jti")
				}
				act, hasAct := c["act"]
				switch {
				case tc.act == nil && hasAct:
					t.Errorf("act = %v, want none", act)
				case tc.act != nil && !jsonEqual(act, tc.act):
					t.Errorf("act = %v, want %v", act, tc.act)
				}
				iat, _ := c["iat"].(float64)
				exp, _ := c["exp"].(float64)
				if life := exp - iat; life <= 0 || life > tc.maxLifetime || r.body["expires_in"] != life {
					t.Errorf("exp-iat = %v, expires_in = %v, want equal and at most %v", life, r.body["expires_in"], tc.maxLifetime)
				}
			})
		}
	})
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

func TestE2EReplayScopesIntrospectionRevocation(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		f := provision(t, s)
		main := f.main

		t.Run("replay", func(t *testing.T) {
			tok := main.sign(t, main.claims(s, "user_1", "replay", "orders:read", "billing:read"))
			checkGranted(t, s.post(t, "/oauth2/token", teForm(tok, "orders_api"), main.auth()), typeAccess)
			r := s.post(t, "/oauth2/token", teForm(tok, "orders_api"), main.auth())
			checkError(t, r, 400, "invalid_request")
			// Another audience: the same envelope is still good once there.
			checkGranted(t, s.post(t, "/oauth2/token", teForm(tok, "billing_api"), main.auth()), typeAccess)
			checkError(t, s.post(t, "/oauth2/token", teForm(tok, "billing_api"), main.auth()), 400, "invalid_request")
			denied := s.audit(t, url.Values{"trace_id": {"replay"}, "outcome": {"denied"}})
			if len(denied) != 2 || denied[0]["reason"] != "envelope_replayed" {
				t.Errorf("replay audit: %v", denied)
			}
		})

		t.Run("rejected requests do not use up the envelope", func(t *testing.T) {
			tok := main.sign(t, main.claims(s, "user_1", "not-used-up", "orders:read"))
			checkError(t, s.post(t, "/oauth2/token", teForm(tok, "orders_api"), basicAuth(main.ID, "wrong")), 401, "invalid_client")
			scoped := teForm(tok, "orders_api")
			scoped.Set("scope", "orders:write") // not in the envelope
			checkError(t, s.post(t, "/oauth2/token", scoped, main.auth()), 400, "invalid_scope")
			checkGranted(t, s.post(t, "/oauth2/token", teForm(tok, "orders_api"), main.auth()), typeAccess)
		})

		t.Run("scopes", func(t *testing.T) {
			// envelope ∩ grant ∩ audience ∩ client: orders:admin is cut by the client,
			// orders:delete by the grant, other:thing by the audience.
			envScopes := []string{"orders:read", "orders:write", "orders:admin", "orders:delete", "other:thing"}
			for _, sc := range []struct {
				name, requested, want, code string
			}{
				{name: "without scope the effective set", want: "orders:read orders:write"},
				{name: "a requested subset exactly", requested: "orders:write", want: "orders:write"},
				{name: "requested scope cut by the client", requested: "orders:admin", code: "invalid_scope"},
				{name: "requested scope cut by the grant", requested: "orders:read orders:delete", code: "invalid_scope"},
				{name: "requested scope cut by the audience", requested: "other:thing", code: "invalid_scope"},
			} {
				t.Run(sc.name, func(t *testing.T) {
					form := teForm(main.sign(t, main.claims(s, "user_1", "scopes-"+randHex(t, 4), envScopes...)), "orders_api")
					if sc.requested != "" {
						form.Set("scope", sc.requested)
					}
					r := s.post(t, "/oauth2/token", form, main.auth())
					if sc.code != "" {
						checkError(t, r, 400, sc.code)
						return
					}
					tok := checkGranted(t, r, typeAccess)
					if r.str("scope") != sc.want {
						t.Errorf("scope = %q, want %q", r.str("scope"), sc.want)
					}
					if c := s.verifyToken(t, tok, "orders_api"); c["scope"] != sc.want {
						t.Errorf("token scope = %v, want %q", c["scope"], sc.want)
					}
				})
			}
		})

		t.Run("introspection and revocation", func(t *testing.T) {
			cl := main.claims(s, "user_1", "introspect-trace", "orders:read", "orders:write")
			tok := checkGranted(t, s.post(t, "/oauth2/token", teForm(main.sign(t, cl), "orders_api"), main.auth()), typeAccess)
			claims := s.verifyToken(t, tok, "orders_api")

			// Introspection needs client authentication.
			checkError(t, s.post(t, "/oauth2/introspect", url.Values{"token": {tok}}, basicAuth(f.resourceServer.ID, "wrong")), 401, "invalid_client")

			r := s.post(t, "/oauth2/introspect", url.Values{"token": {tok}}, f.resourceServer.auth())
			if r.status != 200 || r.header.Get("Cache-Control") != "no-store" {
				t.Fatalf("introspect: %d %q %s", r.status, r.header.Get("Cache-Control"), r.raw)
			}
			want := map[string]any{
				"active": true, "sub": "user_1", "client_id": main.ID, "scope": "orders:read orders:write",
				"aud": "orders_api", "exp": claims["exp"], "iat": claims["iat"], "delegation_mode": "on_behalf_of",
				"grant_id": f.userGrant, "trace_id": "introspect-trace",
				"act": map[string]any{"sub": "agent_456", "client_id": main.ID},
			}
			for k, v := range want {
				if !jsonEqual(r.body[k], v) {
					t.Errorf("introspection %s = %v, want %v", k, r.body[k], v)
				}
			}
			if r := s.post(t, "/oauth2/introspect", url.Values{"token": {"garbage"}}, f.resourceServer.auth()); r.status != 200 || r.body["active"] != false || len(r.body) != 1 {
				t.Errorf("introspect garbage: %d %s", r.status, r.raw)
			}

			// Only the client the token was issued to may revoke it.
			checkError(t, s.post(t, "/oauth2/revoke", url.Values{"token": {tok}}, f.post.auth()), 400, "unauthorized_client")
			if r := s.post(t, "/oauth2/introspect", url.Values{"token": {tok}}, f.resourceServer.auth()); r.body["active"] != true {
				t.Fatalf("a refused revocation revoked the token: %s", r.raw)
			}
			r = s.post(t, "/oauth2/revoke", url.Values{"token": {tok}, "token_type_hint": {"access_token"}}, main.auth())
			if r.status != 200 || r.header.Get("Cache-Control") != "no-store" {
				t.Fatalf("revoke: %d %s", r.status, r.raw)
			}
			// RFC 7009 §2.2: revoking again, or an unknown token, is 200 as well.
			for _, tk := range []string{tok, "unknown-token"} {
				if r := s.post(t, "/oauth2/revoke", url.Values{"token": {tk}}, main.auth()); r.status != 200 {
					t.Errorf("revoke %q again: %d %s", tk[:7], r.status, r.raw)
				}
			}
			r = s.post(t, "/oauth2/introspect", url.Values{"token": {tok}}, f.resourceServer.auth())
			if r.status != 200 || r.body["active"] != false || len(r.body) != 1 {
				t.Fatalf("introspection after revocation: %d %s", r.status, r.raw)
			}
			recs := s.audit(t, url.Values{"event": {"revoke"}, "trace_id": {"introspect-trace"}})
			if len(recs) != 1 || recs[0]["outcome"] != "granted" || recs[0]["client_id"] != main.ID || recs[0]["token_jti"] != claims["jti"] {
				t.Errorf("revocation audit: %v", recs)
			}
		})

		t.Run("grant revoked between two exchanges", func(t *testing.T) {
			gid := s.createGrant(t, map[string]any{
				"tenant": "acme", "subject": "user_rev", "client_id": main.ID, "audiences": []string{"orders_api"}, "scopes": []string{"orders:read"},
			})
			first := checkGranted(t, s.post(t, "/oauth2/token", teForm(main.sign(t, main.claims(s, "user_rev", "rev-1", "orders:read")), "orders_api"), main.auth()), typeAccess)
			if r := s.post(t, "/oauth2/introspect", url.Values{"token": {first}}, f.resourceServer.auth()); r.body["active"] != true || r.body["grant_id"] != gid {
				t.Fatalf("before revocation: %s", r.raw)
			}
			g := s.admin(t, http.MethodPost, "/grants/"+gid+"/revoke", map[string]any{"reason": "user left"}, http.StatusOK)
			if g["revoke_reason"] != "user left" || g["revoked_at"] == nil {
				t.Errorf("revoked grant: %v", g)
			}
			r := s.post(t, "/oauth2/token", teForm(main.sign(t, main.claims(s, "user_rev", "rev-2", "orders:read")), "orders_api"), main.auth())
			checkError(t, r, 400, "invalid_request")
			if r := s.post(t, "/oauth2/introspect", url.Values{"token": {first}}, f.resourceServer.auth()); r.status != 200 || r.body["active"] != false {
				t.Fatalf("a token of the revoked grant is still active: %s", r.raw)
			}
			if rec := s.auditOne(t, url.Values{"trace_id": {"rev-2"}}); rec["reason"] != "no_active_grant" {
				t.Errorf("audit after revocation: %v", rec)
			}
		})

		t.Run("disabled client fails at once", func(t *testing.T) {
			c := s.createClient(t, map[string]any{"client_id": "mcp-soon-disabled", "grant_types": []string{grantTE}})
			s.createGrant(t, map[string]any{
				"tenant": "acme", "subject": "user_1", "client_id": c.ID, "audiences": []string{"orders_api"}, "scopes": []string{"orders:read"},
			})
			// The first exchange caches the client on this replica.
			checkGranted(t, s.post(t, "/oauth2/token", teForm(c.sign(t, c.claims(s, "user_1", "dis-1", "orders:read")), "orders_api"), c.auth()), typeAccess)
			if got := s.admin(t, http.MethodPatch, "/clients/"+c.ID, map[string]any{"disabled": true}, http.StatusOK); got["disabled"] != true {
				t.Fatalf("PATCH disabled: %v", got)
			}
			r := s.post(t, "/oauth2/token", teForm(c.sign(t, c.claims(s, "user_1", "dis-2", "orders:read")), "orders_api"), c.auth())
			checkError(t, r, 401, "invalid_client")
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
			}
		})

		t.Run("audit holds granted and denied records", func(t *testing.T) {
			cl := main.claims(s, "user_1", "audit-ok", "orders:read")
			checkGranted(t, s.post(t, "/oauth2/token", teForm(main.sign(t, cl), "orders_api"), main.auth()), typeAccess)
			bad := main.claims(s, "user_1", "audit-denied", "orders:read")
			checkError(t, s.post(t, "/oauth2/token", teForm(main.sign(t, bad), "hr_api"), main.auth()), 400, "invalid_target")

			ok := s.auditOne(t, url.Values{"trace_id": {"audit-ok"}, "outcome": {"granted"}, "event": {"token_exchange"}})
			no := s.auditOne(t, url.Values{"trace_id": {"audit-denied"}, "outcome": {"denied"}, "client_id": {main.ID}})
			for name, c := range map[string]struct {
				rec             map[string]any
				reason, aud, ss string
			}{
				"granted": {ok, "granted", "orders_api", "sess_audit-ok"},
				"denied":  {no, "audience_not_allowed_for_client", "hr_api", "sess_audit-denied"},
			} {
				want := map[string]any{
					"reason": c.reason, "client_id": main.ID, "actor_sub": "user_1", "agent_id": "agent_456",
					"tenant": "acme", "delegation_mode": "on_behalf_of", "audience": c.aud, "session_id": c.ss,
				}
				for k, v := range want {
					if c.rec[k] != v {
						t.Errorf("%s record %s = %v, want %v", name, k, c.rec[k], v)
					}
				}
				if c.rec["envelope_jti"] == nil || c.rec["remote_addr"] != "127.0.0.1" {
					t.Errorf("%s record lacks envelope_jti or remote_addr: %v", name, c.rec)
				}
			}
			if ok["grant_id"] != f.userGrant || ok["token_jti"] == nil || !jsonEqual(ok["granted_scopes"], []string{"orders:read"}) {
				t.Errorf("granted record: %v", ok)
			}
			if _, has := no["token_jti"]; has {
				t.Errorf("a denied record names an issued token: %v", no)
			}
			// Filters narrow, newest first.
			if recs := s.audit(t, url.Values{"actor_sub": {"user_1"}, "agent_id": {"agent_456"}, "limit": {"2"}}); len(recs) != 2 || recs[0]["trace_id"] != "audit-denied" {
				t.Errorf("newest-first filter: %v", recs)
			}
		})
	})
}

func TestE2EMetadataAndJWKS(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		var doc map[string]any
		for _, p := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
			req, _ := http.NewRequest(http.MethodGet, s.issuer+p, nil)
			r := do(t, req)
			if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Fatalf("%s: %d %q", p, r.status, r.header.Get("Content-Type"))
			}
			if doc != nil && !jsonEqual(doc, r.body) {
				t.Errorf("%s differs from the RFC 8414 document", p)
			}
			doc = r.body
		}
		for k, v := range map[string]string{
			"issuer": s.issuer, "token_endpoint": s.issuer + "/oauth2/token", "jwks_uri": s.issuer + "/.well-known/jwks.json",
			"introspection_endpoint": s.issuer + "/oauth2/introspect", "revocation_endpoint": s.issuer + "/oauth2/revoke",
		} {
			if doc[k] != v {
				t.Errorf("%s = %v, want %s", k, doc[k], v)
			}
		}
		for k, must := range map[string][]string{
			"grant_types_supported":                            {grantTE, "client_credentials"},
			"token_endpoint_auth_methods_supported":            {"client_secret_basic", "client_secret_post", "private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": {"ES256"},
			"subject_token_types_supported":                    {envelope.TokenType, typeJWT},
		} {
			list, _ := doc[k].([]any)
			for _, m := range must {
				if !slices.Contains(list, any(m)) {
					t.Errorf("%s = %v lacks %s", k, doc[k], m)
				}
			}
			if slices.Contains(list, any("none")) {
				t.Errorf("%s offers none", k)
			}
		}

		req, _ := http.NewRequest(http.MethodGet, doc["jwks_uri"].(string), nil)
		r := do(t, req)
		if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") || !strings.Contains(r.header.Get("Cache-Control"), "max-age") {
			t.Fatalf("JWKS: %d %q %q", r.status, r.header.Get("Content-Type"), r.header.Get("Cache-Control"))
		}
		keys, _ := r.body["keys"].([]any)
		if len(keys) == 0 {
			t.Fatalf("JWKS without keys: %s", r.raw)
		}
		for _, k := range keys {
			m, _ := k.(map[string]any)
			if m["kid"] == nil || m["alg"] != "ES256" || m["use"] != "sig" {
				t.Errorf("JWKS key %v: want kid, alg ES256, use sig", m)
			}
			for _, private := range []string{"d", "p", "q", "k"} {
				if _, ok := m[private]; ok {
					t.Errorf("JWKS key publishes private member %q", private)
				}
			}
		}
		if etag := r.header.Get("ETag"); etag != "" {
			req, _ := http.NewRequest(http.MethodGet, s.issuer+"/.well-known/jwks.json", nil)
			req.Header.Set("If-None-Match", etag)
			if r := do(t, req); r.status != http.StatusNotModified {
				t.Errorf("JWKS with If-None-Match: %d, want 304", r.status)
			}
		}
	})
}

// --max-act-depth reaches the token endpoint: at 2, an envelope's chain of one (two with the
// agent) is issued and a chain of two is refused, where the default of 4 would issue both.
func TestE2EMaxActDepthFlag(t *testing.T) {
	env, args := sqliteBackend(t)
	s := startE2E(t, env, append(args, "--max-act-depth", "2")...)
	main := provision(t, s).main
	for i, c := range []struct {
		act    *envelope.Act
		status int
	}{
		{&envelope.Act{Sub: "upstream"}, http.StatusOK},
		{&envelope.Act{Sub: "upstream", Act: &envelope.Act{Sub: "further"}}, http.StatusBadRequest},
	} {
		cl := main.claims(s, "user_1", "depth-"+strconv.Itoa(i), "orders:read")
		cl.Act = c.act
		r := s.post(t, "/oauth2/token", teForm(main.sign(t, cl), "orders_api"), main.auth())
		if r.status != c.status || (c.status != http.StatusOK && r.str("reason") != "act_chain_too_deep") {
			t.Errorf("envelope chain of %d with --max-act-depth 2: %d %s", c.act.Depth(), r.status, r.raw)
		}
	}
}
