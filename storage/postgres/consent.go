package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// Grant requests, consent records and sessions (migration 00005).

const grantRequestCols = `id, client_id, tenant, subject, agent_id, audiences, scopes, modes,
	duration_seconds, purpose, state, created_at, expires_at, decided_at, decided_by, grant_id`

func scanGrantRequest(r rowScanner) (*storage.GrantRequest, error) {
	var g storage.GrantRequest
	err := r.Scan(&g.ID, &g.ClientID, &g.Tenant, &g.Subject, &g.AgentID, &g.Audiences, &g.Scopes,
		&g.Modes, secondsCol{&g.Duration}, &g.Purpose, &g.State, timeCol{&g.CreatedAt},
		timeCol{&g.ExpiresAt}, timeCol{&g.DecidedAt}, &g.DecidedBy, &g.GrantID)
	if err != nil {
		return nil, mapErr(err)
	}
	nilEmpty(&g.Audiences, &g.Scopes, &g.Modes)
	return &g, nil
}

// CreateGrantRequest implements storage.GrantRequestStore.
func (s *Store) CreateGrantRequest(ctx context.Context, g *storage.GrantRequest) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO grant_requests (`+grantRequestCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
			g.ID, g.ClientID, g.Tenant, g.Subject, g.AgentID, list(g.Audiences), list(g.Scopes),
			list(g.Modes), seconds(g.Duration), g.Purpose, g.State, ts(g.CreatedAt), ts(g.ExpiresAt),
			nullTS(g.DecidedAt), g.DecidedBy, g.GrantID)
		return mapErr(err)
	})
}

// GetGrantRequest implements storage.GrantRequestStore.
func (s *Store) GetGrantRequest(ctx context.Context, id string) (*storage.GrantRequest, error) {
	return scanGrantRequest(s.db.QueryRow(ctx, `SELECT `+grantRequestCols+` FROM grant_requests WHERE id = $1`, id))
}

// ListGrantRequests implements storage.GrantRequestStore: newest first, by id.
func (s *Store) ListGrantRequests(ctx context.Context, f storage.GrantRequestFilter) ([]storage.GrantRequest, string, error) {
	var w where
	if f.Cursor != "" {
		before, err := f.Page.AfterID("grant_requests")
		if err != nil {
			return nil, "", err
		}
		w.add("id < %s", before)
	}
	w.eq("client_id", f.ClientID)
	w.eq("tenant", f.Tenant)
	w.eq("subject", f.Subject)
	// The same rules as storage.GrantRequest.Status.
	switch f.Status {
	case "":
	case storage.GrantRequestPending:
		w.add("state = 'pending' AND expires_at > %s", ts(f.Now))
	case storage.GrantRequestExpired:
		w.add("state = 'pending' AND expires_at <= %s", ts(f.Now))
	case storage.GrantRequestApproved, storage.GrantRequestDenied:
		w.add("state = %s", f.Status)
	default:
		return nil, "", fmt.Errorf("storage/postgres: unknown grant request status %q", f.Status)
	}
	limit := f.EffectiveLimit()
	sql := `SELECT ` + grantRequestCols + ` FROM grant_requests` + w.sql() + ` ORDER BY id DESC LIMIT ` + w.next(limit+1)
	rows, err := s.db.Query(ctx, sql, w.args...)
	items, err := collect(rows, err, scanGrantRequest)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(g *storage.GrantRequest) string {
		return storage.EncodeCursor("grant_requests", g.ID)
	})
	return items, next, nil
}

// DecideGrantRequest implements storage.GrantRequestStore. The conditional UPDATE is the
// decision: a concurrent decider waits for the row lock, then finds the request no longer
// pending and changes nothing.
func (s *Store) DecideGrantRequest(ctx context.Context, id string, d storage.GrantRequestDecision) (*storage.GrantRequest, error) {
	var out *storage.GrantRequest
	err := s.write(ctx, func(q querier) error {
		g, err := scanGrantRequest(q.QueryRow(ctx, `UPDATE grant_requests
			SET state = $2, decided_at = $3, decided_by = $4, grant_id = $5
			WHERE id = $1 AND state = 'pending' AND expires_at > $3
			RETURNING `+grantRequestCols, id, d.State, ts(d.DecidedAt), d.DecidedBy, d.GrantID))
		if errors.Is(err, storage.ErrNotFound) {
			cur, err := scanGrantRequest(q.QueryRow(ctx,
				`SELECT `+grantRequestCols+` FROM grant_requests WHERE id = $1`, id))
			if err != nil {
				return err
			}
			return fmt.Errorf("%w: grant request %s is %s", storage.ErrConflict, id, cur.Status(d.DecidedAt))
		}
		out = g
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CreateConsent implements storage.ConsentStore.
func (s *Store) CreateConsent(ctx context.Context, c *storage.ConsentRecord) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO consent_records
			(grant_id, request_id, approved_by, approved_at, remote_addr, text)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			c.GrantID, c.RequestID, c.ApprovedBy, ts(c.ApprovedAt), c.RemoteAddr, c.Text)
		return mapErr(err)
	})
}

// GetConsents implements storage.ConsentStore.
func (s *Store) GetConsents(ctx context.Context, grantIDs []string) ([]storage.ConsentRecord, error) {
	if len(grantIDs) == 0 {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `SELECT grant_id, request_id, approved_by, approved_at, remote_addr,
		text FROM consent_records WHERE grant_id = ANY ($1) ORDER BY grant_id`, grantIDs)
	return collect(rows, err, func(r rowScanner) (*storage.ConsentRecord, error) {
		var c storage.ConsentRecord
		if err := r.Scan(&c.GrantID, &c.RequestID, &c.ApprovedBy, timeCol{&c.ApprovedAt},
			&c.RemoteAddr, &c.Text); err != nil {
			return nil, mapErr(err)
		}
		return &c, nil
	})
}

const sessionCols = `id, subject, tenant, name, csrf_token, login_state, login_nonce,
	login_verifier, return_to, created_at, last_seen_at, expires_at`

// CreateSession implements storage.SessionStore.
func (s *Store) CreateSession(ctx context.Context, x *storage.Session) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO sessions (`+sessionCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			x.ID, x.Subject, x.Tenant, x.Name, x.CSRFToken, x.LoginState, x.LoginNonce,
			x.LoginVerifier, x.ReturnTo, ts(x.CreatedAt), ts(x.LastSeenAt), ts(x.ExpiresAt))
		return mapErr(err)
	})
}

