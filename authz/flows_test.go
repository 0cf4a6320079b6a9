package authz_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

func TestModeClaims(t *testing.T) {
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newEnv(t, store)

		t.Run("on_behalf_of", func(t *testing.T) {
			prior := &envelope.Act{Sub: "upstream_agent", ClientID: "planner"}
			r := e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, func(c *envelope.Claims) { c.Act = prior }), ordersAPI))
			c := e.wantToken(t, r)
			if r.str("issued_token_type") != exchange.TokenTypeAccessToken {
				t.Errorf("issued_token_type %q", r.str("issued_token_type"))
			}
			want := exchange.TokenClaims{
				Issuer: e.issuer, Subject: userSub, Audience: ordersAPI, ClientID: clientID,
				Scope: "orders:read orders:write", Tenant: tenant, DelegationMode: envelope.ModeOnBehalfOf,
				ActorType: envelope.ActorUser, ActorSub: userSub, AgentID: agentID, TraceID: "req_abc", SessionID: "sess_789", GrantID: e.grantID,
				Act: &envelope.Act{Sub: agentID, ClientID: clientID, Act: prior},
			}
			checkClaims(t, c, want, 300)
		})
		t.Run("service_identity", func(t *testing.T) {
			r := e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, func(c *envelope.Claims) {
				c.Delegation.Mode = envelope.ModeServiceIdentity
			}), ordersAPI))
			c := e.wantToken(t, r)
			checkClaims(t, c, exchange.TokenClaims{
				Issuer: e.issuer, Subject: clientID, Audience: ordersAPI, ClientID: clientID,
				Scope: "orders:read orders:write", Tenant: tenant, DelegationMode: envelope.ModeServiceIdentity,
				ActorType: envelope.ActorUser, ActorSub: userSub, AgentID: agentID, TraceID: "req_abc", SessionID: "sess_789", GrantID: e.grantID,
			}, 300)
		})
		t.Run("restricted_user", func(t *testing.T) {
			f := exchangeForm(e.envelope(clientID, func(c *envelope.Claims) { c.Delegation.Mode = envelope.ModeRestrictedUser }), ordersAPI)
			f.Set("requested_token_type", exchange.TokenTypeJWT)
			r := e.post("/oauth2/token", clientID, f)
			c := e.wantToken(t, r)
			if r.str("issued_token_type") != exchange.TokenTypeJWT {
				t.Errorf("issued_token_type %q, want the jwt type asked for", r.str("issued_token_type"))
			}
			checkClaims(t, c, exchange.TokenClaims{
				Issuer: e.issuer, Subject: userSub, Audience: ordersAPI, ClientID: clientID,
				Scope: "orders:read orders:write", Tenant: tenant, DelegationMode: envelope.ModeRestrictedUser,
				ActorType: envelope.ActorUser, ActorSub: userSub, AgentID: agentID, TraceID: "req_abc", SessionID: "sess_789", GrantID: e.grantID,
			}, 60)
			if r.body["expires_in"] != float64(60) {
				t.Errorf("expires_in %v, want 60", r.body["expires_in"])
			}
		})
		t.Run("service actor", func(t *testing.T) {
			e.addClient(&storage.Client{ID: "mcp-svc", AllowedAudiences: []string{ordersAPI}, AllowedScopes: []string{"orders:read"},
				AllowedTenants: []string{"ops"}, ServiceActors: []string{"nightly-batch"}})
			r := e.post("/oauth2/token", "mcp-svc", exchangeForm(e.envelope("mcp-svc", func(c *envelope.Claims) {
				c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "nightly-batch", Tenant: "ops"}
				c.Delegation.Mode = envelope.ModeServiceIdentity
			}), ordersAPI))
			c := e.wantToken(t, r)
			checkClaims(t, c, exchange.TokenClaims{
				Issuer: e.issuer, Subject: "mcp-svc", Audience: ordersAPI, ClientID: "mcp-svc",
				Scope: "orders:read", Tenant: "ops", DelegationMode: envelope.ModeServiceIdentity,
				ActorType: envelope.ActorService, ActorSub: "nightly-batch", AgentID: agentID, TraceID: "req_abc", SessionID: "sess_789",
			}, 300)
		})
	})
}

