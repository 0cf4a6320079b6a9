package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

func TestAudiences(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		r := e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{
			"id": "orders_api", "name": "Orders", "resource_uris": []string{"https://orders.example.com/"},
			"scopes": []string{"orders:read", "orders:write"}, "allowed_modes": []string{"on_behalf_of"}, "token_ttl": 120,
		}})
		a := decode[Audience](t, r)
		if a.ID != "orders_api" || deref(a.TokenTTL) != 120 || len(a.Scopes) != 2 {
			t.Errorf("create answered %s", r.body)
		}
		if got, err := e.store.GetAudienceByResource(ctx, "https://orders.example.com/"); err != nil || got.ID != "orders_api" {
			t.Errorf("resource lookup: %v, %v", got, err)
		}
		e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "bare"}})
		if got := decode[Audience](t, e.must(200, req{method: "GET", path: "/admin/v1/audiences/bare", token: tokReader})); got.TokenTTL != nil || got.Scopes == nil {
			t.Errorf("bare audience: %+v", got)
		}

		// Conflicts: the id, or a resource URI another audience registered.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "orders_api"}}), 409)
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{
			"id": "copycat", "resource_uris": []string{"https://orders.example.com/"},
		}}), 409)
		for _, tc := range []struct {
			field string
			body  map[string]any
		}{
			{"resource_uris", map[string]any{"id": "x", "resource_uris": []string{"/relative"}}},
			{"resource_uris", map[string]any{"id": "x", "resource_uris": []string{"not a uri at all"}}},
			{"scopes.0", map[string]any{"id": "x", "scopes": []string{`quote"d`}}},
			{"token_ttl", map[string]any{"id": "x", "token_ttl": 0}},
			{"id", map[string]any{"name": "no id"}},
			{"allowed_modes.0", map[string]any{"id": "x", "allowed_modes": []string{"any"}}},
		} {
			wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: tc.body}), 400, tc.field)
		}
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{
			"id": "frag", "resource_uris": []string{"https://a.example/#frag"},
		}}), 400, "resource_uris")

		e.advance(time.Second)
		r = e.must(200, req{method: "PATCH", path: "/admin/v1/audiences/orders_api", token: tokAdmin, body: map[string]any{
			"scopes": []string{"orders:read"}, "resource_uris": []string{"https://orders.example.com/v2"},
		}})
		if a := decode[Audience](t, r); len(a.Scopes) != 1 || a.ResourceUris[0] != "https://orders.example.com/v2" || a.Name != "Orders" {
			t.Errorf("PATCH answered %s", r.body)
		}
		if _, err := e.store.GetAudienceByResource(ctx, "https://orders.example.com/"); err == nil {
			t.Error("the replaced resource URI still resolves")
		}
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/audiences/bare", token: tokAdmin, body: map[string]any{
			"resource_uris": []string{"https://orders.example.com/v2"},
		}}), 409)
		wantProblem(t, e.call(req{method: "PATCH", path: "/admin/v1/audiences/ghost", token: tokAdmin, body: map[string]any{"name": "x"}}), 404)

		list := decode[AudienceList](t, e.must(200, req{method: "GET", path: "/admin/v1/audiences", token: tokReader}))
		if len(list.Items) != 2 {
			t.Errorf("list: %+v", list)
		}
		e.must(204, req{method: "DELETE", path: "/admin/v1/audiences/bare", token: tokAdmin})
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/audiences/bare", token: tokAdmin}), 404)
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/audiences/orders_api", token: tokReader}), 403)

		for event, want := range map[string]int{EventAudienceCreate: 2, EventAudienceUpdate: 1, EventAudienceDelete: 1} {
			recs := e.auditEvents(event)
			if len(recs) != want {
				t.Errorf("%s: %d records, want %d", event, len(recs), want)
			}
			for _, rec := range recs {
				if rec.ClientID != "admin-cli" || rec.Audience == "" {
					t.Errorf("%s record %+v", event, rec)
				}
			}
		}
	})
}

// grantFixture registers a client and two audiences.
func grantFixture(t *testing.T, e *env) {
	t.Helper()
	e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "webapp"}})
	e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "orders", "scopes": []string{"orders:read"}}})
	e.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "billing", "scopes": []string{"billing:read"}}})
}

