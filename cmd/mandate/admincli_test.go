package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
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

	"github.com/mandatehq/mandate/api"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// adminFixture is the admin API on a real SQLite store, behind a small hand-written token
// endpoint that issues opaque tokens to clients whose secret verifies, with the client's
// allowed scopes (the real issuer is package authz; here only the CLI is under test).
type adminFixture struct {
	store   storage.Store
	api     *httptest.Server
	issuer  *httptest.Server
	secret  string // the bootstrap admin secret
	mu      sync.Mutex
	tokens  map[string]api.Principal
	keyList []storage.SigningKey
	svc     *exchange.Service // the exchange behind POST /explain (and grant requests, for tests)
}

func (f *adminFixture) AuthenticateBearer(_ context.Context, token string) (api.Principal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.tokens[token]
	if !ok {
		return api.Principal{}, errors.New("unknown token")
	}
	return p, nil
}

func (f *adminFixture) List(context.Context) ([]storage.SigningKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]storage.SigningKey(nil), f.keyList...), nil
}

func (f *adminFixture) Rotate(context.Context) (*storage.SigningKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UTC()
	k := storage.SigningKey{KID: storage.NewID("k"), Alg: "ES256", Status: storage.KeyNext, CreatedAt: now, ActivatesAt: now.Add(time.Hour)}
	f.keyList = append(f.keyList, k)
	return &k, nil
}