// checkClaims compares everything but the per-token values, then checks those for shape.
func checkClaims(t *testing.T, got, want exchange.TokenClaims, ttl int64) {
	t.Helper()
	if got.JTI == "" || got.IssuedAt == 0 || got.ExpiresAt-got.IssuedAt != ttl {
		t.Errorf("jti %q iat %d exp %d, want a jti and a %d s lifetime", got.JTI, got.IssuedAt, got.ExpiresAt, ttl)
	}
	if d := time.Since(time.Unix(got.IssuedAt, 0)); d < -2*time.Second || d > time.Minute {
		t.Errorf("iat %d is not now", got.IssuedAt)
	}
	got.JTI, got.IssuedAt, got.ExpiresAt = "", 0, 0
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("claims\n got %s\nwant %s", g, w)
	}
}

func TestReplay(t *testing.T) {
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newEnv(t, store)
		tok := e.envelope(clientID, nil)

		// A request that fails client authentication does not use up the envelope.
		bad := e.do("/oauth2/token", exchangeForm(tok, ordersAPI), func(r *http.Request) { r.SetBasicAuth(clientID, "mcs_nope") })
		wantError(t, bad, 401, "invalid_client")
		// Nor does one refused later, for scope.
		f := exchangeForm(tok, ordersAPI)
		f.Set("scope", "orders:delete")
		wantError(t, e.post("/oauth2/token", clientID, f), 400, "invalid_scope")

		e.wantToken(t, e.post("/oauth2/token", clientID, exchangeForm(tok, ordersAPI)))
		again := e.post("/oauth2/token", clientID, exchangeForm(tok, ordersAPI))
		wantError(t, again, 400, "invalid_request")
		if !strings.Contains(again.str("error_description"), "already used") {
			t.Errorf("description %q", again.str("error_description"))
		}
		// The same envelope toward a second audience is fine, once.
		f = exchangeForm(tok, "")
		f.Set("resource", ordersURI)
		f.Set("audience", billingAPI)
		wantError(t, e.post("/oauth2/token", clientID, f), 400, "invalid_target")
		c := e.wantToken(t, e.post("/oauth2/token", clientID, exchangeForm(tok, billingAPI)))
		if c.Audience != billingAPI || c.Scope != "billing:read" {
			t.Errorf("aud %q scope %q", c.Audience, c.Scope)
		}
		wantError(t, e.post("/oauth2/token", clientID, exchangeForm(tok, billingAPI)), 400, "invalid_request")

		items, _, err := store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange, Outcome: storage.OutcomeDenied})
		if err != nil {
			t.Fatal(err)
		}
		replays := 0
		for _, it := range items {
			if it.Reason == exchange.ReasonReplay {
				replays++
			}
		}
		if replays != 2 {
			t.Errorf("%d replay denials audited, want 2", replays)
		}
	})
}

func TestScopesAndLifetime(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	ctx := context.Background()
	// A resource indicator naming the same audience as audience is fine.
	f := exchangeForm(e.envelope(clientID, nil), ordersAPI)
	f.Set("resource", ordersURI)
	f.Set("scope", "orders:write")
	r := e.post("/oauth2/token", clientID, f)
	if c := e.wantToken(t, r); c.Scope != "orders:write" || r.str("scope") != "orders:write" {
		t.Errorf("requested subset: token scope %q, response scope %q", c.Scope, r.str("scope"))
	}

	// Narrowed by the envelope, the grant and the client.
	e.addClient(&storage.Client{ID: "mcp-ro", AllowedScopes: []string{"orders:read", "billing:read"}, MaxTokenTTL: 45 * time.Second})
	e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-ro", Scopes: []string{"orders:read", "orders:write"}})
	r = e.post("/oauth2/token", "mcp-ro", exchangeForm(e.envelope("mcp-ro", nil), ordersAPI))
	if c := e.wantToken(t, r); c.Scope != "orders:read" || c.ExpiresAt-c.IssuedAt != 45 {
		t.Errorf("narrowed: scope %q lifetime %d, want orders:read and the client's 45 s", c.Scope, c.ExpiresAt-c.IssuedAt)
	}

	// The audience's TTL, and a grant's remaining time.
	if _, err := store(e).UpdateAudience(ctx, billingAPI, func(a *storage.Audience) error { a.TokenTTL = 120 * time.Second; return nil }); err != nil {
		t.Fatal(err)
	}
	e.svc.InvalidateAudiences()
	c := e.wantToken(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), billingAPI)))
	if c.ExpiresAt-c.IssuedAt != 120 {
		t.Errorf("audience TTL: lifetime %d, want 120", c.ExpiresAt-c.IssuedAt)
	}
	e.addClient(&storage.Client{ID: "mcp-short"})
	gid := e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-short", ExpiresAt: e.clock.Now().Add(90 * time.Second)})
	c = e.wantToken(t, e.post("/oauth2/token", "mcp-short", exchangeForm(e.envelope("mcp-short", nil), ordersAPI)))
	if l := c.ExpiresAt - c.IssuedAt; l < 88 || l > 90 || c.GrantID != gid {
		t.Errorf("grant time left: lifetime %d grant %q, want about 90 s under %s", l, c.GrantID, gid)
	}
}

