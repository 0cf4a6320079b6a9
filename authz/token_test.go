package authz_test

import (
	"context"
	"encoding/json"
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
		reason string // the reason on the wire, which the audit record carries too
		// client is who the request is made as, when not mcp-web: Explain asks as them.
		client string
		// notExplained says why Explain cannot ask this row's question: it names a client
		// instead of authenticating one, takes one audience, one resource and a scope as
		// JSON, and always asks as subject_token_type eie with the default token type.
		notExplained string
	}
	rows := []row{
		// authenticate the client
		{name: "wrong secret", notExplained: "client authentication", send: func(e *env, f url.Values) *response {
			return e.do("/oauth2/token", f, func(r *http.Request) { r.SetBasicAuth(clientID, "mcs_wrong") })
		}, status: 401, code: "invalid_client", reason: "client_authentication_failed"},
		{name: "unknown client", client: "nobody", send: func(e *env, f url.Values) *response {
			return e.do("/oauth2/token", f, func(r *http.Request) { r.SetBasicAuth("nobody", "x") })
		}, status: 401, code: "invalid_client", reason: "client_authentication_failed"},
		{name: "no credentials", notExplained: "client authentication", send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "", f) },
			status: 401, code: "invalid_client", reason: "client_authentication_failed"},
		{name: "disabled client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-off", Disabled: true})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-off", f) }, client: "mcp-off",
			status: 401, code: "invalid_client", reason: "client_authentication_failed"},
		{name: "secret method mismatch: basic client uses post", notExplained: "client authentication", send: func(e *env, f url.Values) *response {
			f.Set("client_id", clientID)
			f.Set("client_secret", e.secrets[clientID])
			return e.post("/oauth2/token", "", f)
		}, status: 401, code: "invalid_client", reason: "client_authentication_failed"},
		// the client may use this grant type
		{name: "grant type not allowed", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "svc", GrantTypes: []string{exchange.GrantTypeClientCredentials}})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "svc", f) }, client: "svc",
			status: 400, code: "unauthorized_client", reason: "grant_type_not_allowed"},
		{name: "unsupported grant type", notExplained: "grant_type", form: func(e *env, f url.Values) { f.Set("grant_type", "password") },
			status: 400, code: "unsupported_grant_type", reason: "unsupported_grant_type"},
		// parameters well formed
		{name: "missing subject_token", form: func(e *env, f url.Values) { f.Del("subject_token") },
			status: 400, code: "invalid_request", reason: "missing_subject_token"},
		{name: "empty subject_token counts as absent", form: func(e *env, f url.Values) { f.Set("subject_token", "") },
			status: 400, code: "invalid_request", reason: "missing_subject_token"},
		{name: "missing subject_token_type", notExplained: "subject_token_type", form: func(e *env, f url.Values) { f.Del("subject_token_type") },
			status: 400, code: "invalid_request", reason: "bad_subject_token_type"},
		{name: "unknown subject_token_type", notExplained: "subject_token_type", form: func(e *env, f url.Values) {
			f.Set("subject_token_type", "urn:ietf:params:oauth:token-type:access_token")
		}, status: 400, code: "invalid_request", reason: "bad_subject_token_type"},
		{name: "no target", form: func(e *env, f url.Values) { f.Del("audience") }, status: 400, code: "invalid_request", reason: "missing_target"},
		{name: "repeated subject_token", notExplained: "a repeated parameter", form: func(e *env, f url.Values) { f.Add("subject_token", f.Get("subject_token")) },
			status: 400, code: "invalid_request", reason: "malformed_request"},
		{name: "repeated scope", notExplained: "a repeated parameter", form: func(e *env, f url.Values) { f.Add("scope", "orders:read"); f.Add("scope", "orders:read") },
			status: 400, code: "invalid_request", reason: "malformed_request"},
		{name: "actor_token", notExplained: "actor_token", form: func(e *env, f url.Values) {
			f.Set("actor_token", "x")
			f.Set("actor_token_type", envelope.JWTTokenType)
		}, status: 400, code: "invalid_request", reason: "malformed_request"},
		{name: "requested_token_type saml", notExplained: "requested_token_type", form: func(e *env, f url.Values) {
			f.Set("requested_token_type", "urn:ietf:params:oauth:token-type:saml2")
		}, status: 400, code: "invalid_request", reason: "bad_requested_token_type"},
		{name: "subject_token over 8 KiB", form: func(e *env, f url.Values) {
			f.Set("subject_token", strings.Repeat("a", 8193))
		}, status: 400, code: "invalid_request", reason: "subject_token_too_large"},
		// envelope valid
		{name: "envelope expired", token: func(e *env) string {
			tok := e.envelope(clientID, nil)
			e.clock.Advance(3 * time.Minute)
			return tok
		}, status: 400, code: "invalid_request", reason: "envelope_expired"},
		{name: "envelope for another issuer", env: func(c *envelope.Claims) { c.Audience = envelope.Audience{"https://elsewhere"} },
			status: 400, code: "invalid_request", reason: "envelope_audience_mismatch"},
		{name: "envelope signed by another client", token: func(e *env) string {
			c := e.claims(clientID)
			tok, err := e.signers[otherID].Sign(c) // right iss, wrong key
			if err != nil {
				e.t.Fatal(err)
			}
			return tok
		}, status: 400, code: "invalid_request", reason: "envelope_unknown_kid"},
		{name: "envelope of another client", token: func(e *env) string { return e.envelope(otherID, nil) },
			status: 400, code: "invalid_request", reason: "envelope_unknown_kid"},
		{name: "envelope lifetime over the client maximum", env: func(c *envelope.Claims) {
			c.IssuedAt = time.Now()
			c.ExpiresAt = c.IssuedAt.Add(10 * time.Minute)
		}, status: 400, code: "invalid_request", reason: "envelope_lifetime_too_long"},
		{name: "envelope with alg none", token: func(e *env) string { return unsigned(e.claims(clientID)) },
			status: 400, code: "invalid_request", reason: "envelope_bad_format"},
		{name: "tenant not allowed for the client", env: func(c *envelope.Claims) { c.Actor.Tenant = "globex" },
			status: 400, code: "invalid_request", reason: "tenant_not_allowed"},
		{name: "act chain too deep", env: func(c *envelope.Claims) {
			c.Act = &envelope.Act{Sub: "a1", Act: &envelope.Act{Sub: "a2", Act: &envelope.Act{Sub: "a3", Act: &envelope.Act{Sub: "a4"}}}}
		}, status: 400, code: "invalid_request", reason: "act_chain_too_deep"},
		// target
		{name: "unknown audience", form: func(e *env, f url.Values) { f.Set("audience", "nope_api") },
			status: 400, code: "invalid_target", reason: "unknown_audience"},
		{name: "unknown resource", form: func(e *env, f url.Values) { f.Del("audience"); f.Set("resource", "https://nope.example") },
			status: 400, code: "invalid_target", reason: "unknown_resource"},
		{name: "audience and resource name different audiences", form: func(e *env, f url.Values) {
			f.Set("audience", billingAPI)
			f.Set("resource", ordersURI)
		}, status: 400, code: "invalid_target", reason: "conflicting_targets"},
		{name: "two audiences", notExplained: "two audience values", form: func(e *env, f url.Values) { f.Add("audience", billingAPI) },
			status: 400, code: "invalid_target", reason: "conflicting_targets"},
		{name: "audience not in delegation.allowed", env: func(c *envelope.Claims) { c.Delegation.Allowed = []string{billingAPI} },
			status: 400, code: "invalid_target", reason: "audience_not_in_envelope"},
		{name: "audience not allowed for the client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-narrow", AllowedAudiences: []string{billingAPI}})
			e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-narrow"})
		}, token: func(e *env) string { return e.envelope("mcp-narrow", nil) },
			send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-narrow", f) }, client: "mcp-narrow",
			status: 400, code: "invalid_target", reason: "audience_not_allowed_for_client"},
		// mode allowed by the audience and the client
		{name: "restricted_user on an audience that does not list it", env: func(c *envelope.Claims) {
			c.Delegation.Mode = envelope.ModeRestrictedUser
		}, form: func(e *env, f url.Values) { f.Set("audience", billingAPI) }, status: 400, code: "invalid_request", reason: "mode_not_allowed_for_audience"},
		{name: "mode not allowed for the client", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-obo", AllowedModes: []string{envelope.ModeOnBehalfOf}})
			e.addGrant(&storage.Grant{Subject: userSub, ClientID: "mcp-obo"})
		}, token: func(e *env) string {
			return e.envelope("mcp-obo", func(c *envelope.Claims) { c.Delegation.Mode = envelope.ModeServiceIdentity })
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-obo", f) }, client: "mcp-obo",
			status: 400, code: "invalid_request", reason: "mode_not_allowed_for_client"},
		// user actor: an active grant exists …
		{name: "no grant for this user", env: func(c *envelope.Claims) { c.Actor.Sub = "user_999" },
			status: 400, code: "invalid_request", reason: "no_active_grant"},
		{name: "grant pinned to another agent", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_pinned", AgentID: "agent_other"})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_pinned" }, status: 400, code: "invalid_request", reason: "no_active_grant"},
		{name: "grant not yet valid", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_later", NotBefore: time.Now().Add(time.Hour), ExpiresAt: time.Now().Add(2 * time.Hour)})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_later" }, status: 400, code: "invalid_request", reason: "no_active_grant"},
		// … and covers this audience and mode
		{name: "grant does not cover the audience", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_b", Audiences: []string{billingAPI}})
		}, env: func(c *envelope.Claims) { c.Actor.Sub = "user_b" }, status: 400, code: "invalid_target", reason: "grant_does_not_cover_audience_or_mode"},
		{name: "grant does not cover the mode", setup: func(e *env) {
			e.addGrant(&storage.Grant{Subject: "user_obo", Modes: []string{envelope.ModeOnBehalfOf}})
		}, env: func(c *envelope.Claims) {
			c.Actor.Sub = "user_obo"
			c.Delegation.Mode = envelope.ModeRestrictedUser
		}, status: 400, code: "invalid_target", reason: "grant_does_not_cover_audience_or_mode"},
		// service actor: service_identity only, the client's own limits
		{name: "service actor in on_behalf_of", token: func(e *env) string {
			c := e.claims(clientID)
			c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
			return e.rawEnvelope(clientID, c)
		}, status: 400, code: "invalid_request", reason: "envelope_bad_value"},
		{name: "service actor, client allows no audience", env: func(c *envelope.Claims) {
			c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
			c.Delegation.Mode = envelope.ModeServiceIdentity
		}, status: 400, code: "invalid_target", reason: "audience_not_allowed_for_client"},
		{name: "service actor * is never an actor", token: func(e *env) string {
			c := e.claims(clientID)
			c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "*", Tenant: tenant}
			c.Delegation.Mode = envelope.ModeServiceIdentity
			return e.rawEnvelope(clientID, c)
		}, status: 400, code: "invalid_request", reason: "envelope_bad_value"},
		// The review's hole: narrowing lists alone must not let a client name any actor.
		{name: "service actor not in the client's service_actors", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-svc", AllowedAudiences: []string{ordersAPI}, AllowedScopes: []string{"orders:read"},
				AllowedTenants: []string{tenant}, ServiceActors: []string{"nightly-batch"}})
		}, token: func(e *env) string {
			return e.envelope("mcp-svc", func(c *envelope.Claims) {
				c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: userSub, Tenant: tenant}
				c.Delegation.Mode = envelope.ModeServiceIdentity
			})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-svc", f) }, client: "mcp-svc",
			status: 400, code: "invalid_request", reason: "service_actor_not_allowed"},
		{name: "service actor, client allows no tenant", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-svc", AllowedAudiences: []string{ordersAPI}, AllowedScopes: []string{"orders:read"},
				ServiceActors: []string{"batch"}})
		}, token: func(e *env) string {
			return e.envelope("mcp-svc", func(c *envelope.Claims) {
				c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: "globex"}
				c.Delegation.Mode = envelope.ModeServiceIdentity
			})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-svc", f) }, client: "mcp-svc",
			status: 400, code: "invalid_request", reason: "service_actor_not_allowed"},
		{name: "service actor, client allows no scope", setup: func(e *env) {
			e.addClient(&storage.Client{ID: "mcp-svc", AllowedAudiences: []string{ordersAPI},
				AllowedTenants: []string{tenant}, ServiceActors: []string{"batch"}})
		}, token: func(e *env) string {
			return e.envelope("mcp-svc", func(c *envelope.Claims) {
				c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
				c.Delegation.Mode = envelope.ModeServiceIdentity
			})
		}, send: func(e *env, f url.Values) *response { return e.post("/oauth2/token", "mcp-svc", f) }, client: "mcp-svc",
			status: 400, code: "invalid_scope", reason: "no_effective_scope"},
		// scopes
		{name: "requested scope outside the effective set", form: func(e *env, f url.Values) { f.Set("scope", "orders:read orders:delete") },
			status: 400, code: "invalid_scope", reason: "scope_not_allowed"},
		{name: "requested scope of another audience", form: func(e *env, f url.Values) { f.Set("scope", "billing:read") },
			status: 400, code: "invalid_scope", reason: "scope_not_allowed"},
		{name: "no effective scope", env: func(c *envelope.Claims) { c.Authorization.Scopes = []string{"billing:read"} },
			status: 400, code: "invalid_scope", reason: "no_effective_scope"},
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
			// Explain is asked the same question first (it writes nothing) and must give the
			// endpoint's answer, refused at this row's step.
			var x *exchange.Explanation
			if rw.notExplained == "" {
				x = explainRow(t, e, rw.client, f)
			}
			var r *response
			if rw.send != nil {
				r = rw.send(e, f)
			} else {
				r = e.post("/oauth2/token", clientID, f)
			}
			wantError(t, r, rw.status, rw.code)
			if got := r.str("reason"); got != rw.reason {
				t.Errorf("reason %q, want %q", got, rw.reason)
			}
			if x != nil {
				wantExplainedRefusal(t, x, r)
			}
			if rw.status == 401 && rw.send != nil && r.header.Get("WWW-Authenticate") == "" &&
				rw.name != "no credentials" && rw.name != "secret method mismatch: basic client uses post" {
				t.Errorf("401 after Basic without WWW-Authenticate")
			}
			// A refusal before the client was authenticated is nobody's: counted in the
			// address's aggregated record, with the reason, and no record of its own.
			if rw.status == 401 {
				items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange})
				if err != nil || len(items) != 0 {
					t.Fatalf("records of a request that failed client authentication: %+v, %v", items, err)
				}
				if err := e.handler.RecordAuthFailures(context.Background(), true); err != nil {
					t.Fatal(err)
				}
				items, _, err = e.store.ListAudit(context.Background(), storage.AuditFilter{Event: authz.EventClientAuthFailed})
				if err != nil || len(items) != 1 || items[0].ClientID != "" || items[0].RemoteAddr != "127.0.0.1" ||
					!strings.Contains(string(items[0].Detail), `"count":1`) || !strings.Contains(string(items[0].Detail), rw.reason) {
					t.Fatalf("aggregated records %+v, %v; want one counting this failure", items, err)
				}
				return
			}
			// Every other refused token request is audited with its reason.
			if rw.code != "unsupported_grant_type" {
				items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange})
				if err != nil {
					t.Fatal(err)
				}
				if len(items) != 1 || items[0].Outcome != storage.OutcomeDenied || items[0].Reason != rw.reason {
					t.Fatalf("audit = %+v, want one denied record with reason %s", items, rw.reason)
				}
				if strings.Contains(string(items[0].Detail), tok) {
					t.Errorf("audit holds the subject token")
				}
			}
		})
	}
}