func TestGrants(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		grantFixture(t, e)
		now := e.clock()
		exp := now.Add(24 * time.Hour).Truncate(time.Second)
		r := e.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
			"tenant": "acme", "subject": "user_1", "client_id": "webapp", "audiences": []string{"orders", "billing"},
			"scopes": []string{"orders:read", "billing:read"}, "expires_at": exp,
		}})
		g := decode[Grant](t, r)
		if g.Status != "active" || g.CreatedBy != "admin-cli" || len(g.Modes) != 1 || g.Modes[0] != "on_behalf_of" ||
			!g.NotBefore.Equal(now.Truncate(time.Microsecond)) || !g.ExpiresAt.Equal(exp) || g.RevokedAt != nil {
			t.Errorf("create answered %s", r.body)
		}
		// The new grant is in force for the exchange.
		active, err := e.store.FindActiveGrants(context.Background(), storage.GrantQuery{Tenant: "acme", Subject: "user_1", ClientID: "webapp", Now: now.Add(time.Second)})
		if err != nil || len(active) != 1 || active[0].ID != g.ID {
			t.Errorf("FindActiveGrants: %v, %v", active, err)
		}
		// Every user of the tenant, one agent, a later start.
		r = e.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
			"tenant": "acme", "subject": "*", "client_id": "webapp", "agent_id": "agent_7", "audiences": []string{"orders"},
			"scopes": []string{"orders:read"}, "modes": []string{"service_identity", "restricted_user"},
			"not_before": now.Add(time.Hour), "expires_at": exp,
		}})
		wild := decode[Grant](t, r)
		if wild.Subject != "*" || deref(wild.AgentID) != "agent_7" || len(wild.Modes) != 2 {
			t.Errorf("wildcard grant %s", r.body)
		}

		bad := func(field string, body map[string]any) {
			t.Helper()
			base := map[string]any{"tenant": "acme", "subject": "u", "client_id": "webapp", "audiences": []string{"orders"},
				"scopes": []string{"orders:read"}, "expires_at": exp}
			for k, v := range body {
				if v == nil {
					delete(base, k)
				} else {
					base[k] = v
				}
			}
			wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: base}), 400, field)
		}
		bad("tenant", map[string]any{"tenant": ""})
		bad("subject", map[string]any{"subject": nil})
		bad("client_id", map[string]any{"client_id": "ghost"})
		bad("audiences", map[string]any{"audiences": []string{}})
		bad("audiences", map[string]any{"audiences": []string{"orders", "ghost"}})
		bad("scopes", map[string]any{"scopes": []string{"billing:read"}})
		bad("scopes", map[string]any{"scopes": []string{}})
		bad("modes.0", map[string]any{"modes": []string{"god_mode"}})
		bad("expires_at", map[string]any{"expires_at": now.Add(-time.Minute)})
		bad("expires_at", map[string]any{"not_before": exp.Add(time.Hour)})
		bad("expires_at", map[string]any{"expires_at": "tomorrow"})
		bad("agent_id", map[string]any{"agent_id": ""})
		bad("id", map[string]any{"id": "chosen"})

		got := decode[Grant](t, e.must(200, req{method: "GET", path: "/admin/v1/grants/" + g.ID, token: tokReader}))
		if got.ID != g.ID || len(got.Audiences) != 2 {
			t.Errorf("GET %+v", got)
		}
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/grants/grt_missing", token: tokAdmin}), 404)

		// Revoke: 200 with the revoked grant, then 409; a read-only admin cannot.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", token: tokReader, body: map[string]any{"reason": "x"}}), 403)
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", token: tokAdmin, body: map[string]any{}}), 400, "reason")
		e.advance(time.Minute)
		r = e.must(200, req{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", token: tokAdmin, body: map[string]any{"reason": "user left"}})
		rv := decode[Grant](t, r)
		if rv.Status != "revoked" || rv.RevokedAt == nil || deref(rv.RevokedBy) != "admin-cli" || deref(rv.RevokeReason) != "user left" {
			t.Errorf("revoke answered %s", r.body)
		}
		p := wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", token: tokAdmin, body: map[string]any{"reason": "again"}}), 409)
		if deref(p.Detail) != "the grant is already revoked" {
			t.Errorf("409 detail %q", deref(p.Detail))
		}
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants/grt_missing/revoke", token: tokAdmin, body: map[string]any{"reason": "x"}}), 404)
		if again, _ := e.store.GetGrant(context.Background(), g.ID); again.RevokeReason != "user left" {
			t.Error("the second revoke changed the grant")
		}

		// Filters.
		list := func(q url.Values) []Grant {
			t.Helper()
			return decode[GrantList](t, e.must(200, req{method: "GET", path: "/admin/v1/grants?" + q.Encode(), token: tokReader})).Items
		}
		if l := list(url.Values{"status": {"revoked"}}); len(l) != 1 || l[0].ID != g.ID {
			t.Errorf("status=revoked: %+v", l)
		}
		if l := list(url.Values{"status": {"active"}}); len(l) != 1 || l[0].ID != wild.ID {
			t.Errorf("status=active: %+v", l)
		}
		if l := list(url.Values{"subject": {"*"}, "tenant": {"acme"}}); len(l) != 1 || l[0].ID != wild.ID {
			t.Errorf("subject=*: %+v", l)
		}
		if l := list(url.Values{"audience": {"billing"}}); len(l) != 1 || l[0].ID != g.ID {
			t.Errorf("audience=billing: %+v", l)
		}
		if l := list(url.Values{"client_id": {"webapp"}}); len(l) != 2 {
			t.Errorf("client_id=webapp: %+v", l)
		}
		if l := list(url.Values{"tenant": {"other"}}); len(l) != 0 {
			t.Errorf("tenant=other: %+v", l)
		}
		e.advance(48 * time.Hour)
		if l := list(url.Values{"status": {"expired"}}); len(l) != 1 || l[0].ID != wild.ID || l[0].Status != "expired" {
			t.Errorf("status=expired: %+v", l)
		}
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/grants?status=paused", token: tokAdmin}), 400, "status")
		p1 := decode[GrantList](t, e.must(200, req{method: "GET", path: "/admin/v1/grants?limit=1", token: tokAdmin}))
		if len(p1.Items) != 1 || p1.NextCursor == nil {
			t.Errorf("limit=1: %+v", p1)
		}

		creates, revokes := e.auditEvents(EventGrantCreate), e.auditEvents(EventGrantRevoke)
		if len(creates) != 2 || len(revokes) != 1 || revokes[0].GrantID != g.ID || revokes[0].Tenant != "acme" ||
			!bytes.Contains(revokes[0].Detail, []byte("user left")) {
			t.Errorf("grant audit: %+v / %+v", creates, revokes)
		}

		// Deleting the client revokes its grants, which stay for the audit trail (SPEC §7); a
		// grant revoked before keeps its own revocation.
		e.advance(time.Minute)
		e.must(204, req{method: "DELETE", path: "/admin/v1/clients/webapp", token: tokAdmin})
		kept := decode[Grant](t, e.must(200, req{method: "GET", path: "/admin/v1/grants/" + g.ID, token: tokAdmin}))
		if kept.Status != GrantStatusRevoked || deref(kept.RevokeReason) != "user left" {
			t.Errorf("a grant revoked before its client was deleted: %+v", kept)
		}
		w := decode[Grant](t, e.must(200, req{method: "GET", path: "/admin/v1/grants/" + wild.ID, token: tokAdmin}))
		if w.Status != GrantStatusRevoked || deref(w.RevokeReason) != RevokeReasonClientDeleted ||
			deref(w.RevokedBy) != "admin-cli" || w.RevokedAt == nil || !w.RevokedAt.Equal(e.clock().Truncate(time.Microsecond)) {
			t.Errorf("the active grant of a deleted client: %+v, want revoked by admin-cli for %s", w, RevokeReasonClientDeleted)
		}
		deletes := e.auditEvents(EventClientDelete)
		var detail struct {
			GrantsRevoked int `json:"grants_revoked"`
		}
		if len(deletes) == 1 {
			_ = json.Unmarshal(deletes[0].Detail, &detail)
		}
		if len(deletes) != 1 || detail.GrantsRevoked != 1 {
			t.Errorf("client delete audit: %+v", deletes)
		}
		// A grant for the deleted client is refused.
		wantProblem(t, e.call(req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
			"tenant": "acme", "subject": "u", "client_id": "webapp", "audiences": []string{"orders"}, "scopes": []string{"orders:read"},
			"expires_at": e.clock().Add(time.Hour).Format(time.RFC3339)}}), 400, "client_id")
	})
}

func TestKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		l := decode[KeyList](t, e.must(200, req{method: "GET", path: "/admin/v1/keys", token: tokReader}))
		if len(l.Items) != 0 {
			t.Errorf("keys before rotation: %+v", l)
		}
		k1 := decode[Key](t, e.must(200, req{method: "POST", path: "/admin/v1/keys/rotate", token: tokAdmin}))
		e.advance(time.Hour)
		k2 := decode[Key](t, e.must(200, req{method: "POST", path: "/admin/v1/keys/rotate", token: tokAdmin}))
		e.advance(time.Hour)
		e.must(200, req{method: "POST", path: "/admin/v1/keys/rotate", token: tokAdmin})
		l = decode[KeyList](t, e.must(200, req{method: "GET", path: "/admin/v1/keys", token: tokReader}))
		if len(l.Items) != 3 || l.Items[0].Kid != k1.Kid || l.Items[0].Status != "retired" || l.Items[0].RemoveAt == nil ||
			l.Items[1].Kid != k2.Kid || l.Items[1].Status != "active" || l.Items[2].Status != "next" {
			t.Errorf("keys: %+v", l.Items)
		}
		recs := e.auditEvents(EventKeysRotate)
		if len(recs) != 3 || !bytes.Contains(recs[2].Detail, []byte(k1.Kid)) {
			t.Errorf("rotation audit: %+v", recs)
		}
	})
}

