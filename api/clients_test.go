package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

func TestAuth(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		// No token, a malformed header, an unknown token: 401 with a Bearer challenge.
		for _, tc := range []struct{ name, header string }{
			{"none", ""}, {"basic", "Basic YTpi"}, {"empty bearer", "Bearer "}, {"unknown", "Bearer nope"},
		} {
			hr, _ := http.NewRequest("GET", e.srv.URL+"/admin/v1/clients", nil)
			if tc.header != "" {
				hr.Header.Set("Authorization", tc.header)
			}
			res, err := e.srv.Client().Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 401 || !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: status %d, WWW-Authenticate %q; want 401 Bearer", tc.name, res.StatusCode, res.Header.Get("WWW-Authenticate"))
			}
		}
		e.must(401, req{method: "POST", path: "/admin/v1/clients", body: map[string]any{}})

		// A token without an admin scope reads nothing; a read-only admin reads but writes nothing.
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients", token: tokOther}), 403)
		e.must(200, req{method: "GET", path: "/admin/v1/clients", token: tokReader})
		e.must(200, req{method: "GET", path: "/admin/v1/audit", token: tokReader})
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokReader, body: map[string]any{"client_id": "x"}}), 403)
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/keys/rotate", token: tokReader}), 403)
		if _, err := e.store.GetClient(context.Background(), "x"); err == nil {
			t.Error("a forbidden create stored the client")
		}
	})
}

func TestClientCreateGetList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		r := e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "webapp-prod", "name": "Web app", "jwks_uri": "https://webapp.example.com/jwks.json",
			"allowed_tenants": []string{"acme"}, "max_envelope_lifetime": 120,
		}})
		created := decode[ClientWithSecret](t, r)
		if created.ClientSecret == nil || !strings.HasPrefix(*created.ClientSecret, secret.SecretPrefix) {
			t.Fatalf("create answered no generated secret: %s", r.body)
		}
		if created.TokenEndpointAuthMethod != AuthSecretBasic || len(created.GrantTypes) != 1 || created.GrantTypes[0] != GrantTypeTokenExchange {
			t.Errorf("defaults not applied: %s", r.body)
		}
		if deref(created.MaxEnvelopeLifetime) != 120 || created.AllowedTenants[0] != "acme" {
			t.Errorf("fields not kept: %s", r.body)
		}
		stored, err := e.store.GetClient(ctx, "webapp-prod")
		if err != nil {
			t.Fatal(err)
		}
		if !e.hasher.Verify(*created.ClientSecret, stored.SecretHash) {
			t.Error("the stored hash does not verify the returned secret")
		}
		if bytes.Contains(stored.SecretHash, []byte(*created.ClientSecret)) {
			t.Error("the secret is stored in clear")
		}

		got := e.must(200, req{method: "GET", path: "/admin/v1/clients/webapp-prod", token: tokReader})
		if bytes.Contains(got.body, []byte(`"client_secret"`)) {
			t.Errorf("GET shows secret material: %s", got.body)
		}
		if c := decode[Client](t, got); c.ClientID != "webapp-prod" || deref(c.JwksURI) != "https://webapp.example.com/jwks.json" || !c.CreatedAt.Equal(created.CreatedAt) {
			t.Errorf("GET answered %s", got.body)
		}

		// The change and its audit record, naming the admin client.
		recs := e.auditEvents(EventClientCreate)
		if len(recs) != 1 || recs[0].ClientID != "admin-cli" || recs[0].Outcome != storage.OutcomeGranted || !bytes.Contains(recs[0].Detail, []byte(`"webapp-prod"`)) {
			t.Errorf("audit records %+v", recs)
		}

		// client_id generated; private_key_jwt gets no secret.
		pub, _ := testJWKs(t, "k1")
		r = e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"token_endpoint_auth_method": "private_key_jwt", "jwks": map[string]any{"keys": []any{pub}},
			"grant_types": []string{"client_credentials", GrantTypeTokenExchange},
		}})
		gen := decode[ClientWithSecret](t, r)
		if gen.ClientSecret != nil || !strings.HasPrefix(gen.ClientID, "cli_") || gen.Jwks == nil || len(gen.Jwks.Keys) != 1 {
			t.Errorf("generated client: %s", r.body)
		}

		// The same id again: 409, and nothing changed.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "webapp-prod"}}), 409)
		if again, _ := e.store.GetClient(ctx, "webapp-prod"); again.Name != "Web app" {
			t.Error("a conflicting create changed the client")
		}
		if n := len(e.auditEvents(EventClientCreate)); n != 2 {
			t.Errorf("%d create records, want 2 (a rejected create is not audited as a change)", n)
		}

		// Pagination: 2 + 1, then a bad cursor.
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "third"}})
		p1 := decode[ClientList](t, e.must(200, req{method: "GET", path: "/admin/v1/clients?limit=2", token: tokAdmin}))
		if len(p1.Items) != 2 || p1.NextCursor == nil {
			t.Fatalf("first page: %+v", p1)
		}
		p2 := decode[ClientList](t, e.must(200, req{method: "GET", path: "/admin/v1/clients?limit=2&cursor=" + *p1.NextCursor, token: tokAdmin}))
		if len(p2.Items) != 1 || p2.NextCursor != nil {
			t.Fatalf("second page: %+v", p2)
		}
		seen := map[string]bool{}
		for _, c := range append(p1.Items, p2.Items...) {
			seen[c.ClientID] = true
		}
		if len(seen) != 3 {
			t.Errorf("pages repeat or miss clients: %v", seen)
		}
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients?cursor=garbage", token: tokAdmin}), 400, "cursor")
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients?limit=0", token: tokAdmin}), 400, "limit")
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients/nope", token: tokAdmin}), 404)
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients/bad%20id", token: tokAdmin}), 400, "client_id")
	})
}