// explainRow asks Explain what the endpoint would decide on the form, sent as client.
func explainRow(t *testing.T, e *env, client string, f url.Values) *exchange.Explanation {
	t.Helper()
	if client == "" {
		client = clientID
	}
	x, err := e.svc.Explain(context.Background(), exchange.ExplainRequest{
		ClientID: client, SubjectToken: f.Get("subject_token"), Audience: f.Get("audience"),
		Resource: f.Get("resource"), Scopes: strings.Fields(f.Get("scope")),
	})
	if err != nil {
		t.Fatalf("Explain: %v", err)
	}
	return x
}

// stepOfReason is the decision table's row each reason belongs to.
var stepOfReason = map[string]string{
	"client_authentication_failed": exchange.StepClient,
	"grant_type_not_allowed":       exchange.StepGrantType,
	"missing_subject_token":        exchange.StepParameters, "missing_target": exchange.StepParameters,
	"subject_token_too_large": exchange.StepParameters,
	"envelope_unknown_kid":    exchange.StepSignature, "envelope_bad_format": exchange.StepSignature,
	"envelope_expired": exchange.StepEnvelope, "envelope_audience_mismatch": exchange.StepEnvelope,
	"envelope_lifetime_too_long": exchange.StepEnvelope, "envelope_bad_value": exchange.StepEnvelope,
	"tenant_not_allowed": exchange.StepEnvelope, "act_chain_too_deep": exchange.StepEnvelope,
	"envelope_alg_not_allowed": exchange.StepSignature, "envelope_wrong_type": exchange.StepSignature,
	"envelope_bad_signature": exchange.StepSignature, "envelope_not_yet_valid": exchange.StepEnvelope,
	"envelope_missing_member": exchange.StepEnvelope, "envelope_issuer_mismatch": exchange.StepEnvelope,
	"envelope_client_mismatch": exchange.StepEnvelope,
	"unknown_audience":         exchange.StepTarget, "unknown_resource": exchange.StepTarget,
	"conflicting_targets": exchange.StepTarget, "audience_not_in_envelope": exchange.StepTarget,
	"audience_not_allowed_for_client": exchange.StepTarget,
	"mode_not_allowed_for_audience":   exchange.StepMode, "mode_not_allowed_for_client": exchange.StepMode,
	"no_active_grant": exchange.StepGrant, "grant_does_not_cover_audience_or_mode": exchange.StepGrant,
	"service_actor_not_allowed": exchange.StepGrant,
	"envelope_replayed":         exchange.StepIssuance,
	"scope_not_allowed":         exchange.StepScopes, "no_effective_scope": exchange.StepScopes,
}

