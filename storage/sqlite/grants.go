package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mandatehq/mandate/storage"
)

const grantCols = `id, tenant, subject, client_id, agent_id, audiences, scopes, modes, not_before,
	expires_at, created_by, created_at, revoked_at, revoked_by, revoke_reason`

func scanGrant(r rowScanner) (*storage.Grant, error) {
	var g storage.Grant
	err := r.Scan(&g.ID, &g.Tenant, &g.Subject, &g.ClientID, &g.AgentID, listCol{&g.Audiences},
		listCol{&g.Scopes}, listCol{&g.Modes}, timeCol{&g.NotBefore}, timeCol{&g.ExpiresAt},
		&g.CreatedBy, timeCol{&g.CreatedAt}, timeCol{&g.RevokedAt}, &g.RevokedBy, &g.RevokeReason)
	if err != nil {
		return nil, mapErr(err)
	}
	return &g, nil
}

// CreateGrant implements storage.GrantStore. Writes are serialized, so the client checked
// here cannot be deleted before the grant commits.
func (s *Store) CreateGrant(ctx context.Context, g *storage.Grant) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `INSERT INTO grants (`+grantCols+`)
		SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
		WHERE EXISTS (SELECT 1 FROM clients WHERE id = ?)`,
		g.ID, g.Tenant, g.Subject, g.ClientID, g.AgentID, list(g.Audiences), list(g.Scopes),
		list(g.Modes), micros(g.NotBefore), micros(g.ExpiresAt), g.CreatedBy, micros(g.CreatedAt),
		nullMicros(g.RevokedAt), g.RevokedBy, g.RevokeReason, g.ClientID))
}

// RevokeGrantsOfClient implements storage.GrantStore; grants_client_id serves it.
func (s *Store) RevokeGrantsOfClient(ctx context.Context, clientID, by, reason string, at time.Time) (int64, error) {
	res, err := s.writer().ExecContext(ctx, `UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ?
		WHERE client_id = ? AND revoked_at IS NULL`, micros(at), by, reason, clientID)
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := res.RowsAffected()
	return n, mapErr(err)
}

// GetGrant implements storage.GrantStore.
func (s *Store) GetGrant(ctx context.Context, id string) (*storage.Grant, error) {
	return scanGrant(s.reader().QueryRowContext(ctx, `SELECT `+grantCols+` FROM grants WHERE id = ?`, id))
}

// ListGrants implements storage.GrantStore, ordered by id.
func (s *Store) ListGrants(ctx context.Context, f storage.GrantFilter) ([]storage.Grant, string, error) {
	after, err := f.Page.AfterID("grants")
	if err != nil {
		return nil, "", err
	}
	where := []string{"id > ?"}
	args := []any{after}
	eq := func(col, v string) {
		if v != "" {
			where = append(where, col+" = ?")
			args = append(args, v)
		}
	}
	eq("tenant", f.Tenant)
	eq("subject", f.Subject)
	eq("client_id", f.ClientID)
	if f.Audience != "" {
		where = append(where, "EXISTS (SELECT 1 FROM json_each(grants.audiences) WHERE value = ?)")
		args = append(args, f.Audience)
	}
	// The same rules as storage.Grant.Status.
	switch f.Status {
	case "":
	case storage.GrantActive:
		where = append(where, "revoked_at IS NULL AND expires_at > ?")
		args = append(args, micros(f.Now))
	case storage.GrantExpired:
		where = append(where, "revoked_at IS NULL AND expires_at <= ?")
		args = append(args, micros(f.Now))
	case storage.GrantRevoked:
		where = append(where, "revoked_at IS NOT NULL")
	default:
		return nil, "", fmt.Errorf("storage/sqlite: unknown grant status %q", f.Status)
	}
	limit := f.EffectiveLimit()
	args = append(args, limit+1)
	rows, err := s.reader().QueryContext(ctx, `SELECT `+grantCols+` FROM grants WHERE `+
		strings.Join(where, " AND ")+` ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, "", mapErr(err)
	}
	items, err := collect(rows, scanGrant)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(x *storage.Grant) string { return storage.EncodeCursor("grants", x.ID) })
	return items, next, nil
}

// RevokeGrant implements storage.GrantStore.
func (s *Store) RevokeGrant(ctx context.Context, id, by, reason string, at time.Time) (*storage.Grant, error) {
	var out *storage.Grant
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		g, err := scanGrant(tx.QueryRowContext(ctx, `UPDATE grants
			SET revoked_at = ?, revoked_by = ?, revoke_reason = ?
			WHERE id = ? AND revoked_at IS NULL RETURNING `+grantCols,
			micros(at), by, reason, id))
		if errors.Is(err, storage.ErrNotFound) {
			// Either there is no such grant or it is already revoked; say which.
			var one int
			if err := tx.QueryRowContext(ctx, `SELECT 1 FROM grants WHERE id = ?`, id).Scan(&one); err != nil {
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

// FindActiveGrants implements storage.GrantStore.
func (s *Store) FindActiveGrants(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	now := micros(q.Now)
	rows, err := s.reader().QueryContext(ctx, `SELECT `+grantCols+` FROM grants
		WHERE tenant = ? AND client_id = ? AND subject IN (?, ?)
		AND agent_id IN ('', ?)
		AND revoked_at IS NULL AND not_before <= ? AND expires_at > ?
		ORDER BY id`,
		q.Tenant, q.ClientID, q.Subject, storage.AnySubject, q.AgentID, now, now)
	if err != nil {
		return nil, mapErr(err)
	}
	return collect(rows, scanGrant)
}

// ActiveGrantsOf implements storage.GrantStore.
func (s *Store) ActiveGrantsOf(ctx context.Context, tenant, clientID string, now time.Time, limit int) ([]storage.Grant, error) {
	at := micros(now)
	rows, err := s.reader().QueryContext(ctx, `SELECT `+grantCols+` FROM grants
		WHERE tenant = ? AND client_id = ?
		AND revoked_at IS NULL AND not_before <= ? AND expires_at > ?
		ORDER BY id LIMIT ?`,
		tenant, clientID, at, at, limit)
	if err != nil {
		return nil, mapErr(err)
	}
	return collect(rows, scanGrant)
}
