package sqlite

import (
	"context"
	"database/sql"
	"slices"

	"github.com/mandatehq/mandate/storage"
)

// audienceSelect reads an audience with its resource URIs in one statement. The URIs come
// back sorted: their order carries no meaning.
const audienceSelect = `SELECT a.id, a.name, a.scopes, a.allowed_modes, a.token_ttl_seconds,
	a.user_consent, a.max_consent_duration_seconds, a.created_at, a.updated_at,
	(SELECT json_group_array(uri) FROM (SELECT r.uri FROM audience_resources r
		WHERE r.audience_id = a.id ORDER BY r.uri))
	FROM audiences a`

func scanAudience(r rowScanner) (*storage.Audience, error) {
	var a storage.Audience
	err := r.Scan(&a.ID, &a.Name, listCol{&a.Scopes}, listCol{&a.AllowedModes},
		secondsCol{&a.TokenTTL}, &a.UserConsent, secondsCol{&a.MaxConsentDuration},
		timeCol{&a.CreatedAt}, timeCol{&a.UpdatedAt},
		listCol{&a.ResourceURIs})
	if err != nil {
		return nil, mapErr(err)
	}
	slices.Sort(a.ResourceURIs) // the subquery's order is not a promise of SQLite's
	return &a, nil
}

// CreateAudience implements storage.AudienceStore.
func (s *Store) CreateAudience(ctx context.Context, a *storage.Audience) error {
	return s.withTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO audiences
			(id, name, scopes, allowed_modes, token_ttl_seconds, user_consent,
			max_consent_duration_seconds, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.ID, a.Name, list(a.Scopes), list(a.AllowedModes), seconds(a.TokenTTL), a.UserConsent,
			seconds(a.MaxConsentDuration), micros(a.CreatedAt), micros(a.UpdatedAt))
		if err != nil {
			return mapErr(err)
		}
		return insertResources(ctx, tx, a.ID, a.ResourceURIs)
	})
}

// insertResources registers uris for the audience; a URI another audience holds is a
// conflict. Repeats within uris are the caller's slip, not a conflict, so they are dropped.
func insertResources(ctx context.Context, tx *sql.Tx, audienceID string, uris []string) error {
	uris = slices.Clone(uris)
	slices.Sort(uris)
	for _, uri := range slices.Compact(uris) {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO audience_resources (uri, audience_id) VALUES (?, ?)`, uri, audienceID)
		if err != nil {
			return mapErr(err)
		}
	}
	return nil
}

// GetAudience implements storage.AudienceStore.
func (s *Store) GetAudience(ctx context.Context, id string) (*storage.Audience, error) {
	return getAudience(ctx, s.reader(), id)
}

func getAudience(ctx context.Context, q querier, id string) (*storage.Audience, error) {
	return scanAudience(q.QueryRowContext(ctx, audienceSelect+` WHERE a.id = ?`, id))
}

// GetAudienceByResource implements storage.AudienceStore.
func (s *Store) GetAudienceByResource(ctx context.Context, uri string) (*storage.Audience, error) {
	return scanAudience(s.reader().QueryRowContext(ctx, audienceSelect+`
		JOIN audience_resources ar ON ar.audience_id = a.id WHERE ar.uri = ?`, uri))
}

// ListAudiences implements storage.AudienceStore, ordered by id.
func (s *Store) ListAudiences(ctx context.Context, p storage.Page) ([]storage.Audience, string, error) {
	after, err := p.AfterID("audiences")
	if err != nil {
		return nil, "", err
	}
	limit := p.EffectiveLimit()
	rows, err := s.reader().QueryContext(ctx, audienceSelect+`
		WHERE a.id > ? ORDER BY a.id LIMIT ?`, after, limit+1)
	if err != nil {
		return nil, "", mapErr(err)
	}
	items, err := collect(rows, scanAudience)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(x *storage.Audience) string { return storage.EncodeCursor("audiences", x.ID) })
	return items, next, nil
}

// UpdateAudience implements storage.AudienceStore. The resource URIs are replaced by what fn
// leaves; the id cannot be changed.
func (s *Store) UpdateAudience(ctx context.Context, id string, fn func(*storage.Audience) error) (*storage.Audience, error) {
	var out *storage.Audience
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		a, err := getAudience(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE audiences SET name = ?, scopes = ?, allowed_modes = ?,
			token_ttl_seconds = ?, user_consent = ?, max_consent_duration_seconds = ?,
			created_at = ?, updated_at = ? WHERE id = ?`,
			a.Name, list(a.Scopes), list(a.AllowedModes), seconds(a.TokenTTL), a.UserConsent,
			seconds(a.MaxConsentDuration), micros(a.CreatedAt), micros(a.UpdatedAt), id)
		if err != nil {
			return mapErr(err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM audience_resources WHERE audience_id = ?`, id); err != nil {
			return mapErr(err)
		}
		if err := insertResources(ctx, tx, id, a.ResourceURIs); err != nil {
			return err
		}
		out, err = getAudience(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteAudience implements storage.AudienceStore; its resource URIs go with it.
func (s *Store) DeleteAudience(ctx context.Context, id string) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `DELETE FROM audiences WHERE id = ?`, id))
}