// wantExplainedRefusal holds an explanation to the endpoint's refusal r: the same error and
// reason, refused at the reason's step, every step before it passed, every one after skipped.
func wantExplainedRefusal(t *testing.T, x *exchange.Explanation, r *response) {
	t.Helper()
	if x.Decision != exchange.DecisionRefused || x.Refusal == nil || x.Refusal.Code != r.str("error") || x.Refusal.Reason != r.str("reason") ||
		x.Refusal.Description != r.str("error_description") {
		t.Fatalf("explain: %s %+v; the endpoint answered %s", x.Decision, x.Refusal, r.raw)
	}
	if x.Refusal.UserMayConsent != (r.str("grant_request_endpoint") != "") {
		t.Fatalf("explain: user may consent %v; the endpoint answered %s", x.Refusal.UserMayConsent, r.raw)
	}
	want, ok := stepOfReason[x.Refusal.Reason]
	if !ok {
		t.Fatalf("no step known for reason %s", x.Refusal.Reason)
	}
	outcome := exchange.OutcomePassed
	for _, s := range x.Steps {
		switch {
		case s.Name == want:
			if s.Outcome != exchange.OutcomeRefused {
				t.Fatalf("explain: step %s %s, want refused", s.Name, s.Outcome)
			}
			outcome = exchange.OutcomeSkipped
		case s.Outcome != outcome:
			t.Fatalf("explain: step %s %s, want %s (refused at %s)", s.Name, s.Outcome, outcome, want)
		}
	}
	if outcome != exchange.OutcomeSkipped {
		t.Fatalf("explain: no step refused")
	}
}