func store(e *env) storage.Store { return e.store }

func TestIntrospectionAndRevocation(t *testing.T) {
	eachBackend(t, func(t *testing.T, st storage.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		issue := func() string {
			return e.wantTokenString(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)))
		}
		introspect := func(tok string) *response {
			r := e.post("/oauth2/introspect", otherID, url.Values{"token": {tok}})
			if r.status != 200 || r.header.Get("Cache-Control") != "no-store" {
				t.Fatalf("introspect: %d %s (Cache-Control %q)", r.status, r.raw, r.header.Get("Cache-Control"))
			}
			return r
		}
		tok := issue()
		r := introspect(tok)
		act, _ := r.body["act"].(map[string]any)
		if r.body["active"] != true || r.str("sub") != userSub || r.str("client_id") != clientID ||
			r.str("scope") != "orders:read orders:write" || r.str("aud") != ordersAPI ||
			r.str("delegation_mode") != envelope.ModeOnBehalfOf || r.str("grant_id") != e.grantID ||
			r.str("trace_id") != "req_abc" || r.str("token_type") != "Bearer" || act["sub"] != agentID ||
			r.body["exp"] == nil || r.body["iat"] == nil {
			t.Errorf("introspection of an active token: %s", r.raw)
		}

		// Unauthenticated introspection is refused; garbage is inactive.
		wantError(t, e.post("/oauth2/introspect", "", url.Values{"token": {tok}}), 401, "invalid_client")
		if r := introspect("not.a.token"); r.body["active"] != false || len(r.body) != 1 {
			t.Errorf("garbage: %s", r.raw)
		}

		// Only the client the token was issued to may revoke it.
		wantError(t, e.post("/oauth2/revoke", otherID, url.Values{"token": {tok}}), 400, "unauthorized_client")
		if introspect(tok).body["active"] != true {
			t.Fatal("a refused revocation changed the token")
		}
		rv := e.post("/oauth2/revoke", clientID, url.Values{"token": {tok}})
		if rv.status != 200 || rv.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("revoke: %d %s", rv.status, rv.raw)
		}
		if introspect(tok).body["active"] != false {
			t.Error("revoked token still active")
		}
		if rv := e.post("/oauth2/revoke", clientID, url.Values{"token": {"unknown-token"}}); rv.status != 200 {
			t.Errorf("unknown token: %d, want 200", rv.status)
		}
		wantError(t, e.post("/oauth2/revoke", clientID, url.Values{}), 400, "invalid_request")
		items, _, err := st.ListAudit(ctx, storage.AuditFilter{Event: authz.EventRevoke, Outcome: storage.OutcomeGranted})
		if err != nil || len(items) != 1 || items[0].ClientID != clientID {
			t.Fatalf("revoke audit: %+v %v", items, err)
		}
		// The record names the token's actor as the token does, its type included, so a
		// service actor's revocation never reads as a user's.
		if a := items[0]; a.ActorType != envelope.ActorUser || a.ActorSub != userSub || a.AgentID != agentID || a.TraceID != "req_abc" {
			t.Errorf("revoke audit identities: actor %q/%q agent %q trace %q", a.ActorType, a.ActorSub, a.AgentID, a.TraceID)
		}

		// Revoking the grant deactivates its tokens at once, and refuses the next exchange.
		tok2 := issue()
		if _, err := st.RevokeGrant(ctx, e.grantID, "admin", "test", e.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if introspect(tok2).body["active"] != false {
			t.Error("token of a revoked grant still active")
		}
		wantError(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)), 400, "invalid_request")

		// Expiry.
		e.addGrant(&storage.Grant{Subject: userSub})
		tok3 := issue()
		if introspect(tok3).body["active"] != true {
			t.Fatal("new grant's token inactive")
		}
		e.clock.Advance(301 * time.Second)
		if introspect(tok3).body["active"] != false {
			t.Error("expired token still active")
		}
	})
}