func TestAuditList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		base := e.clock().Truncate(time.Microsecond)
		for i, rec := range []storage.AuditRecord{
			{Event: "token_exchange", Outcome: "granted", ClientID: "webapp", ActorSub: "u1", AgentID: "a1", Tenant: "acme", Audience: "orders", TraceID: "t1",
				RequestedScopes: []string{"orders:read"}, GrantedScopes: []string{"orders:read"}, TokenJTI: "j1"},
			{Event: "token_exchange", Outcome: "denied", Reason: "no_grant", ClientID: "webapp", ActorSub: "u2", Tenant: "acme", Audience: "orders", TraceID: "t2"},
			{Event: "client_credentials", Outcome: "granted", ClientID: "svc", Tenant: "beta", TraceID: "t3",
				Audience: "https://mandate.example.com"}, // a client_credentials token's audience is the issuer
		} {
			rec.ID = storage.NewID("evt")
			rec.Time = base.Add(time.Duration(i) * time.Minute)
			if err := e.store.AppendAudit(ctx, &rec); err != nil {
				t.Fatal(err)
			}
		}
		list := func(q url.Values) AuditList {
			t.Helper()
			return decode[AuditList](t, e.must(200, req{method: "GET", path: "/admin/v1/audit?" + q.Encode(), token: tokReader}))
		}
		all := list(nil)
		if len(all.Items) != 3 || all.Items[0].Event != "client_credentials" || all.Items[2].TokenJti == nil {
			t.Fatalf("newest first: %+v", all.Items)
		}
		for q, want := range map[string]int{
			"outcome=denied": 1, "client_id=webapp": 2, "actor_sub=u1": 1, "agent_id=a1": 1, "tenant=beta": 1,
			"audience=orders": 2, "audience=" + url.QueryEscape("https://mandate.example.com"): 1, "trace_id=t2": 1, "event=token_exchange": 2, "event=admin.client.create": 0,
			"since=" + url.QueryEscape(base.Add(time.Minute).Format(time.RFC3339Nano)): 2,
			"until=" + url.QueryEscape(base.Add(time.Minute).Format(time.RFC3339Nano)): 1,
		} {
			v, _ := url.ParseQuery(q)
			if got := list(v); len(got.Items) != want {
				t.Errorf("%s: %d records, want %d", q, len(got.Items), want)
			}
		}
		p1 := list(url.Values{"limit": {"2"}})
		if len(p1.Items) != 2 || p1.NextCursor == nil {
			t.Fatalf("page 1: %+v", p1)
		}
		p2 := list(url.Values{"limit": {"2"}, "cursor": {*p1.NextCursor}})
		if len(p2.Items) != 1 || p2.Items[0].ID == p1.Items[1].ID || p2.NextCursor != nil {
			t.Errorf("page 2: %+v", p2)
		}
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/audit?since=yesterday", token: tokAdmin}), 400, "since")
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/audit?outcome=maybe&limit=501", token: tokAdmin}), 400, "outcome", "limit")
		wantProblem(t, e.call(req{method: "GET", path: "/admin/v1/audit?cursor=zzz", token: tokAdmin}), 400, "cursor")
	})
}