func newAdminFixture(t *testing.T) *adminFixture {
	t.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "mandate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	m, _ := secret.NewMaster(strings.Repeat("x", 32))
	h := secret.NewHasher(m)
	f := &adminFixture{store: store, tokens: map[string]api.Principal{}}
	f.secret, _, err = api.Bootstrap(ctx, store, h, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.issuer = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		id, sec, ok := r.BasicAuth()
		id, _ = url.QueryUnescape(id)
		sec, _ = url.QueryUnescape(sec)
		if r.URL.Path != "/oauth2/token" || r.PostFormValue("grant_type") != "client_credentials" || !ok {
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"error":"invalid_request"}`)
			return
		}
		c, err := store.GetClient(r.Context(), id)
		if err != nil || !h.Verify(sec, c.SecretHash) {
			w.WriteHeader(401)
			_, _ = io.WriteString(w, `{"error":"invalid_client","error_description":"client authentication failed"}`)
			return
		}
		var b [16]byte
		_, _ = rand.Read(b[:])
		tok := hex.EncodeToString(b[:])
		f.mu.Lock()
		f.tokens[tok] = api.Principal{ClientID: c.ID, Scopes: c.AllowedScopes}
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 300})
	}))
	t.Cleanup(f.issuer.Close)
	// The exchange service behind POST /explain, with the fake issuer's URL as Mandate's
	// issuer: envelopes the CLI makes name MANDATE_ISSUER as their aud.
	sealer, err := keys.NewSealer(m)
	if err != nil {
		t.Fatal(err)
	}
	km, err := keys.NewManager(store, sealer, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := km.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	svc, err := exchange.New(exchange.Deps{Store: store, Verifier: &envelope.Verifier{Issuer: f.issuer.URL}, Signer: km},
		exchange.Config{Issuer: f.issuer.URL})
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	f.api = httptest.NewServer(api.NewHandler(api.Deps{
		Store: store, Hasher: h, Auth: f, Keys: f, Explain: svc, GrantRequests: svc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}))
	t.Cleanup(f.api.Close)
	return f
}

// cli runs one admin command as the bootstrap admin; it returns stdout, stderr and the error.
func (f *adminFixture) cli(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	t.Helper()
	base := map[string]string{
		"MANDATE_ADMIN_URL":           f.api.URL,
		"MANDATE_ISSUER":              f.issuer.URL,
		"MANDATE_ADMIN_CLIENT_SECRET": f.secret,
	}
	for k, v := range env {
		base[k] = v
	}
	var stdout, stderr bytes.Buffer
	err := runAdmin(context.Background(), args, func(k string) string { return base[k] }, &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func (f *adminFixture) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := f.cli(t, nil, args...)
	if err != nil {
		t.Fatalf("mandate %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// rows splits a table into lines of fields.
func rows(out string) [][]string {
	var r [][]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		r = append(r, strings.Fields(line))
	}
	return r
}

// field returns the value of a FIELD VALUE table line.
func field(t *testing.T, out, name string) string {
	t.Helper()
	for _, r := range rows(out) {
		if len(r) >= 2 && r[0] == name {
			return r[1]
		}
	}
	t.Fatalf("no %s in:\n%s", name, out)
	return ""
}

func TestAdminCLIWorkflow(t *testing.T) {
	f := newAdminFixture(t)

	out := f.ok(t, "audiences", "create", "--id", "orders", "--scope", "orders:read", "--scope", "orders:write",
		"--resource", "https://orders.example.com/", "--token-ttl", "2m")
	if field(t, out, "id") != "orders" || field(t, out, "scopes") != "orders:read,orders:write" || field(t, out, "token_ttl") != "120" {
		t.Errorf("audience create:\n%s", out)
	}

	out, errOut, err := f.cli(t, nil, "clients", "create", "--id", "webapp", "--name", "Web", "--jwks-uri", "https://web.example/jwks", "--tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	sec := field(t, out, "client_secret")
	if !strings.HasPrefix(sec, secret.SecretPrefix) || !strings.Contains(errOut, "shown only now") {
		t.Errorf("client create:\n%s\n%s", out, errOut)
	}

	// The table lists both clients under a header; --json is the API's own JSON.
	table := rows(f.ok(t, "clients", "list"))
	if len(table) != 3 || table[0][0] != "CLIENT_ID" {
		t.Fatalf("clients list:\n%v", table)
	}
	var list struct {
		Items []api.Client `json:"items"`
	}
	if err := json.Unmarshal([]byte(f.ok(t, "clients", "list", "--json")), &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("clients list --json: %v %+v", err, list)
	}
	// Flags after the positional argument work too.
	if got := f.ok(t, "clients", "get", "webapp", "--json"); !strings.Contains(got, `"client_id": "webapp"`) || strings.Contains(got, "client_secret\"") {
		t.Errorf("clients get --json:\n%s", got)
	}

	out = f.ok(t, "clients", "update", "webapp", "--disabled", "--scope", "orders:read", "--max-envelope-lifetime", "5m")
	if field(t, out, "disabled") != "true" || field(t, out, "allowed_scopes") != "orders:read" || field(t, out, "max_envelope_lifetime") != "300" {
		t.Errorf("clients update:\n%s", out)
	}
	out = f.ok(t, "clients", "update", "webapp", "--disabled=false", "--scope=")
	if field(t, out, "disabled") != "false" || field(t, out, "allowed_scopes") != "-" {
		t.Errorf("clients update (clear):\n%s", out)
	}

	out = f.ok(t, "grants", "create", "--tenant", "acme", "--subject", "user_1", "--client", "webapp",
		"--audience", "orders", "--scope", "orders:read", "--expires-in", "720h")
	gid := field(t, out, "id")
	if field(t, out, "status") != "active" || field(t, out, "created_by") != "mandate-admin" {
		t.Errorf("grants create:\n%s", out)
	}
	if table := rows(f.ok(t, "grants", "list", "--status", "active", "--client", "webapp")); len(table) != 2 || table[1][0] != gid {
		t.Errorf("grants list:\n%v", table)
	}
	out = f.ok(t, "grants", "revoke", gid, "--reason", "user left")
	if field(t, out, "status") != "revoked" || !strings.Contains(out, "user left") {
		t.Errorf("grants revoke:\n%s", out)
	}
	_, _, err = f.cli(t, nil, "grants", "revoke", gid, "--reason", "again")
	if err == nil || !strings.Contains(err.Error(), "409") || !strings.Contains(err.Error(), "already revoked") {
		t.Errorf("second revoke: %v", err)
	}

	out = f.ok(t, "clients", "rotate-secret", "webapp", "--grace", "1h")
	if s := field(t, out, "client_secret"); s == sec || field(t, out, "previous_secret_expires_at") == "" {
		t.Errorf("rotate-secret:\n%s", out)
	}

	k := field(t, f.ok(t, "keys", "rotate"), "kid")
	if table := rows(f.ok(t, "keys")); len(table) != 2 || table[1][0] != k || table[1][2] != "next" {
		t.Errorf("keys list:\n%v", table)
	}

	// The audit log shows every change, newest first, made as mandate-admin.
	table = rows(f.ok(t, "audit", "list", "--client", "mandate-admin", "--limit", "500"))
	events := map[string]bool{}
	for _, r := range table[1:] {
		events[r[1]] = true
	}
	for _, want := range []string{"admin.audience.create", "admin.client.create", "admin.client.update", "admin.grant.create",
		"admin.grant.revoke", "admin.client.secret.rotate", "admin.keys.rotate", "admin.bootstrap"} {
		if !events[want] {
			t.Errorf("audit list lacks %s:\n%v", want, table)
		}
	}
	if table[1][1] != "admin.keys.rotate" {
		t.Errorf("audit list is not newest first: %v", table[1])
	}
	_, errOut, _ = f.cli(t, nil, "audit", "--limit", "1")
	if !strings.Contains(errOut, "--cursor") {
		t.Errorf("a partial page does not say how to go on: %q", errOut)
	}

	out = f.ok(t, "clients", "delete", "webapp")
	if !strings.Contains(out, "done") {
		t.Errorf("delete: %q", out)
	}
	_, _, err = f.cli(t, nil, "clients", "get", "webapp")
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("get after delete: %v", err)
	}
}

func TestAdminCLIErrors(t *testing.T) {
	f := newAdminFixture(t)
	var ue usageError

	// The API's invalid fields reach the operator.
	_, _, err := f.cli(t, nil, "clients", "create", "--id", "-bad", "--max-envelope-lifetime", "2h")
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "client_id:") || !strings.Contains(err.Error(), "max_envelope_lifetime:") {
		t.Errorf("invalid create: %v", err)
	}
	if _, _, err := f.cli(t, nil, "grants", "create", "--tenant", "acme"); err == nil || !strings.Contains(err.Error(), "subject:") {
		t.Errorf("incomplete grant: %v", err)
	}

	// Credentials: missing, wrong, or a ready token.
	if _, _, err := f.cli(t, map[string]string{"MANDATE_ADMIN_CLIENT_SECRET": ""}, "clients", "list"); !errors.As(err, &ue) {
		t.Errorf("no secret: %v, want a usage error", err)
	}
	if _, _, err := f.cli(t, map[string]string{"MANDATE_ADMIN_CLIENT_SECRET": "wrong"}, "clients", "list"); err == nil || !strings.Contains(err.Error(), "invalid_client") {
		t.Errorf("wrong secret: %v", err)
	}
	if _, _, err := f.cli(t, map[string]string{"MANDATE_ADMIN_TOKEN": "forged"}, "clients", "list"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("forged token: %v", err)
	}

	// Bad command lines are usage errors and send nothing.
	for _, args := range [][]string{
		{}, {"widgets", "list"}, {"clients", "explode"}, {"clients", "get"}, {"clients", "get", "a", "b"},
		{"clients", "list", "extra"}, {"clients", "update", "webapp"}, {"grants", "revoke", "g"},
		{"clients", "create", "--max-token-ttl", "1.5s"}, {"clients", "list", "--nope"},
		{"grants", "create", "--expires-in", "1h", "--expires-at", "2030-01-01T00:00:00Z"},
	} {
		if _, _, err := f.cli(t, nil, args...); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if out, _, err := f.cli(t, nil, "clients", "create", "-h"); !errors.Is(err, errHelp) || !strings.Contains(out, "--auth-method") && !strings.Contains(out, "-auth-method") {
		t.Errorf("-h: %v\n%s", err, out)
	}
	if n := len(f.auditOf(t)); n != 1 {
		t.Errorf("%d audit records after failed commands, want only the bootstrap's", n)
	}
}

func (f *adminFixture) auditOf(t *testing.T) []storage.AuditRecord {
	t.Helper()
	items, _, err := f.store.ListAudit(context.Background(), storage.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return items
}

// TestAdminCLIGrantRequests: an admin lets users consent to an audience, sees the requests
// clients made, and decides them (the access-request workflow) from the shell.
func TestAdminCLIGrantRequests(t *testing.T) {
	f := newAdminFixture(t)
	out := f.ok(t, "audiences", "create", "--id", "orders", "--scope", "orders:read",
		"--user-consent", "allowed", "--max-consent-duration", "168h")
	if field(t, out, "user_consent") != "allowed" || field(t, out, "max_consent_duration") != "604800" {
		t.Fatalf("audience create:\n%s", out)
	}
	f.ok(t, "clients", "create", "--id", "webapp", "--tenant", "acme")
	client, err := f.store.GetClient(t.Context(), "webapp")
	if err != nil {
		t.Fatal(err)
	}
	ask := func(subject string) string {
		r, err := f.svc.CreateGrantRequest(t.Context(), exchange.GrantRequestInput{Client: client, Tenant: "acme",
			Subject: subject, Audiences: []string{"orders"}, Scopes: []string{"orders:read"}, Purpose: "look up orders"})
		if err != nil {
			t.Fatal(err)
		}
		return r.ID
	}
	alice, bob := ask("alice"), ask("bob")

	if table := rows(f.ok(t, "grant-requests", "list", "--status", "pending")); len(table) != 3 || table[0][0] != "ID" {
		t.Fatalf("grant-requests list:\n%v", table)
	}
	if out := f.ok(t, "grant-requests", "get", alice); field(t, out, "subject") != "alice" || !strings.Contains(out, "look up orders") {
		t.Errorf("grant-requests get:\n%s", out)
	}
	out = f.ok(t, "grant-requests", "approve", alice)
	if field(t, out, "status") != "approved" || field(t, out, "decided_by") != "admin:mandate-admin" || !strings.Contains(out, "grant:") {
		t.Fatalf("grant-requests approve:\n%s", out)
	}
	grants := rows(f.ok(t, "grants", "list", "--subject", "alice"))
	if len(grants) != 2 || grants[1][0] != field(t, out, "grant_id") {
		t.Errorf("the approval's grant is not listed: %v\n%s", grants, out)
	}
	if out := f.ok(t, "grant-requests", "deny", bob); field(t, out, "status") != "denied" || strings.Contains(out, "grant:") {
		t.Errorf("grant-requests deny:\n%s", out)
	}
	// A request is decided once.
	if _, _, err := f.cli(t, nil, "grant-requests", "deny", alice); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("deciding twice: %v", err)
	}
	if table := rows(f.ok(t, "grant-requests", "list", "--status", "pending")); len(table) != 1 {
		t.Errorf("pending after both were decided:\n%v", table)
	}
}