func (e *env) wantTokenString(t *testing.T, r *response) string {
	t.Helper()
	e.wantToken(t, r)
	return r.str("access_token")
}

func TestMetadataAndJWKS(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+p, nil)
		r := e.send(req)
		if r.status != 200 {
			t.Fatalf("%s: %d", p, r.status)
		}
		want := map[string]any{
			"issuer":                 e.issuer,
			"token_endpoint":         e.issuer + "/oauth2/token",
			"jwks_uri":               e.issuer + "/.well-known/jwks.json",
			"introspection_endpoint": e.issuer + "/oauth2/introspect",
			"revocation_endpoint":    e.issuer + "/oauth2/revoke",
		}
		for k, v := range want {
			if r.body[k] != v {
				t.Errorf("%s: %s = %v, want %v", p, k, r.body[k], v)
			}
		}
		lists := map[string][]string{
			"grant_types_supported":                            {exchange.GrantTypeTokenExchange, "client_credentials"},
			"token_endpoint_auth_methods_supported":            {"client_secret_basic", "client_secret_post", "private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": {"ES256", "ES384", "EdDSA", "PS256", "RS256"},
			"subject_token_types_supported":                    {envelope.TokenType, envelope.JWTTokenType},
		}
		for k, v := range lists {
			var got []string
			for _, x := range r.body[k].([]any) {
				got = append(got, x.(string))
			}
			if !reflect.DeepEqual(got, v) {
				t.Errorf("%s: %s = %v, want %v", p, k, got, v)
			}
		}
	}

	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/.well-known/jwks.json", nil)
	r := e.send(req)
	etag := r.header.Get("ETag")
	keysList, _ := r.body["keys"].([]any)
	if r.status != 200 || etag == "" || !strings.Contains(r.header.Get("Cache-Control"), "max-age=") || len(keysList) == 0 {
		t.Fatalf("jwks: %d etag %q cache %q %s", r.status, etag, r.header.Get("Cache-Control"), r.raw)
	}
	k := keysList[0].(map[string]any)
	if k["kid"] == nil || k["alg"] != "ES256" || k["use"] != "sig" || k["d"] != nil {
		t.Errorf("jwk %v", k)
	}
	req.Header.Set("If-None-Match", etag)
	if r := e.send(req); r.status != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", r.status)
	}
	req.Header.Set("If-None-Match", `"other"`)
	if r := e.send(req); r.status != 200 {
		t.Errorf("stale If-None-Match: %d, want 200", r.status)
	}
}

