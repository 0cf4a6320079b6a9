package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

const grantCols = `id, tenant, subject, client_id, agent_id, audiences, scopes, modes, not_before,
	expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason`

func scanGrant(r rowScanner) (*storage.Grant, error) {
	var g storage.Grant
	err := r.Scan(&g.ID, &g.Tenant, &g.Subject, &g.ClientID, &g.AgentID, &g.Audiences,
		&g.Scopes, &g.Modes, timeCol{&g.NotBefore}, timeCol{&g.ExpiresAt}, &g.CreatedBy,
		timeCol{&g.CreatedAt}, timeCol{&g.RevokedAt}, &g.RevokedBy, &g.RevokeReason)
	if err != nil {
		return nil, mapErr(err)
	}
	nilEmpty(&g.Audiences, &g.Scopes, &g.Modes)
	return &g, nil
}

// CreateGrant implements storage.GrantStore in one statement. c share-locks the client row,
// so a concurrent DeleteClient either commits first (c comes back empty: ErrNotFound) or
// waits for this grant to commit, and then revokes it with the others.
func (s *Store) CreateGrant(ctx context.Context, g *storage.Grant) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `WITH c AS (
				SELECT 1 FROM clients WHERE id = $4 FOR SHARE
			)
			INSERT INTO grants (`+grantCols+`)
			SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 FROM c`,
			g.ID, g.Tenant, g.Subject, g.ClientID, g.AgentID, list(g.Audiences), list(g.Scopes),
			list(g.Modes), ts(g.NotBefore), ts(g.ExpiresAt), g.CreatedBy, ts(g.CreatedAt),
			nullTS(g.RevokedAt), g.RevokedBy, g.RevokeReason))
	})
}

// RevokeGrantsOfClient implements storage.GrantStore; grants_client_id serves it.
func (s *Store) RevokeGrantsOfClient(ctx context.Context, clientID, by, reason string, at time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, `UPDATE grants SET revoked_at = $2, revoked_by = $3, revoke_reason = $4
			WHERE client_id = $1 AND revoked_at IS NULL`, clientID, ts(at), by, reason)
		n = tag.RowsAffected()
		return mapErr(err)
	})
	return n, err
}

// GetGrant implements storage.GrantStore.
func (s *Store) GetGrant(ctx context.Context, id string) (*storage.Grant, error) {
	return scanGrant(s.db.QueryRow(ctx, `SELECT `+grantCols+` FROM grants WHERE id = $1`, id))
}

// ListGrants implements storage.GrantStore, ordered by id.
func (s *Store) ListGrants(ctx context.Context, f storage.GrantFilter) ([]storage.Grant, string, error) {
	after, err := f.Page.AfterID("grants")
	if err != nil {
		return nil, "", err
	}
	var w where
	w.add("id > %s", after)
	w.eq("tenant", f.Tenant)
	w.eq("subject", f.Subject)
	w.eq("client_id", f.ClientID)
	if f.Audience != "" {
		w.add("%s = ANY (audiences)", f.Audience)
	}
	// The same rules as storage.Grant.Status.
	switch f.Status {
	case "":
	case storage.GrantActive:
		w.add("revoked_at IS NULL AND expires_at > %s", ts(f.Now))
	case storage.GrantExpired:
		w.add("revoked_at IS NULL AND expires_at <= %s", ts(f.Now))
	case storage.GrantRevoked:
		w.add("revoked_at IS NOT NULL")
	default:
		return nil, "", fmt.Errorf("storage/postgres: unknown grant status %q", f.Status)
	}
	limit := f.EffectiveLimit()
	sql := `SELECT ` + grantCols + ` FROM grants` + w.sql() + ` ORDER BY id LIMIT ` + w.next(limit+1)
	rows, err := s.db.Query(ctx, sql, w.args...)
	items, err := collect(rows, err, scanGrant)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(g *storage.Grant) string { return storage.EncodeCursor("grants", g.ID) })
	return items, next, nil
}

// RevokeGrant implements storage.GrantStore. The UPDATE's own row lock makes exactly one of
// concurrent revocations win; the others find revoked_at set and report a conflict.
func (s *Store) RevokeGrant(ctx context.Context, id, by, reason string, at time.Time) (*storage.Grant, error) {
	var out *storage.Grant
	err := s.write(ctx, func(q querier) error {
		g, err := scanGrant(q.QueryRow(ctx, `UPDATE grants
			SET revoked_at = $2, revoked_by = $3, revoke_reason = $4
			WHERE id = $1 AND revoked_at IS NULL RETURNING `+grantCols, id, ts(at), by, reason))
		if errors.Is(err, storage.ErrNotFound) {
			// Either there is no such grant or it is already revoked; say which. Only the
			// failure path pays for this second read.
			var one int
			if err := q.QueryRow(ctx, `SELECT 1 FROM grants WHERE id = $1`, id).Scan(&one); err != nil {
				return mapErr(err)
			}
			return fmt.Errorf("%w: grant %s is already revoked", storage.ErrConflict, id)
		}
		out = g
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// FindActiveGrants implements storage.GrantStore; grants_tenant_client_subject serves it.
func (s *Store) FindActiveGrants(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	now := ts(q.Now)
	rows, err := s.db.Query(ctx, `SELECT `+grantCols+` FROM grants
		WHERE tenant = $1 AND client_id = $2 AND subject IN ($3, $4)
		AND agent_id IN ('', $5)
		AND revoked_at IS NULL AND not_before <= $6 AND expires_at > $6
		ORDER BY id`,
		q.Tenant, q.ClientID, q.Subject, storage.AnySubject, q.AgentID, now)
	return collect(rows, err, scanGrant)
}

// ActiveGrantsOf implements storage.GrantStore; grants_tenant_client_subject serves it.
func (s *Store) ActiveGrantsOf(ctx context.Context, tenant, clientID string, now time.Time, limit int) ([]storage.Grant, error) {
	rows, err := s.db.Query(ctx, `SELECT `+grantCols+` FROM grants
		WHERE tenant = $1 AND client_id = $2
		AND revoked_at IS NULL AND not_before <= $3 AND expires_at > $3
		ORDER BY id LIMIT $4`,
		tenant, clientID, ts(now), limit)
	return collect(rows, err, scanGrant)
}
