package api

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/mandatehq/mandate/storage"
)

func (s *server) ListAudiences(ctx context.Context, req ListAudiencesRequestObject) (ListAudiencesResponseObject, error) {
	items, next, err := s.store.ListAudiences(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, err
	}
	out := ListAudiences200JSONResponse{Items: make([]Audience, 0, len(items)), NextCursor: nextCursor(next)}
	for i := range items {
		out.Items = append(out.Items, audienceOut(&items[i]))
	}
	return out, nil
}

func (s *server) GetAudience(ctx context.Context, req GetAudienceRequestObject) (GetAudienceResponseObject, error) {
	a, err := s.store.GetAudience(ctx, req.AudienceID)
	if err != nil {
		return nil, withDetail(err, "no such audience")
	}
	return GetAudience200JSONResponse(audienceOut(a)), nil
}

func (s *server) CreateAudience(ctx context.Context, req CreateAudienceRequestObject) (CreateAudienceResponseObject, error) {
	b := req.Body
	now := s.now()
	a := &storage.Audience{
		ID:           b.ID,
		Name:         deref(b.Name),
		ResourceURIs: copyList(deref(b.ResourceUris)),
		Scopes:       copyList(deref(b.Scopes)),
		AllowedModes: modesIn(deref(b.AllowedModes)),
		TokenTTL:     seconds(deref(b.TokenTTL)),
		UserConsent:  storage.ConsentAdminOnly,
		CreatedAt:    now,
		UpdatedAt:    now,
	}
	if b.UserConsent != nil {
		a.UserConsent = string(*b.UserConsent)
	}
	if b.MaxConsentDuration != nil {
		a.MaxConsentDuration = seconds(*b.MaxConsentDuration)
	}
	var v validation
	checkResourceURIs(&v, a.ResourceURIs)
	if err := v.err(); err != nil {
		return nil, err
	}
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateAudience(ctx, a); err != nil {
			return err
		}
		return s.audit(ctx, tx, EventAudienceCreate, storage.AuditRecord{Audience: a.ID},
			map[string]any{"audience_id": a.ID})
	})
	if err != nil {
		return nil, withDetail(err, "the id or one of the resource_uris is already registered")
	}
	return CreateAudience201JSONResponse(audienceOut(a)), nil
}

func (s *server) UpdateAudience(ctx context.Context, req UpdateAudienceRequestObject) (UpdateAudienceResponseObject, error) {
	b := req.Body
	var changed []string
	mark := func(name string, present bool) bool {
		if present {
			changed = append(changed, name)
		}
		return present
	}
	var updated *storage.Audience
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		changed = changed[:0]
		var err error
		updated, err = tx.UpdateAudience(ctx, req.AudienceID, func(a *storage.Audience) error {
			var v validation
			if mark("name", b.Name != nil) {
				a.Name = *b.Name
			}
			if mark("resource_uris", b.ResourceUris != nil) {
				a.ResourceURIs = copyList(*b.ResourceUris)
				checkResourceURIs(&v, a.ResourceURIs)
			}
			if mark("scopes", b.Scopes != nil) {
				a.Scopes = copyList(*b.Scopes)
			}
			if mark("allowed_modes", b.AllowedModes != nil) {
				a.AllowedModes = modesIn(*b.AllowedModes)
			}
			if mark("token_ttl", b.TokenTTL != nil) {
				a.TokenTTL = seconds(*b.TokenTTL)
			}
			if mark("user_consent", b.UserConsent != nil) {
				a.UserConsent = string(*b.UserConsent)
			}
			if mark("max_consent_duration", b.MaxConsentDuration != nil) {
				a.MaxConsentDuration = seconds(*b.MaxConsentDuration)
			}
			if err := v.err(); err != nil {
				return err
			}
			a.UpdatedAt = s.now()
			return nil
		})
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventAudienceUpdate, storage.AuditRecord{Audience: req.AudienceID},
			map[string]any{"audience_id": req.AudienceID, "changed": changed})
	})
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, withDetail(err, "no such audience")
	case errors.Is(err, storage.ErrConflict):
		return nil, withDetail(err, "one of the resource_uris is already registered by another audience")
	case err != nil:
		return nil, err
	}
	return UpdateAudience200JSONResponse(audienceOut(updated)), nil
}

func (s *server) DeleteAudience(ctx context.Context, req DeleteAudienceRequestObject) (DeleteAudienceResponseObject, error) {
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		// A grant names its audiences by id: deleting one that active grants still name
		// would leave them pointing at whatever audience is registered under that id next.
		inUse, _, err := tx.ListGrants(ctx, storage.GrantFilter{
			Audience: req.AudienceID, Status: storage.GrantActive, Now: s.now(), Page: storage.Page{Limit: 1},
		})
		if err != nil {
			return err
		}
		if len(inUse) > 0 {
			if _, err := tx.GetAudience(ctx, req.AudienceID); err != nil {
				return err
			}
			return errAudienceInUse
		}
		if err := tx.DeleteAudience(ctx, req.AudienceID); err != nil {
			return err
		}
		return s.audit(ctx, tx, EventAudienceDelete, storage.AuditRecord{Audience: req.AudienceID},
			map[string]any{"audience_id": req.AudienceID})
	})
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, withDetail(err, "no such audience")
		}
		return nil, err
	}
	return DeleteAudience204Response{}, nil
}

// checkResourceURIs: RFC 8707 §2 resource indicators are absolute URIs without a fragment.
func checkResourceURIs(v *validation, uris []string) {
	for i, s := range uris {
		u, err := url.Parse(s)
		switch {
		case err != nil || !u.IsAbs():
			v.add("resource_uris", "entry %d must be an absolute URI", i)
		case strings.Contains(s, "#"):
			v.add("resource_uris", "entry %d must not have a fragment", i)
		}
	}
}

func audienceOut(a *storage.Audience) Audience {
	return Audience{
		ID:           a.ID,
		Name:         a.Name,
		ResourceUris: orEmpty(a.ResourceURIs),
		Scopes:       orEmpty(a.Scopes),
		AllowedModes: modesOut(a.AllowedModes),
		TokenTTL:     secondsIf(a.TokenTTL),
		// Audiences stored before SPEC §11 read as admin_only with the default limit.
		UserConsent:        userConsentOut(a),
		MaxConsentDuration: int(a.ConsentDurationLimit() / time.Second),
		CreatedAt:          a.CreatedAt.UTC(),
		UpdatedAt:          a.UpdatedAt.UTC(),
	}
}

// userConsentOut reads an audience stored before SPEC §11 (no setting) as admin_only.
func userConsentOut(a *storage.Audience) UserConsent {
	if a.AllowsUserConsent() {
		return UserConsent(storage.ConsentAllowed)
	}
	return UserConsent(storage.ConsentAdminOnly)
}
