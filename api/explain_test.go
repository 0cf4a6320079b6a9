package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// explainFixture registers, through the API, client webapp (with an envelope key), audience
// orders_api and a grant letting webapp act for alice toward it with orders:read. It returns
// the client's envelope signer.
func explainFixture(t *testing.T, e *env) *envelope.Signer {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := jwk.Import(priv.Public())
	_ = pub.Set(jwk.KeyIDKey, "webapp-1")
	signer, err := envelope.NewSigner(priv, "webapp-1")
	if err != nil {
		t.Fatal(err)
	}
	signer.Now = e.clock
	e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
		"client_id": "webapp", "jwks": map[string]any{"keys": []any{pub}}, "allowed_tenants": []string{"acme"},
	}})
	e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{
		"id": "orders_api", "resource_uris": []string{"https://orders.example.com/"}, "scopes": []string{"orders:read", "orders:write"},
	}})
	e.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
		"tenant": "acme", "subject": "alice", "client_id": "webapp", "audiences": []string{"orders_api"},
		"scopes": []string{"orders:read"}, "expires_at": e.clock().Add(24 * time.Hour).Format(time.RFC3339),
	}})
	return signer
}

func whatIf(e *env, edit func(c map[string]any)) map[string]any {
	now := e.clock()
	c := map[string]any{
		"iss": "webapp", "aud": testIssuer, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": "what-if-1",
		"actor":         map[string]any{"type": "user", "sub": "alice", "tenant": "acme"},
		"agent":         map[string]any{"id": "support-agent", "client_id": "webapp"},
		"session":       map[string]any{"id": "sess_1"},
		"authorization": map[string]any{"scopes": []string{"orders:read", "orders:write"}},
		"delegation":    map[string]any{"mode": "on_behalf_of"},
	}
	if edit != nil {
		edit(c)
	}
	return c
}

func stepNamed(t *testing.T, x Explanation, name string) ExplainStep {
	t.Helper()
	for _, s := range x.Steps {
		if string(s.Name) == name {
			return s
		}
	}
	t.Fatalf("no step %s in %+v", name, x.Steps)
	return ExplainStep{}
}