func TestClientValidation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		pub, priv := testJWKs(t, "k1")
		noKid, _ := testJWKs(t, "")
		delete(noKid, "kid")
		cases := []struct {
			name  string
			body  any
			field string
		}{
			{"bad id", map[string]any{"client_id": "-starts-with-dash"}, "client_id"},
			{"long id", map[string]any{"client_id": strings.Repeat("a", 129)}, "client_id"},
			{"private jwk", map[string]any{"jwks": map[string]any{"keys": []any{priv}}}, "jwks"},
			{"symmetric jwk", map[string]any{"jwks": map[string]any{"keys": []any{map[string]any{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}}}}, "jwks"},
			{"jwk without kid", map[string]any{"jwks": map[string]any{"keys": []any{noKid}}}, "jwks"},
			{"garbage jwk", map[string]any{"jwks": map[string]any{"keys": []any{map[string]any{"kty": "EC", "kid": "x", "crv": "P-256", "x": "AA", "y": "AA"}}}}, "jwks"},
			{"jwks not a set", map[string]any{"jwks": []any{pub}}, "jwks"},
			{"jwks and jwks_uri", map[string]any{"jwks": map[string]any{"keys": []any{pub}}, "jwks_uri": "https://a.example/jwks"}, "jwks_uri"},
			{"http jwks_uri", map[string]any{"jwks_uri": "http://a.example/jwks"}, "jwks_uri"},
			{"relative jwks_uri", map[string]any{"jwks_uri": "/jwks"}, "jwks_uri"},
			{"private_key_jwt without keys", map[string]any{"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method"},
			{"bad auth method", map[string]any{"token_endpoint_auth_method": "none"}, "token_endpoint_auth_method"},
			{"bad grant type", map[string]any{"grant_types": []string{"password"}}, "grant_types.0"},
			{"no grant types", map[string]any{"grant_types": []string{}}, "grant_types"},
			{"bad mode", map[string]any{"allowed_modes": []string{"impersonate"}}, "allowed_modes.0"},
			{"envelope lifetime over 3600", map[string]any{"max_envelope_lifetime": 3601}, "max_envelope_lifetime"},
			{"zero token ttl", map[string]any{"max_token_ttl": 0}, "max_token_ttl"},
			{"fractional ttl", map[string]any{"max_token_ttl": 1.5}, "max_token_ttl"},
			{"bad scope", map[string]any{"allowed_scopes": []string{"has space"}}, "allowed_scopes.0"},
			{"unknown member", map[string]any{"client_secret": "mine"}, "client_secret"},
			{"service actors without tenants", map[string]any{"service_actors": []string{"batch"}}, "service_actors"},
			{"service actor *", map[string]any{"service_actors": []string{"*"}, "allowed_tenants": []string{"acme"}}, "service_actors.0"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: tc.body}), 400, tc.field)
			})
		}
		// Several invalid fields are named together.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "!", "max_token_ttl": -1,
		}}), 400, "client_id", "max_token_ttl")
		// Loopback http only when the server allows loopback key sets (development).
		loopback := map[string]any{"jwks_uri": "http://127.0.0.1:9000/jwks"}
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: loopback}), 400, "jwks_uri")
		dev := newEnv(t, e.store, func(d *Deps) { d.AllowLoopbackJWKSURI = true })
		dev.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: loopback})

		items, _, err := e.store.ListClients(context.Background(), storage.Page{})
		if err != nil || len(items) != 1 {
			t.Errorf("rejected creates stored clients: %d, %v", len(items), err)
		}
	})
}

