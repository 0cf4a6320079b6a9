package api

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A 400 or 409 keeps its own detail: "no such client" is for 404 only.
func TestProblemDetailKeepsItsCause(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		pub, _ := testJWKs(t, "k")
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "keyed", "token_endpoint_auth_method": "private_key_jwt", "jwks": map[string]any{"keys": []any{pub}},
		}})
		p := wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/clients/keyed/secret", token: tokAdmin}), 409)
		if deref(p.Detail) != errNoSecret.detail {
			t.Errorf("409 detail %q, want %q", deref(p.Detail), errNoSecret.detail)
		}
		p = wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/keyed", token: tokAdmin, body: map[string]any{
			"jwks": map[string]any{"keys": []any{}},
		}}), 400, "token_endpoint_auth_method")
		if deref(p.Detail) != "the request has invalid fields" {
			t.Errorf("400 detail %q", deref(p.Detail))
		}
		p = wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/clients/ghost", token: tokAdmin, body: map[string]any{"name": "x"}}), 404)
		if deref(p.Detail) != "no such client" {
			t.Errorf("404 detail %q", deref(p.Detail))
		}
	})
}

// Calls the spec gives no request body ignore one, so their answers stay the ones listed
// for them (a 413 is listed only where a body belongs).
func TestBodylessCallsIgnoreBodies(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		big := strings.Repeat("x", maxBodyBytes+1)
		e.must(200, req{method: "GET", path: "/admin/v1/clients", token: tokReader, body: big, contentType: "text/plain"})
		e.must(200, req{method: "GET", path: "/admin/v1/keys", token: tokReader, body: big})
		e.must(200, req{method: "POST", path: "/admin/v1/keys/rotate", token: tokAdmin, body: big})
		// Where a body belongs the limit holds.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: big}), 413)
	})
}

// Text the schema lets through but no store keeps (NUL, invalid UTF-8) is a 400 naming the
// field, not a 500 from the database; so is data after the body's JSON value.
func TestTextStoresCanKeep(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		grantFixture(t, e)
		exp := e.clock().Add(time.Hour).Format(time.RFC3339Nano)
		for _, tc := range []struct {
			r     req
			field string
		}{
			{req{method: "POST", path: "/admin/v1/clients", body: `{"client_id":"nul","name":"a\u0000b"}`}, "name"},
			{req{method: "PATCH", path: "/admin/v1/clients/webapp", body: `{"allowed_tenants":["ok","a\u0000"]}`}, "allowed_tenants.1"},
			{req{method: "POST", path: "/admin/v1/grants", body: `{"tenant":"a\u0000","subject":"u","client_id":"webapp","audiences":["orders"],"scopes":["orders:read"],"expires_at":"` + exp + `"}`}, "tenant"},
			{req{method: "POST", path: "/admin/v1/audiences", body: `{"id":"nul","scopes":["s"],"name":"\u0000"}`}, "name"},
			{req{method: "POST", path: "/admin/v1/clients", body: `{"client_id":"twice"} {"client_id":"again"}`}, "body"},
			{req{method: "POST", path: "/admin/v1/clients", body: `{"client_id":"tail"} garbage`}, "body"},
			{req{method: "GET", path: "/admin/v1/grants?tenant=a%00"}, "tenant"},
			{req{method: "GET", path: "/admin/v1/audit?actor_sub=a%00"}, "actor_sub"},
			{req{method: "GET", path: "/admin/v1/audit?tenant=%ff"}, "tenant"},
			{req{method: "GET", path: "/admin/v1/audit?event=%ff%fe"}, "event"},
			{req{method: "GET", path: "/admin/v1/audit?audience=https://a%00b"}, "audience"},
		} {
			tc.r.token = tokAdmin
			wantProblem(t, e.call(tc.r), 400, tc.field)
		}
		for _, id := range []string{"nul", "twice", "tail"} {
			if _, err := e.store.GetClient(ctx, id); err == nil {
				t.Errorf("a rejected create stored client %q", id)
			}
		}
		if c, _ := e.store.GetClient(ctx, "webapp"); len(c.AllowedTenants) != 0 {
			t.Errorf("a rejected PATCH changed the client: %v", c.AllowedTenants)
		}
		// Escaped backslashes and ordinary Unicode are fine.
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: `{"client_id":"fine","name":"a\\u0000 ü ✓"}`})
		if c, _ := e.store.GetClient(ctx, "fine"); c.Name != `a\u0000 ü ✓` {
			t.Errorf("name stored as %q", c.Name)
		}
	})
}

// An audience that active grants name is not deleted: 409, and the grants keep what they name.
func TestDeleteAudienceInUse(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		grantFixture(t, e)
		g := decode[Grant](t, e.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
			"tenant": "acme", "subject": "u", "client_id": "webapp", "audiences": []string{"orders"},
			"scopes": []string{"orders:read"}, "expires_at": e.clock().Add(time.Hour),
		}}))
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/audiences/orders", token: tokAdmin}), 409)
		if _, err := e.store.GetAudience(ctx, "orders"); err != nil {
			t.Fatalf("a refused delete removed the audience: %v", err)
		}
		if n := len(e.auditEvents(EventAudienceDelete)); n != 0 {
			t.Errorf("%d delete records for a refused delete", n)
		}
		// An audience no grant names goes at once; a missing one is still 404.
		e.must(204, req{method: "DELETE", path: "/admin/v1/audiences/billing", token: tokAdmin})
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/audiences/ghost", token: tokAdmin}), 404)
		// Once its grants are revoked (or expired) it can go.
		e.must(200, req{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", token: tokAdmin, body: map[string]any{"reason": "done"}})
		e.must(204, req{method: "DELETE", path: "/admin/v1/audiences/orders", token: tokAdmin})

		e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "short", "scopes": []string{"s"}}})
		e.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
			"tenant": "acme", "subject": "u", "client_id": "webapp", "audiences": []string{"short"},
			"scopes": []string{"s"}, "expires_at": e.clock().Add(time.Minute),
		}})
		e.advance(2 * time.Minute)
		e.must(204, req{method: "DELETE", path: "/admin/v1/audiences/short", token: tokAdmin})
	})
}