// POST /explain answers the decision with every step, with a read-only token, and changes
// nothing but its own audit record, which never holds the subject token.
func TestExplain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		signer := explainFixture(t, e)
		before := len(e.auditEvents(""))

		// A signed envelope, asked by a read-only admin: granted, every step passed.
		tok, err := signer.Sign(envelope.Claims{Issuer: "webapp", Audience: envelope.Audience{testIssuer},
			Actor: envelope.Actor{Type: "user", Sub: "alice", Tenant: "acme"}, Agent: envelope.Agent{ID: "support-agent"},
			Session: envelope.Session{ID: "s1"}, Authorization: envelope.Authorization{Scopes: []string{"orders:read"}},
			Delegation: envelope.Delegation{Mode: "on_behalf_of"}})
		if err != nil {
			t.Fatal(err)
		}
		r := e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokReader, body: map[string]any{
			"client_id": "webapp", "subject_token": tok, "resource": "https://orders.example.com/",
		}})
		x := decode[Explanation](t, r)
		if x.Decision != "granted" || x.Error != nil || x.WhatIf || deref(x.Audience) != "orders_api" || deref(x.ExpiresIn) != 300 ||
			x.Scopes == nil || strings.Join(*x.Scopes, " ") != "orders:read" || len(x.Steps) != 11 || len(x.Grants) != 1 || !x.Grants[0].Chosen {
			t.Fatalf("explanation %s", r.body)
		}
		var claims map[string]any
		if x.Claims == nil || json.Unmarshal(*x.Claims, &claims) != nil || claims["sub"] != "alice" || claims["aud"] != "orders_api" {
			t.Fatalf("claims %s", r.body)
		}
		if _, ok := claims["jti"]; ok {
			t.Errorf("explained claims carry a jti: %s", *x.Claims)
		}
		if s := stepNamed(t, x, "envelope_signature"); s.Outcome != "passed" || !strings.Contains(s.Detail, `"webapp-1"`) {
			t.Errorf("signature step %+v", s)
		}

		// A what-if: alice's agent asking for orders:write is refused at the scopes step, and
		// the grant says what it lacks.
		r = e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokReader, body: map[string]any{
			"client_id": "webapp", "claims": whatIf(e, nil), "audience": "orders_api", "scope": "orders:write",
		}})
		x = decode[Explanation](t, r)
		if x.Decision != "refused" || x.Error == nil || x.Error.Error != "invalid_scope" || x.Error.Reason != "scope_not_allowed" ||
			!x.WhatIf || stepNamed(t, x, "envelope_signature").Outcome != "skipped" || stepNamed(t, x, "scopes").Outcome != "refused" ||
			stepNamed(t, x, "issuance").Outcome != "skipped" || x.Claims != nil || x.ExpiresIn != nil {
			t.Fatalf("what-if explanation %s", r.body)
		}
		if g := x.Grants[0]; g.Matched || !strings.Contains(strings.Join(g.Why, " "), "requested [orders:write] not in the effective scopes [orders:read]") {
			t.Errorf("grant report %+v", g)
		}
		var env map[string]any
		if x.Envelope == nil || json.Unmarshal(*x.Envelope, &env) != nil || env["jti"] != "what-if-1" {
			t.Errorf("envelope %s", r.body)
		}

		// at: a day on, the grant has expired.
		later := e.clock().Add(25 * time.Hour).Truncate(time.Second)
		r = e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokAdmin, body: map[string]any{
			"client_id": "webapp", "audience": "orders_api", "at": later.Format(time.RFC3339),
			"claims": whatIf(e, func(c map[string]any) { c["iat"], c["exp"] = later.Unix(), later.Add(time.Minute).Unix() }),
		}})
		x = decode[Explanation](t, r)
		if x.Error == nil || x.Error.Reason != exchange.ReasonNoActiveGrant || !x.At.Equal(later) || x.Grants[0].InForce ||
			x.Grants[0].Grant.Status != "expired" {
			t.Fatalf("at +25h: %s", r.body)
		}

		// An unknown client is the endpoint's failed authentication.
		x = decode[Explanation](t, e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokReader, body: map[string]any{
			"client_id": "nobody", "claims": whatIf(e, nil), "audience": "orders_api",
		}}))
		if x.Error == nil || x.Error.Error != "invalid_client" || stepNamed(t, x, "client").Outcome != "refused" {
			t.Errorf("unknown client: %+v", x.Error)
		}

		// Nothing was exchanged: the envelope is still unused, no token was recorded.
		if n := len(e.auditEvents(exchange.EventTokenExchange)); n != 0 {
			t.Errorf("%d token_exchange records", n)
		}
		recs := e.auditEvents(EventExplain)
		if len(recs) != 4 || len(e.auditEvents(""))-before != 4 {
			t.Fatalf("%d admin.explain records (%d in all), want 4", len(recs), len(e.auditEvents(""))-before)
		}
		// The test's clock stands still, so the records share their time and their order is
		// their ids' (random within a millisecond): find them by reason, not position.
		byReason := map[string]*storage.AuditRecord{}
		for i := range recs {
			byReason[recs[i].Reason] = &recs[i]
		}
		first := byReason["granted"]
		if first == nil {
			t.Fatalf("no admin.explain record of the granted what-if: %+v", recs)
		}
		var detail map[string]any
		_ = json.Unmarshal(first.Detail, &detail)
		if first.ClientID != "reader-cli" || first.Audience != "orders_api" || first.Reason != "granted" || first.ActorSub != "alice" ||
			detail["client_id"] != "webapp" || detail["decision"] != "granted" || detail["resource"] != "https://orders.example.com/" {
			t.Errorf("audit record %+v detail %s", first, first.Detail)
		}
		for _, want := range []string{"scope_not_allowed", exchange.ReasonNoActiveGrant, "client_authentication_failed"} {
			if byReason[want] == nil {
				t.Errorf("no admin.explain record with reason %q: %+v", want, recs)
			}
		}
		for _, rec := range recs {
			if strings.Contains(string(rec.Detail), tok) || strings.Contains(string(rec.Detail), tok[strings.LastIndexByte(tok, '.')+1:]) {
				t.Errorf("an admin.explain record holds the subject token")
			}
		}
	})
}

func TestExplainBadRequests(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		explainFixture(t, e)
		for _, tc := range []struct {
			body  map[string]any
			field string
		}{
			{map[string]any{"claims": map[string]any{}, "audience": "orders_api"}, "client_id"},
			{map[string]any{"client_id": "webapp", "subject_token": "a.b.c", "claims": map[string]any{}}, "claims"},
			{map[string]any{"client_id": "webapp", "claims": "not an object"}, "claims"},
			{map[string]any{"client_id": "webapp", "at": "yesterday"}, "at"},
			{map[string]any{"client_id": "webapp", "extra": true}, "extra"},
		} {
			wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/explain", token: tokReader, body: tc.body}), 400, tc.field)
		}
		// An admin token without either admin scope may not ask.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/explain", token: tokOther,
			body: map[string]any{"client_id": "webapp"}}), 403)
		// Neither envelope nor claims: the endpoint's refusal of a missing subject_token.
		x := decode[Explanation](t, e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokReader,
			body: map[string]any{"client_id": "webapp", "audience": "orders_api"}}))
		if x.Error == nil || x.Error.Reason != exchange.ReasonMissingSubjectToken || stepNamed(t, x, "parameters").Outcome != "refused" {
			t.Errorf("no subject token: %+v", x.Error)
		}
		// Over 8 KiB: the endpoint's own refusal, at the parameters step.
		x = decode[Explanation](t, e.must(200, req{method: "POST", path: "/admin/v1/explain", token: tokReader,
			body: map[string]any{"client_id": "webapp", "audience": "orders_api", "subject_token": strings.Repeat("a", 8193)}}))
		if x.Error == nil || x.Error.Reason != exchange.ReasonSubjectTokenTooLarge || stepNamed(t, x, "parameters").Outcome != "refused" {
			t.Errorf("oversized subject token: %+v", x.Error)
		}
		if n := len(e.auditEvents(EventExplain)); n != 2 {
			t.Errorf("%d admin.explain records, want 2 (refused calls are not explained)", n)
		}
	})
}
