package api

import (
	"context"
	"errors"
	"testing"

	"github.com/mandatehq/mandate/storage"
)

// auditFails wraps a real store so that appending audit records fails: fault injection, to
// show a change never commits without its record.
type auditFails struct{ storage.Store }

var errAuditDown = errors.New("audit log unavailable")

func (a auditFails) AppendAudit(context.Context, *storage.AuditRecord) error { return errAuditDown }

func (a auditFails) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	return a.Store.InTx(ctx, func(tx storage.Store) error { return fn(auditFails{tx}) })
}

func TestNoChangeWithoutItsAuditRecord(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			real := b.open(t)
			good := newEnv(t, real)
			good.must(201, req{method: "POST", path: "/admin/v1/clients", token: tokAdmin, body: map[string]any{"client_id": "kept"}})
			good.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "aud", "scopes": []string{"s"}}})
			good.must(201, req{method: "POST", path: "/admin/v1/audiences", token: tokAdmin, body: map[string]any{"id": "spare"}})
			g := decode[Grant](t, good.must(201, req{method: "POST", path: "/admin/v1/grants", token: tokAdmin, body: map[string]any{
				"tenant": "t", "subject": "u", "client_id": "kept", "audiences": []string{"aud"}, "scopes": []string{"s"},
				"expires_at": good.clock().Add(3600e9),
			}}))

			e := newEnv(t, auditFails{real})
			for _, r := range []req{
				{method: "POST", path: "/admin/v1/clients", body: map[string]any{"client_id": "lost"}},
				{method: "PATCH", path: "/admin/v1/clients/kept", body: map[string]any{"name": "changed"}},
				{method: "POST", path: "/admin/v1/clients/kept/secret"},
				{method: "DELETE", path: "/admin/v1/audiences/spare"},
				{method: "POST", path: "/admin/v1/grants/" + g.ID + "/revoke", body: map[string]any{"reason": "x"}},
			} {
				r.token = tokAdmin
				wantProblem(t, e.call(r), 500)
			}
			if _, err := real.GetClient(ctx, "lost"); !errors.Is(err, storage.ErrNotFound) {
				t.Error("a create committed without its audit record")
			}
			if c, _ := real.GetClient(ctx, "kept"); c.Name != "" || c.PreviousSecretHash != nil {
				t.Error("an update or rotation committed without its audit record")
			}
			if _, err := real.GetAudience(ctx, "spare"); err != nil {
				t.Error("a delete committed without its audit record")
			}
			if got, _ := real.GetGrant(ctx, g.ID); !got.RevokedAt.IsZero() {
				t.Error("a revocation committed without its audit record")
			}
		})
	}
}
