package api

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/mandatehq/mandate/storage"
)

const modeOnBehalfOf = "on_behalf_of"

func (s *server) ListGrants(ctx context.Context, req ListGrantsRequestObject) (ListGrantsResponseObject, error) {
	p := req.Params
	items, next, err := s.store.ListGrants(ctx, storage.GrantFilter{
		Tenant:   deref(p.Tenant),
		Subject:  deref(p.Subject),
		ClientID: deref(p.ClientID),
		Audience: deref(p.Audience),
		Status:   string(deref(p.Status)),
		Now:      s.now(),
		Page:     page(p.Cursor, p.Limit),
	})
	if err != nil {
		return nil, err
	}
	now := s.now()
	ids := make([]string, len(items))
	for i := range items {
		ids[i] = items[i].ID
	}
	consents, err := s.store.GetConsents(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := ListGrants200JSONResponse{Items: make([]Grant, 0, len(items)), NextCursor: nextCursor(next)}
	for i := range items {
		out.Items = append(out.Items, grantOut(&items[i], now, consentOf(consents, items[i].ID)))
	}
	return out, nil
}

func (s *server) GetGrant(ctx context.Context, req GetGrantRequestObject) (GetGrantResponseObject, error) {
	g, err := s.store.GetGrant(ctx, req.GrantID)
	if err != nil {
		return nil, withDetail(err, "no such grant")
	}
	consents, err := s.store.GetConsents(ctx, []string{g.ID})
	if err != nil {
		return nil, err
	}
	return GetGrant200JSONResponse(grantOut(g, s.now(), consentOf(consents, g.ID))), nil
}

func (s *server) CreateGrant(ctx context.Context, req CreateGrantRequestObject) (CreateGrantResponseObject, error) {
	b := req.Body
	now := s.now()
	g := &storage.Grant{
		ID:        storage.NewID("grt"),
		Tenant:    b.Tenant,
		Subject:   b.Subject,
		ClientID:  b.ClientID,
		AgentID:   deref(b.AgentID),
		Audiences: copyList(b.Audiences),
		Scopes:    copyList(b.Scopes),
		Modes:     []string{modeOnBehalfOf},
		NotBefore: now,
		ExpiresAt: b.ExpiresAt.UTC().Truncate(time.Microsecond),
		CreatedBy: principalFrom(ctx).ClientID,
		CreatedAt: now,
	}
	if b.Modes != nil {
		g.Modes = modesIn(*b.Modes)
	}
	if b.NotBefore != nil {
		g.NotBefore = b.NotBefore.UTC().Truncate(time.Microsecond)
	}
	var v validation
	if g.Tenant == "" {
		v.add("tenant", "is required")
	}
	if g.Subject == "" {
		v.add("subject", "is required")
	}
	if !g.ExpiresAt.After(g.NotBefore) {
		v.add("expires_at", "must be after not_before")
	}
	if !g.ExpiresAt.After(now) {
		v.add("expires_at", "must be in the future")
	}
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		// Checked in the transaction, so the grant names records that exist when it commits.
		if _, err := tx.GetClient(ctx, g.ClientID); errors.Is(err, storage.ErrNotFound) {
			v.add("client_id", "no such client")
		} else if err != nil {
			return err
		}
		var defined []string
		allFound := true
		for _, id := range g.Audiences {
			a, err := tx.GetAudience(ctx, id)
			if errors.Is(err, storage.ErrNotFound) {
				v.add("audiences", "no such audience %q", id)
				allFound = false
				continue
			} else if err != nil {
				return err
			}
			defined = append(defined, a.Scopes...)
		}
		if allFound {
			for _, sc := range g.Scopes {
				if !slices.Contains(defined, sc) {
					v.add("scopes", "scope %q is not defined on any of the grant's audiences", sc)
				}
			}
		}
		if err := v.err(); err != nil {
			return err
		}
		if err := tx.CreateGrant(ctx, g); errors.Is(err, storage.ErrNotFound) {
			// The client was deleted since the check above.
			return invalidField("client_id", "no such client")
		} else if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventGrantCreate, grantAudit(g), map[string]any{
			"grant_id": g.ID, "client_id": g.ClientID, "tenant": g.Tenant, "subject": g.Subject,
			"audiences": g.Audiences, "scopes": g.Scopes, "modes": g.Modes,
		})
	})
	if err != nil {
		return nil, err
	}
	return CreateGrant201JSONResponse(grantOut(g, now, nil)), nil
}

func (s *server) RevokeGrant(ctx context.Context, req RevokeGrantRequestObject) (RevokeGrantResponseObject, error) {
	now := s.now()
	var revoked *storage.Grant
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		var err error
		revoked, err = tx.RevokeGrant(ctx, req.GrantID, principalFrom(ctx).ClientID, req.Body.Reason, now)
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventGrantRevoke, grantAudit(revoked),
			map[string]any{"grant_id": revoked.ID, "client_id": revoked.ClientID, "reason": req.Body.Reason})
	})
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, withDetail(err, "no such grant")
	case errors.Is(err, storage.ErrConflict):
		return nil, withDetail(err, "the grant is already revoked")
	case err != nil:
		return nil, err
	}
	consents, err := s.store.GetConsents(ctx, []string{revoked.ID})
	if err != nil {
		return nil, err
	}
	return RevokeGrant200JSONResponse(grantOut(revoked, now, consentOf(consents, revoked.ID))), nil
}

// grantAudit fills the audit columns an admin filters grant changes by.
func grantAudit(g *storage.Grant) storage.AuditRecord {
	return storage.AuditRecord{GrantID: g.ID, Tenant: g.Tenant, ActorSub: g.Subject, AgentID: g.AgentID}
}

func grantOut(g *storage.Grant, now time.Time, c *storage.ConsentRecord) Grant {
	out := Grant{
		ID:           g.ID,
		Tenant:       g.Tenant,
		Subject:      g.Subject,
		ClientID:     g.ClientID,
		AgentID:      ptrIf(g.AgentID),
		Audiences:    orEmpty(g.Audiences),
		Scopes:       orEmpty(g.Scopes),
		Modes:        modesOut(g.Modes),
		NotBefore:    g.NotBefore.UTC(),
		ExpiresAt:    g.ExpiresAt.UTC(),
		CreatedBy:    g.CreatedBy,
		CreatedAt:    g.CreatedAt.UTC(),
		Status:       GrantStatus(g.Status(now)),
		RevokedAt:    timeIf(g.RevokedAt),
		RevokedBy:    ptrIf(g.RevokedBy),
		RevokeReason: ptrIf(g.RevokeReason),
		Consent:      consentOut(c),
	}
	return out
}