// GetSession implements storage.SessionStore.
func (s *Store) GetSession(ctx context.Context, id string) (*storage.Session, error) {
	var x storage.Session
	err := s.db.QueryRow(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = $1`, id).Scan(
		&x.ID, &x.Subject, &x.Tenant, &x.Name, &x.CSRFToken, &x.LoginState, &x.LoginNonce,
		&x.LoginVerifier, &x.ReturnTo, timeCol{&x.CreatedAt}, timeCol{&x.LastSeenAt}, timeCol{&x.ExpiresAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &x, nil
}

// TouchSession implements storage.SessionStore.
func (s *Store) TouchSession(ctx context.Context, id string, at time.Time) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `UPDATE sessions SET last_seen_at = $2 WHERE id = $1`, id, ts(at)))
	})
}

// DeleteSession implements storage.SessionStore.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `DELETE FROM sessions WHERE id = $1`, id))
	})
}

// DeleteExpiredSessions implements storage.SessionStore.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now, idleSince time.Time) (int64, error) {
	tag, err := s.db.Exec(ctx, `DELETE FROM sessions WHERE expires_at < $1 OR last_seen_at < $2`, ts(now), ts(idleSince))
	if err != nil {
		return 0, mapErr(err)
	}
	return tag.RowsAffected(), nil
}
