package postgres

import (
	"context"
	"slices"

	"github.com/mandatehq/mandate/storage"
)

// audienceSelect reads an audience with its resource URIs in one statement. The URIs come
// back sorted: their order carries no meaning.
const audienceSelect = `SELECT a.id, a.name, a.scopes, a.allowed_modes, a.token_ttl_seconds,
	a.user_consent, a.max_consent_duration_seconds, a.created_at, a.updated_at,
	ARRAY(SELECT r.uri FROM audience_resources r WHERE r.audience_id = a.id)
	FROM audiences a`

func scanAudience(r rowScanner) (*storage.Audience, error) {
	var a storage.Audience
	err := r.Scan(&a.ID, &a.Name, &a.Scopes, &a.AllowedModes, secondsCol{&a.TokenTTL},
		&a.UserConsent, secondsCol{&a.MaxConsentDuration}, timeCol{&a.CreatedAt},
		timeCol{&a.UpdatedAt}, &a.ResourceURIs)
	if err != nil {
		return nil, mapErr(err)
	}
	nilEmpty(&a.Scopes, &a.AllowedModes, &a.ResourceURIs)
	slices.Sort(a.ResourceURIs) // in Go: byte order, whatever the column's collation
	return &a, nil
}

// resources is uris as stored: sorted, repeats dropped (a caller's slip, not a conflict).
func resources(uris []string) []string {
	uris = slices.Clone(uris)
	slices.Sort(uris)
	return list(slices.Compact(uris))
}

// CreateAudience implements storage.AudienceStore in one statement: the audience row and its
// resource URIs go in together or not at all.
func (s *Store) CreateAudience(ctx context.Context, a *storage.Audience) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `WITH a AS (
				INSERT INTO audiences
					(id, name, scopes, allowed_modes, token_ttl_seconds, user_consent,
					max_consent_duration_seconds, created_at, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
				RETURNING id
			)
			INSERT INTO audience_resources (uri, audience_id)
			SELECT u, a.id FROM a, unnest($10::text[]) AS u`,
			a.ID, a.Name, list(a.Scopes), list(a.AllowedModes), seconds(a.TokenTTL), a.UserConsent,
			seconds(a.MaxConsentDuration), ts(a.CreatedAt), ts(a.UpdatedAt), resources(a.ResourceURIs))
		return mapErr(err)
	})
}

// GetAudience implements storage.AudienceStore.
func (s *Store) GetAudience(ctx context.Context, id string) (*storage.Audience, error) {
	return scanAudience(s.db.QueryRow(ctx, audienceSelect+` WHERE a.id = $1`, id))
}

// GetAudienceByResource implements storage.AudienceStore.
func (s *Store) GetAudienceByResource(ctx context.Context, uri string) (*storage.Audience, error) {
	return scanAudience(s.db.QueryRow(ctx, audienceSelect+`
		JOIN audience_resources ar ON ar.audience_id = a.id WHERE ar.uri = $1`, uri))
}

// ListAudiences implements storage.AudienceStore, ordered by id.
func (s *Store) ListAudiences(ctx context.Context, p storage.Page) ([]storage.Audience, string, error) {
	after, err := p.AfterID("audiences")
	if err != nil {
		return nil, "", err
	}
	limit := p.EffectiveLimit()
	rows, err := s.db.Query(ctx, audienceSelect+` WHERE a.id > $1 ORDER BY a.id LIMIT $2`,
		after, limit+1)
	items, err := collect(rows, err, scanAudience)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(a *storage.Audience) string { return storage.EncodeCursor("audiences", a.ID) })
	return items, next, nil
}

// UpdateAudience implements storage.AudienceStore. The audience row stays locked from the read
// to the write; the resource URIs are replaced by what fn leaves. The id cannot be changed.
func (s *Store) UpdateAudience(ctx context.Context, id string, fn func(*storage.Audience) error) (*storage.Audience, error) {
	var out *storage.Audience
	err := s.atomic(ctx, func(q querier) error {
		a, err := scanAudience(q.QueryRow(ctx, audienceSelect+` WHERE a.id = $1 FOR UPDATE OF a`, id))
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		_, err = q.Exec(ctx, `UPDATE audiences SET name = $2, scopes = $3, allowed_modes = $4,
			token_ttl_seconds = $5, user_consent = $6, max_consent_duration_seconds = $7,
			created_at = $8, updated_at = $9 WHERE id = $1`,
			id, a.Name, list(a.Scopes), list(a.AllowedModes), seconds(a.TokenTTL), a.UserConsent,
			seconds(a.MaxConsentDuration), ts(a.CreatedAt), ts(a.UpdatedAt))
		if err != nil {
			return mapErr(err)
		}
		// Two statements, not one: a statement's sub-commands share one snapshot, so an
		// INSERT could not count on a DELETE beside it to have freed a URI it keeps.
		if _, err := q.Exec(ctx, `DELETE FROM audience_resources WHERE audience_id = $1`, id); err != nil {
			return mapErr(err)
		}
		if _, err := q.Exec(ctx, `INSERT INTO audience_resources (uri, audience_id)
			SELECT u, $1 FROM unnest($2::text[]) AS u`, id, resources(a.ResourceURIs)); err != nil {
			return mapErr(err)
		}
		out, err = scanAudience(q.QueryRow(ctx, audienceSelect+` WHERE a.id = $1`, id))
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteAudience implements storage.AudienceStore; its resource URIs go with it.
func (s *Store) DeleteAudience(ctx context.Context, id string) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `DELETE FROM audiences WHERE id = $1`, id))
	})
}
