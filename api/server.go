package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// server implements the generated StrictServerInterface.
type server struct {
	store   storage.Store
	hasher  *secret.Hasher
	keys    KeyAdmin
	explain Explainer
	decider GrantRequestDecider
	log     *slog.Logger
	now     func() time.Time // UTC, microseconds: what the stores keep

	allowLoopbackJWKS bool // http:// jwks_uri on loopback hosts (development)
}

var _ StrictServerInterface = (*server)(nil)

// Admin audit events.
const (
	EventBootstrap          = "admin.bootstrap"
	EventClientCreate       = "admin.client.create"
	EventClientUpdate       = "admin.client.update"
	EventClientDelete       = "admin.client.delete"
	EventClientSecretRotate = "admin.client.secret.rotate"
	EventAudienceCreate     = "admin.audience.create"
	EventAudienceUpdate     = "admin.audience.update"
	EventAudienceDelete     = "admin.audience.delete"
	EventGrantCreate        = "admin.grant.create"
	EventGrantRevoke        = "admin.grant.revoke"
	EventKeysRotate         = "admin.keys.rotate"
)

// audit appends the record of an admin change through tx, the change's own transaction.
// rec carries the ids worth filtering by; detail says what changed.
func (s *server) audit(ctx context.Context, tx storage.Store, event string, rec storage.AuditRecord, detail map[string]any) error {
	rec.ID = storage.NewID("evt")
	rec.Time = s.now()
	rec.Event = event
	rec.Outcome = storage.OutcomeGranted
	rec.ClientID = principalFrom(ctx).ClientID
	rec.RemoteAddr = remoteAddrFrom(ctx)
	if detail != nil {
		b, err := json.Marshal(detail)
		if err != nil {
			return err
		}
		rec.Detail = b
	}
	return tx.AppendAudit(ctx, &rec)
}

// page turns the list parameters into a storage page.
func page(cursor *string, limit *int) storage.Page {
	var p storage.Page
	if cursor != nil {
		p.Cursor = *cursor
	}
	if limit != nil {
		p.Limit = *limit
	}
	return p
}

func nextCursor(next string) *string {
	if next == "" {
		return nil
	}
	return &next
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func ptrIf[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

func timeIf(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func secondsIf(d time.Duration) *int {
	if d <= 0 {
		return nil
	}
	s := int(d / time.Second)
	return &s
}

func seconds(n int) time.Duration { return time.Duration(n) * time.Second }

// orEmpty keeps JSON lists as [] rather than null.
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func modesOut(s []string) []Mode {
	out := make([]Mode, len(s))
	for i, m := range s {
		out[i] = Mode(m)
	}
	return out
}

func modesIn(s []Mode) []string {
	out := make([]string, len(s))
	for i, m := range s {
		out[i] = string(m)
	}
	return out
}

// copyList copies s so a stored record never aliases a request's slice.
func copyList(s []string) []string { return append([]string{}, s...) }
