package api

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// SPEC §7: the last enabled client holding mandate:admin (with the client_credentials grant
// that gets it a token) cannot be deleted or disabled, nor lose that scope or grant type.
func TestLastAdminClientIsKept(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		admin := func(id string) {
			e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
				"client_id": id, "grant_types": []string{GrantTypeClientCredentials},
				"allowed_scopes": []string{ScopeAdmin, ScopeAdminRead}}})
		}
		admin("admin-a")
		admin("admin-b")
		// A read-only admin does not count: it cannot undo anything.
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{
			"client_id": "reader", "grant_types": []string{GrantTypeClientCredentials}, "allowed_scopes": []string{ScopeAdminRead}}})

		e.must(204, req{method: "DELETE", path: "/admin/v1/clients/admin-a", token: tokAdmin})
		path := "/admin/v1/clients/admin-b"
		for name, r := range map[string]req{
			"delete":              {method: "DELETE", path: path, token: tokAdmin},
			"disable":             {method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"disabled": true}},
			"drop mandate:admin":  {method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"allowed_scopes": []string{ScopeAdminRead}}},
			"drop the grant type": {method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"grant_types": []string{GrantTypeTokenExchange}}},
		} {
			p := wantProblem(t, e.call(r), 409)
			if p.Detail == nil || !strings.Contains(*p.Detail, "last enabled client") {
				t.Errorf("%s: detail %v", name, p.Detail)
			}
		}
		// Changes that keep it an admin go through.
		e.must(200, req{method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"name": "renamed",
			"allowed_scopes": []string{ScopeAdmin, "other"}, "disabled": false}})
		// With a second admin, the first may go.
		admin("admin-c")
		e.must(200, req{method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"disabled": true}})
		wantProblem(t, e.call(req{method: "DELETE", path: "/admin/v1/clients/admin-c", token: tokAdmin}), 409)
		e.must(200, req{method: "PATCH", path: path, token: tokAdmin, body: map[string]any{"disabled": false}})
		e.must(204, req{method: "DELETE", path: "/admin/v1/clients/admin-c", token: tokAdmin})

		// Two concurrent deletions of the last two: exactly one succeeds.
		admin("admin-d")
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, id := range []string{"admin-b", "admin-d"} {
			wg.Go(func() {
				codes[i] = e.call(req{method: "DELETE", path: "/admin/v1/clients/" + id, token: tokAdmin}).status
			})
		}
		wg.Wait()
		if !(codes[0] == 204 && codes[1] == 409) && !(codes[0] == 409 && codes[1] == 204) {
			t.Errorf("concurrent deletions of the last two admins answered %v, want one 204 and one 409", codes)
		}
	})
}

// Disabling a client records when; enabling it again keeps that time, so its earlier tokens
// stay inactive.
func TestDisablingRecordsWhen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		e.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "c"}})
		e.advance(time.Minute)
		e.must(200, req{method: "PATCH", path: "/admin/v1/clients/c", token: tokAdmin, body: map[string]any{"disabled": true}})
		at := e.clock().Truncate(time.Microsecond)
		e.advance(time.Minute)
		e.must(200, req{method: "PATCH", path: "/admin/v1/clients/c", token: tokAdmin, body: map[string]any{"disabled": true}})
		e.must(200, req{method: "PATCH", path: "/admin/v1/clients/c", token: tokAdmin, body: map[string]any{"disabled": false}})
		c, err := e.store.GetClient(context.Background(), "c")
		if err != nil {
			t.Fatal(err)
		}
		if c.Disabled || !c.DisabledAt.Equal(at) {
			t.Errorf("after disable, disable again, enable: disabled %v since %s, want enabled, last disabled %s", c.Disabled, c.DisabledAt, at)
		}
	})
}

// SPEC §7: bootstrap happens once per store. A deleted mandate-admin stays deleted, whatever
// a later start is given.
func TestBootstrapOncePerStore(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			m, _ := secret.NewMaster(strings.Repeat("m", 32))
			h := secret.NewHasher(m)
			store := b.open(t)
			if _, created, err := Bootstrap(ctx, store, h, "", time.Now()); err != nil || !created {
				t.Fatalf("first bootstrap: %v, %v", created, err)
			}
			if err := store.DeleteClient(ctx, AdminClientID); err != nil {
				t.Fatal(err)
			}
			preset := strings.Repeat("p", 40)
			sec, created, err := Bootstrap(ctx, store, h, preset, time.Now())
			if err != nil || created || sec != "" {
				t.Errorf("bootstrap after mandate-admin was deleted: %q, %v, %v; want nothing created", sec, created, err)
			}
			if _, err := store.GetClient(ctx, AdminClientID); err == nil {
				t.Error("mandate-admin came back")
			}
			if _, err := store.GetMarker(ctx, storage.MarkerBootstrap); err != nil {
				t.Errorf("no bootstrap marker: %v", err)
			}
		})
	}
}
