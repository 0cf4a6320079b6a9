package authz_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// TestDecisionTable walks SPEC §4's decision table: each row fails exactly one step (the
// ones before it pass), on a fresh server and store.
func TestDecisionTable(t *testing.T) {
	type row struct {
		name   string
		setup  func(e *env)                         // extra fixtures
		env    func(c *envelope.Claims)             // envelope changes
		token  func(e *env) string                  // a hand-made subject token instead
		form   func(e *env, f url.Values)           // request changes
		send   func(e *env, f url.Values) *response // how to send (default: Basic as mcp-web)
		status int
		code   string
	}
	rows := []row{
		// authenticate the client
		{name: "wrong secret", send: func(e *env, f url.Values) *response {
			return e.do("/oauth2/token", f, func(r *http.Request) { r.SetBasicAuth(clientID, "mcs_wrong") })
		}, status: 401, code: "invalid_client"},
		{name: "unknown client", send: func(e *env, f url.Values) *response {
			return e.do("/oauth2/token", f, func(r *http.Request) { r.SetBasicAuth("nobody", "x") })
		}, status: 401, code: "invalid_client"},
		{name: "no credentials", send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "", f) },
			status: 401, code: "invalid_client"},
		{name: "disabled client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-off", Disabled: true})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-off", f) },
			status: 401, code: "invalid_client"},
		{name: "secret method mismatch: basic client uses post", send: func(e *env, f url.Values) *response {
			f.Set("client_id", clientID)
			f.Set("client_secret", e.secrets[clientID])
			return e.post("/oauth2/token", "", f)
		}, status: 401, code: "invalid_client"},
		// the client may use this grant type
		{name: "grant type not allowed", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "svc", GrantTypes: []string{exchange.GrantTypeClientCredentials}})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "svc", f) },
			status: 400, code: "unauthorized_client"},
		{name: "unsupported grant type", form: func(e *env, f url.Values) { f.Set("grant_type", "password") },
			status: 400, code: "unsupported_grant_type"},
		// parameters well formed
		{name: "missing subject_token", form: func(e *env, f url.Values) { f.Del("subject_token") },
			status: 400, code: "invalid_request"},
		{name: "empty subject_token counts as absent", form: func(e *env, f url.Values) { f.Set("subject_token", "") },
			status: 400, code: "invalid_request"},
		{name: "missing subject_token_type", form: func(e *env, f url.Values) { f.Del("subject_token_type") },
			status: 400, code: "invalid_request"},
		{name: "unknown subject_token_type", form: func(e *env, f url.Values) {
			f.Set("subject_token_type", "urn:ietf:params:oauth:token-type:access_token")
		}, status: 400, code: "invalid_request"},
		{name: "no target", form: func(e *env, f url.Values) { f.Del("audience") }, status: 400, code: "invalid_request"},
		{name: "repeated subject_token", form: func(e *env, f url.Values) { f.Add("subject_token", f.Get("subject_token")) },
			status: 400, code: "invalid_request"},
		{name: "repeated scope", form: func(e *env, f url.Values) { f.Add("scope", "orders:read"); f.Add("scope", "orders:read") },
			status: 400, code: "invalid_request"},
		{name: "actor_token", form: func(e *env, f url.Values) {
			f.Set("actor_token", "x")
			f.Set("actor_token_type", envelope.JWTTokenType)
		}, status: 400, code: "invalid_request"},
		{name: "requested_token_type saml", form: func(e *env, f url.Values) {
			f.Set("requested_token_type", "urn:ietf:params:oauth:token-type:saml2")
		}, status: 400, code: "invalid_request"},
		{name: "subject_token over 8 KiB", form: func(e *env, f url.Values) {
			f.Set("subject_token", strings.Repeat("a", 8193))
		}, status: 400, code: "invalid_request"},
		// envelope valid
		{name: "envelope expired", token: func(e *env) string {
			tok := e.envelope(clientID, nil)
			e.clock.Advance(3 * time.Minute)
			return tok
		}, status: 400, code: "invalid_request"},
		{name: "envelope for another issuer", env: func(c *envelope.Claims) { c.Audience = envelope.Audience{"https://elsewhere"} },
			status: 400, code: "invalid_request"},
		{name: "envelope signed by another client", token: func(e *env) string {
			c := e.claims(clientID)
			tok, err := e.signers[otherID].Sign(c) // right iss, wrong key
			if err != nil {
				e.t.Fatal(err)
			}
			return tok
		}, status: 400, code: "invalid_request"},
		{name: "envelope of another client", token: func(e *env) string { return e.envelope(otherID, nil) },
			status: 400, code: "invalid_request"},
		{name: "envelope lifetime over the client maximum", env: func(c *envelope.Claims) {
			c.IssuedAt = time.Now()
			c.ExpiresAt = c.IssuedAt.Add(10 * time.Minute)
		}, status: 400, code: "invalid_request"},
		{name: "envelope with alg none", token: func(e *env) string { return unsigned(e.claims(clientID)) },
			status: 400, code: "invalid_request"},
		{name: "tenant not allowed for the client", env: func(c *envelope.Claims) { c.Actor.Tenant = "globex" },
			status: 400, code: "invalid_request"},
		{name: "act chain too deep", env: func(c *envelope.Claims) {
			c.Act = &envelope.Act{Sub: "a1", Act: &envelope.Act{Sub: "a2", Act: &envelope.Act{Sub: "a3", Act: &envelope.Act{Sub: "a4"}}}}
		}, status: 400, code: "invalid_request"},
		// target
		{name: "unknown audience", form: func(e *env, f url.Values) { f.Set("audience", "nope_api") },
			status: 400, code: "invalid_target"},
		{name: "unknown resource", form: func(e *env, f url.Values) { f.Del("audience"); f.Set("resource", "https://nope.example") },
			status: 400, code: "invalid_target"},
		{name: "audience and resource name different audiences", form: func(e *env, f url.Values) {
			f.Set("audience", billingAPI)
			f.Set("resource", ordersURI)
		}, status: 400, code: "invalid_target"},
		{name: "two audiences", form: func(e *env, f url.Values) { f.Add("audience", billingAPI) },
			status: 400, code: "invalid_target"},
		{name: "audience not in delegation.allowed", env: func(c *envelope.Claims) { c.Delegation.Allowed = []string{billingAPI} },
			status: 400, code: "invalid_target"},
		{name: "audience not allowed for the client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-narrow", AllowedAudiences: []string{billingAPI}})
			e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-narrow"})
		}, token: func(e *env) string { return e.envelope("mcp-narrow", nil) },
			send:   func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-narrow", f) },
			status: 400, code: "invalid_target"},
		// mode allowed by the audience and the client
		{name: "restricted_user on an audience that does not list it", env: func(c *envelope.Claims) {
			c.Delegation.Mode = envelope.ModeRestrictedUser
		}, form: func(e *env, f url.Values) { f.Set("audience", billingAPI) }, status: 400, code: "invalid_request"},
		{name: "mode not allowed for the client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-obo", AllowedModes: []string{envelope.ModeOnBehalfOf}})
			e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-obo"})
		}, token: func(e *env) string {
			return e.envelope("mcp-obo", func(c *envelope.Claims) { c.Delegation.Mode = envelope.ModeServiceIdentity })
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-obo", f) },
			status: 400, code: "invalid_request"},
		// user actor: an active grant exists …
		{name: "no grant for this user", env: func(c *envelope.Claims) { c.Actor.Sub = "user_999" },
			status: 400, code: "invalid_request"},
		{name: "grant pinned to another agent", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_pinned", AgentID: "agent_other"})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_pinned" }, status: 400, code: "invalid_request"},
		{name: "grant not yet valid", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_later", NotBefore: time.Now().Add(time.Hour), ExpiresAt: time.Now().Add(2 * time.Hour)})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_later" }, status: 400, code: "invalid_request"},
		// … and covers this audience and mode
		{name: "grant does not cover the audience", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_b", Audiences: []string{billingAPI}})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_b" }, status: 400, code: "invalid_target"},
		{name: "grant does not cover the mode", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_obo", Modes: []string{envelope.ModeOnBehalfOf}})
		}, env: func(c *envelope.Claims) {
			c.Actor.Sub = "user_obo"
			c.Delegation.Mode = envelope.ModeRestrictedUser
		}, status: 400, code: "invalid_target"},
		// service actor: service_identity only, the client's own limits
		{name: "service actor in on_behalf_of", token: func(e *env) string {
			c := e.claims(clientID)
			c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
			return e.rawEnvelope(clientID, c)
		}, status: 400, code: "invalid_request"},
		{name: "service actor, client allows no audience", env: func(c *envelope.Claims) {
			c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
			c.Delegation.Mode = envelope.ModeServiceIdentity
		}, status: 400, code: "invalid_target"},
		{name: "service actor, client allows no scope", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-svc", AllowedAudiences: []string{ordersAPI}})
		}, token: func(e *env) string {
			return e.envelope("mcp-svc", func(c *envelope.Claims) {
				c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
				c.Delegation.Mode = envelope.ModeServiceIdentity
			})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-svc", f) },
			status: 400, code: "invalid_scope"},
		// scopes
		{name: "requested scope outside the effective set", form: func(e *env, f url.Values) { f.Set("scope", "orders:read orders:delete") },
			status: 400, code: "invalid_scope"},
		{name: "requested scope of another audience", form: func(e *env, f url.Values) { f.Set("scope", "billing:read") },
			status: 400, code: "invalid_scope"},
		{name: "no effective scope", env: func(c *envelope.Claims) { c.Authorization.Scopes = []string{"billing:read"} },
			status: 400, code: "invalid_scope"},
	}
	for _, rw := range rows {
		t.Run(rw.name, func(t *testing.T) {
			e := newEnv(t, openSQLite(t))
			if rw.setup != nil {
				rw.setup(e)
			}
			var tok string
			if rw.token != nil {
				tok = rw.token(e)
			} else {
				tok = e.envelope(clientID, rw.env)
			}
			f := exchangeForm(tok, ordersAPI)
			if rw.form != nil {
				rw.form(e, f)
			}
			var r *response
			if rw.send != nil {
				r = rw.send(e, f)
			} else {
				r = e.post("/oauth2/token", clientID, f)
			}
			wantError(t, r, rw.status, rw.code)
			if rw.status == 401 && rw.send != nil && r.header.Get("WWW-Authenticate") == "" &&
				rw.name != "no credentials" && rw.name != "secret method mismatch: basic client uses post" {
				t.Errorf("401 after Basic without WWW-Authenticate")
			}
			// Every refused token request is audited with its reason.
			if rw.code != "unsupported_grant_type" {
				items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange})
				if err != nil {
					t.Fatal(err)
				}
				if len(items) != 1 || items[0].Outcome != storage.OutcomeDenied || items[0].Reason == "" {
					t.Fatalf("audit = %+v, want one denied record with a reason", items)
				}
				if strings.Contains(string(items[0].Detail), tok) {
					t.Errorf("audit holds the subject token")
				}
			}
		})
	}
}

// rawEnvelope signs claims the SDK Signer would refuse to sign, with client's envelope key.
func (e *env) rawEnvelope(client string, c envelope.Claims) string {
	e.t.Helper()
	if c.IssuedAt.IsZero() {
		c.IssuedAt = e.clock.Now()
		c.ExpiresAt = c.IssuedAt.Add(time.Minute)
		c.JTI = storage.NewID("eie")
		c.Agent.ClientID = client
	}
	payload, _ := json.Marshal(c)
	priv := e.privs[client]
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, client+"-key1")
	_ = hdr.Set(jws.TypeKey, envelope.Type)
	tok, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(tok)
}

func unsigned(c envelope.Claims) string {
	c.IssuedAt = time.Now()
	c.ExpiresAt = c.IssuedAt.Add(time.Minute)
	c.JTI = "j1"
	c.Agent.ClientID = c.Issuer
	payload, _ := json.Marshal(c)
	h := b64(`{"alg":"none","typ":"eie+jwt","kid":"` + c.Issuer + `-key1"}`)
	return h + "." + b64(string(payload)) + "."
}