func TestBodyLimitsAndMediaType(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		big := `{"name":"` + strings.Repeat("a", maxBodyBytes) + `"}`
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: big}), 413)
		// Without a Content-Length (chunked) the limit holds as well.
		hr, _ := http.NewRequest("POST", e.srv.URL+"/admin/v1/clients", io.MultiReader(strings.NewReader(big)))
		hr.Header.Set("Authorization", "Bearer "+tokAdmin)
		hr.Header.Set("Content-Type", "application/json")
		if res, err := e.srv.Client().Do(hr); err != nil || res.StatusCode != 413 {
			t.Errorf("chunked oversized body: %v, %v", res, err)
		} else {
			res.Body.Close()
		}
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: `{"client_id":"a"}`, contentType: "text/plain"}), 415)
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: `{"client_id":"a"}`, contentType: "application/x-www-form-urlencoded"}), 415)
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: `{"client_id":"a"}`, contentType: "application/json; charset=utf-8"})
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: `{"client_id":`}), 400, "body")
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients", token: tokAdmin}), 400, "body")
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/nothing", token: tokAdmin}), 404)
		wantProblem(t, e.call(req{method: "GET", path: "/elsewhere", token: tokAdmin}), 404)
		wantProblem(t, e.call(req{method: "PUT", path: "/admin/v1/clients", token: tokAdmin, body: `{}`}), 405)
	})
}

func TestClientUpdateDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		pub, _ := testJWKs(t, "k1")
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "svc", "jwks_uri": "https://svc.example/jwks", "allowed_scopes": []string{"a"},
		}})
		e.advance(time.Minute)
		r := e.must(200, req{method: "PATCH", path: "/admin/v1/clients/svc", token: tokAdmin, body: map[string]any{
			"name": "Service", "disabled": true, "jwks": map[string]any{"keys": []any{pub}}, "allowed_scopes": []string{},
		}})
		c := decode[Client](t, r)
		if c.Name != "Service" || !c.Disabled || c.JwksURI != nil || c.Jwks == nil || len(c.AllowedScopes) != 0 || !c.UpdatedAt.After(c.CreatedAt) {
			t.Errorf("PATCH answered %s", r.body)
		}
		stored, _ := e.store.GetClient(ctx, "svc")
		if !stored.Disabled || stored.JWKSURI != "" || len(stored.JWKS) == 0 {
			t.Errorf("stored %+v", stored)
		}
		recs := e.auditEvents(EventClientUpdate)
		if len(recs) != 1 || !bytes.Contains(recs[0].Detail, []byte(`"disabled"`)) || !bytes.Contains(recs[0].Detail, []byte(`"svc"`)) {
			t.Errorf("update audit %+v", recs)
		}

		// Switching to private_key_jwt drops the secret.
		e.must(200, req{method: "PATCH", path: "/admin/v1/clients/svc", token: tokAdmin, body: map[string]any{"token_endpoint_auth_method": "private_key_jwt"}})
		if stored, _ = e.store.GetClient(ctx, "svc"); len(stored.SecretHash) != 0 {
			t.Error("a private_key_jwt client kept its secret hash")
		}
		// An invalid PATCH changes nothing and writes no audit record.
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/svc", token: tokAdmin, body: map[string]any{
			"name": "changed", "jwks_uri": "http://evil.example/jwks",
		}}), 400, "jwks_uri")
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/svc", token: tokAdmin, body: map[string]any{
			"jwks": map[string]any{"keys": []any{}},
		}}), 400, "token_endpoint_auth_method")
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/svc", token: tokAdmin, body: map[string]any{}}), 400)
		if stored, _ = e.store.GetClient(ctx, "svc"); stored.Name != "Service" || len(stored.JWKS) == 0 {
			t.Error("a rejected PATCH changed the client")
		}
		if n := len(e.auditEvents(EventClientUpdate)); n != 2 {
			t.Errorf("%d update records, want 2", n)
		}
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/ghost", token: tokAdmin, body: map[string]any{"name": "x"}}), 404)

		e.must(204, req{method: "DELETE", path: "/admin/v1/clients/svc", token: tokAdmin})
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/clients/svc", token: tokAdmin}), 404)
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/clients/svc", token: tokAdmin}), 404)
		if recs := e.auditEvents(EventClientDelete); len(recs) != 1 {
			t.Errorf("delete audit %+v", recs)
		}
	})
}

func TestClientSecretRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		r := e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "app"}})
		first := *decode[ClientWithSecret](t, r).ClientSecret

		// With a grace period the old secret keeps working until it ends.
		r = e.must(200, req{method: "POST", path: "/admin/v1/clients/app/secret", token: tokAdmin, body: map[string]any{"grace_period": 3600}})
		rot := decode[ClientSecret](t, r)
		if rot.ClientSecret == first || rot.PreviousSecretExpiresAt == nil || !rot.PreviousSecretExpiresAt.Equal(e.clock().Truncate(time.Microsecond).Add(time.Hour)) {
			t.Fatalf("rotation answered %s", r.body)
		}
		c, _ := e.store.GetClient(ctx, "app")
		if !e.hasher.Verify(rot.ClientSecret, c.SecretHash) || !e.hasher.Verify(first, c.PreviousSecretHash) {
			t.Error("after a graceful rotation the new hash is not current or the old one not previous")
		}
		got := decode[Client](t, e.must(200, req{method: "GET", path: "/admin/v1/clients/app", token: tokAdmin}))
		if got.PreviousSecretExpiresAt == nil {
			t.Error("GET does not show the grace period")
		}

		// Without one (no body at all) the old secret stops at once.
		r = e.must(200, req{method: "POST", path: "/admin/v1/clients/app/secret", token: tokAdmin})
		third := decode[ClientSecret](t, r)
		if third.PreviousSecretExpiresAt != nil {
			t.Errorf("rotation without grace answered %s", r.body)
		}
		c, _ = e.store.GetClient(ctx, "app")
		if !e.hasher.Verify(third.ClientSecret, c.SecretHash) || len(c.PreviousSecretHash) != 0 {
			t.Error("after a rotation without grace an old secret still verifies")
		}
		if recs := e.auditEvents(EventClientSecretRotate); len(recs) != 2 || bytes.Contains(recs[0].Detail, []byte(third.ClientSecret)) {
			t.Errorf("rotation audit %+v", recs)
		}

		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients/app/secret", token: tokAdmin, body: map[string]any{"grace_period": -1}}), 400, "grace_period")
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients/ghost/secret", token: tokAdmin}), 404)
		pub, _ := testJWKs(t, "k")
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "keyed", "token_endpoint_auth_method": "private_key_jwt", "jwks": map[string]any{"keys": []any{pub}},
		}})
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients/keyed/secret", token: tokAdmin}), 409)
	})
}

// The answers never carry a secret hash, whatever the client.
func TestNoHashesInAnswers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "h"}})
		c, _ := e.store.GetClient(context.Background(), "h")
		hashJSON, _ := json.Marshal(c.SecretHash) // base64, as encoding/json would leak it
		for _, path := range []string{"/admin/v1/clients", "/admin/v1/clients/h", "/admin/v1/audit"} {
			r := e.must(200, req{method: "GET", path: path, token: tokAdmin})
			if bytes.Contains(r.body, bytes.Trim(hashJSON, `"`)) || bytes.Contains(r.body, []byte("hash")) {
				t.Errorf("%s leaks the hash: %s", path, r.body)
			}
		}
	})
}