func TestClientAuthentication(t *testing.T) {
	eachBackend(t, func(t *testing.T, st storage.Store) {
		e := newEnv(t, st)
		ctx := context.Background()
		ccForm := func() url.Values { return url.Values{"grant_type": {"client_credentials"}} }

		// client_secret_basic with an id that must be form-encoded inside Basic (RFC 6749 §2.3.1).
		odd := "svc:a b+c%"
		e.addClient(&storage.Client{ID: odd, GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"}})
		r := e.post("/oauth2/token", odd, ccForm())
		if c := e.wantToken(t, r); c.Subject != odd {
			t.Errorf("sub %q", c.Subject)
		}
		// The same id sent raw (not form-encoded) does not authenticate: "+" decodes to " ".
		r = e.do("/oauth2/token", ccForm(), func(req *http.Request) { req.SetBasicAuth(odd, e.secrets[odd]) })
		wantError(t, r, 401, "invalid_client")
		if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
		}

		// client_secret_post; Basic is refused for a post client.
		e.addClient(&storage.Client{ID: "poster", TokenEndpointAuthMethod: authz.AuthClientSecretPost,
			GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"}})
		f := ccForm()
		f.Set("client_id", "poster")
		f.Set("client_secret", e.secrets["poster"])
		e.wantToken(t, e.post("/oauth2/token", "", f))
		wantError(t, e.post("/oauth2/token", "poster", ccForm()), 401, "invalid_client")
		f.Set("client_secret", e.secrets["poster"]+"x")
		wantError(t, e.post("/oauth2/token", "", f), 401, "invalid_client")

		// Secret rotation: the previous secret works until its grace period ends.
		oldSecret := e.secrets[odd]
		plain, hash := e.hasher.Generate()
		if _, err := st.UpdateClient(ctx, odd, func(c *storage.Client) error {
			c.PreviousSecretHash, c.SecretHash = c.SecretHash, hash
			c.PreviousSecretExpiresAt = e.clock.Now().Add(time.Hour)
			c.UpdatedAt = e.clock.Now()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		e.svc.InvalidateClient(odd)
		e.secrets[odd] = plain
		e.wantToken(t, e.post("/oauth2/token", odd, ccForm()))
		e.secrets[odd] = oldSecret
		e.wantToken(t, e.post("/oauth2/token", odd, ccForm()))
		e.clock.Advance(61 * time.Minute)
		wantError(t, e.post("/oauth2/token", odd, ccForm()), 401, "invalid_client")

		// private_key_jwt.
		priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		e.addClient(&storage.Client{ID: "jwt-client", TokenEndpointAuthMethod: authz.AuthPrivateKeyJWT,
			GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"},
			JWKS: jwksOf(t, priv, "jwt-key")})
		now := e.clock.Now()
		claims := func() map[string]any {
			return map[string]any{"iss": "jwt-client", "sub": "jwt-client", "aud": []string{"https://other", e.issuer + "/oauth2/token"},
				"exp": now.Add(time.Minute).Unix(), "iat": now.Unix(), "jti": storage.NewID("a")}
		}
		assert := func(c map[string]any, kid string) url.Values {
			f := ccForm()
			f.Set("client_assertion_type", authz.AssertionTypeJWTBearer)
			f.Set("client_assertion", signJWT(t, priv, kid, c))
			return f
		}
		first := assert(claims(), "jwt-key")
		e.wantToken(t, e.post("/oauth2/token", "", first))
		wantError(t, e.post("/oauth2/token", "", first), 401, "invalid_client") // jti used once
		c := claims()
		c["aud"] = e.issuer // the issuer, as a string
		e.wantToken(t, e.post("/oauth2/token", "", assert(c, "jwt-key")))
		for name, mut := range map[string]func(map[string]any){
			"wrong aud":   func(c map[string]any) { c["aud"] = "https://elsewhere" },
			"no exp":      func(c map[string]any) { delete(c, "exp") },
			"expired":     func(c map[string]any) { c["exp"] = now.Add(-5 * time.Minute).Unix() },
			"sub differs": func(c map[string]any) { c["sub"] = "other" },
			"no jti":      func(c map[string]any) { delete(c, "jti") },
		} {
			c := claims()
			mut(c)
			f := assert(c, "jwt-key")
			f.Set("client_id", "jwt-client")
			if r := e.post("/oauth2/token", "", f); r.status != 401 || r.str("error") != "invalid_client" {
				t.Errorf("%s: %d %s", name, r.status, r.raw)
			}
		}
		wantError(t, e.post("/oauth2/token", "", assert(claims(), "unknown-kid")), 401, "invalid_client")
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		f = ccForm()
		f.Set("client_assertion_type", authz.AssertionTypeJWTBearer)
		f.Set("client_assertion", signJWT(t, other, "jwt-key", claims()))
		wantError(t, e.post("/oauth2/token", "", f), 401, "invalid_client")
		// A refused assertion did not spend its jti: the same claims, rightly signed, work.
		good := claims()
		f = assert(good, "jwt-key")
		f.Set("client_assertion", signJWT(t, other, "jwt-key", good))
		wantError(t, e.post("/oauth2/token", "", f), 401, "invalid_client")
		e.wantToken(t, e.post("/oauth2/token", "", assert(good, "jwt-key")))
		// A secret for a private_key_jwt client is refused.
		wantError(t, e.do("/oauth2/token", ccForm(), func(r *http.Request) { r.SetBasicAuth("jwt-client", "x") }), 401, "invalid_client")

		// A client whose jwks_uri cannot be fetched (here: a loopback address, refused
		// without --allow-loopback-jwks-uri) is answered 503 client_keys_unavailable, as the
		// token exchange does for its envelope keys: the store is fine, and a retry may work.
		e.addClient(&storage.Client{ID: "remote-keys", TokenEndpointAuthMethod: authz.AuthPrivateKeyJWT,
			GrantTypes: []string{"client_credentials"}, AllowedScopes: []string{"x"},
			JWKSURI: "https://127.0.0.1:1/jwks.json"})
		rc := claims()
		rc["iss"], rc["sub"] = "remote-keys", "remote-keys"
		r = e.post("/oauth2/token", "", assert(rc, "jwt-key"))
		if r.status != http.StatusServiceUnavailable || r.str("error") != "temporarily_unavailable" ||
			r.str("reason") != "client_keys_unavailable" || r.header.Get("Retry-After") == "" {
			t.Errorf("private_key_jwt with unreachable keys: %d %s (Retry-After %q)", r.status, r.raw, r.header.Get("Retry-After"))
		}
	})
}

func signJWT(t *testing.T, priv *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	tok, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(tok)
}

func TestClientCredentialsAndBearer(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	ctx := context.Background()
	e.addClient(&storage.Client{ID: "mandate-admin", GrantTypes: []string{"client_credentials"},
		AllowedScopes: []string{"mandate:admin", "mandate:admin:read"}})
	cc := func(scope string) *response {
		f := url.Values{"grant_type": {"client_credentials"}}
		if scope != "" {
			f.Set("scope", scope)
		}
		return e.post("/oauth2/token", "mandate-admin", f)
	}
	r := cc("")
	c := e.wantToken(t, r)
	if c.Subject != "mandate-admin" || c.Audience != e.issuer || c.Scope != "mandate:admin mandate:admin:read" || c.Act != nil {
		t.Errorf("client_credentials claims %+v", c)
	}
	if _, ok := r.body["issued_token_type"]; ok {
		t.Errorf("client_credentials answer has issued_token_type")
	}
	wantError(t, cc("mandate:admin other"), 400, "invalid_scope")
	wantError(t, e.post("/oauth2/token", clientID, url.Values{"grant_type": {"client_credentials"}}), 400, "unauthorized_client")

	tok := r.str("access_token")
	id, scopes, err := e.handler.AuthenticateBearer(ctx, tok)
	if err != nil || id != "mandate-admin" || strings.Join(scopes, " ") != "mandate:admin mandate:admin:read" {
		t.Fatalf("AuthenticateBearer = %q %v %v", id, scopes, err)
	}
	ro := cc("mandate:admin:read").str("access_token")
	if _, scopes, err := e.handler.AuthenticateBearer(ctx, ro); err != nil || len(scopes) != 1 {
		t.Errorf("read-only token: %v %v", scopes, err)
	}
	// A token for a downstream audience is not an admin token.
	xt := e.wantTokenString(t, e.post("/oauth2/token", clientID, exchangeForm(e.envelope(clientID, nil), ordersAPI)))
	if _, _, err := e.handler.AuthenticateBearer(ctx, xt); !errors.Is(err, authz.ErrInvalidToken) {
		t.Errorf("exchange token accepted as admin token: %v", err)
	}
	if _, _, err := e.handler.AuthenticateBearer(ctx, tok+"x"); !errors.Is(err, authz.ErrInvalidToken) {
		t.Errorf("tampered token: %v", err)
	}
	if rv := e.post("/oauth2/revoke", "mandate-admin", url.Values{"token": {tok}}); rv.status != 200 {
		t.Fatalf("revoke: %d", rv.status)
	}
	if _, _, err := e.handler.AuthenticateBearer(ctx, tok); !errors.Is(err, authz.ErrInvalidToken) {
		t.Errorf("revoked token: %v", err)
	}
	e.clock.Advance(301 * time.Second)
	if _, _, err := e.handler.AuthenticateBearer(ctx, ro); !errors.Is(err, authz.ErrInvalidToken) {
		t.Errorf("expired token: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	f := exchangeForm(e.envelope(clientID, nil), ordersAPI)
	f.Set("pad", strings.Repeat("a", 65<<10))
	wantError(t, e.post("/oauth2/token", clientID, f), 413, "invalid_request")

	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/oauth2/token", strings.NewReader(`{"grant_type":"client_credentials"}`))
	req.Header.Set("Content-Type", "application/json")
	wantError(t, e.send(req), 400, "invalid_request")

	f = exchangeForm(e.envelope(clientID, nil), ordersAPI)
	f.Add("grant_type", exchange.GrantTypeTokenExchange)
	wantError(t, e.post("/oauth2/token", clientID, f), 400, "invalid_request")
	f = exchangeForm(e.envelope(clientID, nil), ordersAPI)
	f.Set("client_assertion_type", authz.AssertionTypeJWTBearer)
	f.Set("client_assertion", strings.Repeat("a", 8193))
	wantError(t, e.post("/oauth2/token", "", f), 400, "invalid_request")
	wantError(t, e.post("/oauth2/token", clientID, url.Values{"scope": {"x"}}), 400, "invalid_request")

	// A wrong method is answered in OAuth's format too, with a reason and the methods allowed.
	for path, allow := range map[string]string{"/oauth2/token": "POST", "/oauth2/introspect": "POST",
		"/oauth2/revoke": "POST", "/oauth2/grant-requests": "POST", "/oauth2/grant-requests/gr_x": "GET, POST"} {
		for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
			if strings.Contains(allow, method) {
				continue
			}
			req, _ := http.NewRequest(method, e.srv.URL+path, nil)
			r := e.send(req)
			if r.status != http.StatusMethodNotAllowed || r.str("error") != "invalid_request" || r.str("reason") != "malformed_request" ||
				r.header.Get("Allow") != allow || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
				t.Errorf("%s %s: %d %q Allow %q", method, path, r.status, r.raw, r.header.Get("Allow"))
			}
		}
	}
}

// An exchange whose client's envelope keys cannot be fetched is answered 503
// client_keys_unavailable and, the store being fine, audited as an error like any failed
// decision (only a failing store goes unrecorded: recording would fail the same way).
func TestClientKeysUnavailableIsAudited(t *testing.T) {
	eachBackend(t, func(t *testing.T, st storage.Store) {
		e := newEnv(t, st)
		const id = "remote-keys"
		e.addClient(&storage.Client{ID: id, AllowedTenants: []string{tenant},
			JWKSURI: "https://127.0.0.1:1/jwks.json"}) // loopback: refused, as if unreachable
		priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		signer, err := envelope.NewSigner(priv, id+"-key1")
		if err != nil {
			t.Fatal(err)
		}
		signer.Now = e.clock.Now
		e.signers[id] = signer

		r := e.post("/oauth2/token", id, exchangeForm(e.envelope(id, nil), ordersAPI))
		if r.status != http.StatusServiceUnavailable || r.str("reason") != "client_keys_unavailable" {
			t.Fatalf("exchange with unreachable client keys: %d %s", r.status, r.raw)
		}
		items, _, err := st.ListAudit(context.Background(), storage.AuditFilter{ClientID: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 1 || items[0].Outcome != storage.OutcomeError || items[0].Reason != "client_keys_unavailable" ||
			items[0].Event != exchange.EventTokenExchange {
			t.Errorf("audit records of the failed exchange: %+v, want one error record with reason client_keys_unavailable", items)
		}
	})
}

func TestStorageDown(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	tok := e.envelope(clientID, nil)
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	r := e.post("/oauth2/token", clientID, exchangeForm(tok, ordersAPI))
	wantError(t, r, 503, "temporarily_unavailable")
	if strings.Contains(strings.ToLower(string(r.raw)), "sql") {
		t.Errorf("internal detail in %s", r.raw)
	}
	if got := r.header.Get("Retry-After"); got != authz.RetryAfterSeconds {
		t.Errorf("503 with Retry-After %q, want %q", got, authz.RetryAfterSeconds)
	}
}