// wantExplainedGrant holds an explanation to the endpoint's token answer r: granted, with the
// scopes, lifetime and claims (but for the jti) the token carries.
func (e *env) wantExplainedGrant(t *testing.T, x *exchange.Explanation, r *response) {
	t.Helper()
	if x.Decision != exchange.DecisionGranted {
		t.Fatalf("explain: %s %+v; the endpoint answered %s", x.Decision, x.Refusal, r.raw)
	}
	issued := e.wantToken(t, r)
	if got := strings.Join(x.Scopes, " "); got != r.str("scope") {
		t.Errorf("scope: endpoint %q, explain %q", r.str("scope"), got)
	}
	if got, _ := r.body["expires_in"].(float64); int64(got) != int64(x.Lifetime/time.Second) {
		t.Errorf("expires_in: endpoint %v, explain %s", got, x.Lifetime)
	}
	if issued.JTI == "" {
		t.Fatal("issued token without jti")
	}
	issued.JTI = ""
	// Explain was asked first, on the running clock: the endpoint's iat may fall in the next
	// second (or, on a slow run, the one after), with exp moved by as much. Everything
	// else is equal.
	want := *x.Claims
	if shift := issued.IssuedAt - want.IssuedAt; shift >= 0 && shift <= 2 && issued.ExpiresAt-want.ExpiresAt == shift {
		want.IssuedAt, want.ExpiresAt = issued.IssuedAt, issued.ExpiresAt
	}
	if !reflect.DeepEqual(&issued, &want) {
		t.Errorf("claims:\n endpoint %+v\n explain  %+v", issued, *x.Claims)
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

// TestRefusalAfterSignatureRecordsIdentities: once an envelope's signature has verified, its
// claims are the client's own statement, so a refusal by a later check is audited with the
// identities they name (SPEC §8), not as an anonymous denial.
func TestRefusalAfterSignatureRecordsIdentities(t *testing.T) {
	e := newEnv(t, openSQLite(t))
	c := e.claims(clientID)
	c.Actor = envelope.Actor{Type: envelope.ActorService, Sub: "batch", Tenant: tenant}
	c.Session = envelope.Session{ID: "sess_svc", TraceID: "trace_svc"}
	c.IssuedAt, c.ExpiresAt, c.JTI, c.Agent.ClientID = e.clock.Now(), e.clock.Now().Add(time.Minute), "eie_svc", clientID
	r := e.post("/oauth2/token", clientID, exchangeForm(e.rawEnvelope(clientID, c), ordersAPI))
	wantError(t, r, 400, "invalid_request")
	items, _, err := e.store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 {
		t.Fatalf("audit = %+v, want one record", items)
	}
	got := items[0]
	if got.Reason != "envelope_bad_value" || got.ActorType != envelope.ActorService || got.ActorSub != "batch" ||
		got.Tenant != tenant || got.AgentID != agentID || got.TraceID != "trace_svc" || got.SessionID != "sess_svc" ||
		got.DelegationMode != envelope.ModeOnBehalfOf || got.EnvelopeJTI != c.JTI {
		t.Errorf("audit record %+v lacks the envelope's identities", got)
	}

	// Before the signature verified, nothing the envelope says is recorded.
	forged := e.claims(clientID)
	forged.Actor.Sub = "ceo"
	r = e.post("/oauth2/token", clientID, exchangeForm(unsigned(forged), ordersAPI))
	wantError(t, r, 400, "invalid_request")
	items, _, err = e.store.ListAudit(context.Background(), storage.AuditFilter{Event: exchange.EventTokenExchange, ActorSub: "ceo"})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 0 {
		t.Errorf("an unsigned envelope's actor reached the audit log: %+v", items)
	}
}

// TestExplainAgreesOverHTTP: on granted exchanges through the whole token endpoint, Explain
// (asked first) names the scopes, lifetime and claims the token then carries; asked again
// after the grant, it says the envelope is used up for that audience, as the endpoint does.
func TestExplainAgreesOverHTTP(t *testing.T) {
	eachBackend(t, func(t *testing.T, store storage.Store) {
		e := newEnv(t, store)
		e.addAudience(&storage.Audience{ID: "short_api", Scopes: []string{"short:read"}, TokenTTL: 45 * time.Second,
			AllowedModes: []string{envelope.ModeRestrictedUser}})
		e.addGrant(&storage.Grant{Subject: "user_ru", Audiences: []string{"short_api"}, Scopes: []string{"short:read"},
			Modes: []string{envelope.ModeRestrictedUser}, ExpiresAt: e.clock.Now().Add(30 * time.Minute)})
		cases := []struct {
			name string
			env  func(c *envelope.Claims)
			form func(f url.Values)
		}{
			{name: "audience, all scopes"},
			{name: "resource, one scope requested", form: func(f url.Values) {
				f.Del("audience")
				f.Set("resource", ordersURI)
				f.Set("scope", "orders:write")
			}},
			{name: "restricted_user on an audience with a short TTL", env: func(c *envelope.Claims) {
				c.Actor.Sub, c.Delegation.Mode = "user_ru", envelope.ModeRestrictedUser
				c.Authorization.Scopes = []string{"short:read"}
			}, form: func(f url.Values) { f.Set("audience", "short_api") }},
			{name: "service_identity with an act chain", env: func(c *envelope.Claims) {
				c.Delegation.Mode = envelope.ModeServiceIdentity
				c.Act = &envelope.Act{Sub: "planner", ClientID: "upstream"}
			}, form: func(f url.Values) { f.Set("audience", billingAPI) }},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				f := exchangeForm(e.envelope(clientID, tc.env), ordersAPI)
				if tc.form != nil {
					tc.form(f)
				}
				x := explainRow(t, e, "", f)
				e.wantExplainedGrant(t, x, e.post("/oauth2/token", clientID, f))
				// Used up for this audience: both say so.
				x = explainRow(t, e, "", f)
				r := e.post("/oauth2/token", clientID, f)
				wantError(t, r, 400, "invalid_request")
				wantExplainedRefusal(t, x, r)
			})
		}
	})
}
