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

// Grant requests, consent records and sessions (migration 00005).

const grantRequestCols = `id, client_id, tenant, subject, agent_id, audiences, scopes, modes,
	duration_seconds, purpose, state, created_at, expires_at, decided_at, decided_by, grant_id`

func scanGrantRequest(r rowScanner) (*storage.GrantRequest, error) {
	var g storage.GrantRequest
	err := r.Scan(&g.ID, &g.ClientID, &g.Tenant, &g.Subject, &g.AgentID, listCol{&g.Audiences},
		listCol{&g.Scopes}, listCol{&g.Modes}, secondsCol{&g.Duration}, &g.Purpose, &g.State,
		timeCol{&g.CreatedAt}, timeCol{&g.ExpiresAt}, timeCol{&g.DecidedAt}, &g.DecidedBy, &g.GrantID)
	if err != nil {
		return nil, mapErr(err)
	}
	return &g, nil
}

// CreateGrantRequest implements storage.GrantRequestStore.
func (s *Store) CreateGrantRequest(ctx context.Context, g *storage.GrantRequest) error {
	_, err := s.writer().ExecContext(ctx, `INSERT INTO grant_requests (`+grantRequestCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		g.ID, g.ClientID, g.Tenant, g.Subject, g.AgentID, list(g.Audiences), list(g.Scopes),
		list(g.Modes), seconds(g.Duration), g.Purpose, g.State, micros(g.CreatedAt),
		micros(g.ExpiresAt), nullMicros(g.DecidedAt), g.DecidedBy, g.GrantID)
	return mapErr(err)
}

// GetGrantRequest implements storage.GrantRequestStore.
func (s *Store) GetGrantRequest(ctx context.Context, id string) (*storage.GrantRequest, error) {
	return scanGrantRequest(s.reader().QueryRowContext(ctx,
		`SELECT `+grantRequestCols+` FROM grant_requests WHERE id = ?`, id))
}

// ListGrantRequests implements storage.GrantRequestStore: newest first, by id.
func (s *Store) ListGrantRequests(ctx context.Context, f storage.GrantRequestFilter) ([]storage.GrantRequest, string, error) {
	var where []string
	var args []any
	if f.Cursor != "" {
		before, err := f.Page.AfterID("grant_requests")
		if err != nil {
			return nil, "", err
		}
		where = append(where, "id < ?")
		args = append(args, before)
	}
	for _, c := range []struct{ col, v string }{
		{"client_id", f.ClientID}, {"tenant", f.Tenant}, {"subject", f.Subject},
	} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	// The same rules as storage.GrantRequest.Status.
	switch f.Status {
	case "":
	case storage.GrantRequestPending:
		where = append(where, "state = 'pending' AND expires_at > ?")
		args = append(args, micros(f.Now))
	case storage.GrantRequestExpired:
		where = append(where, "state = 'pending' AND expires_at <= ?")
		args = append(args, micros(f.Now))
	case storage.GrantRequestApproved, storage.GrantRequestDenied:
		where = append(where, "state = ?")
		args = append(args, f.Status)
	default:
		return nil, "", fmt.Errorf("storage/sqlite: unknown grant request status %q", f.Status)
	}
	query := `SELECT ` + grantRequestCols + ` FROM grant_requests`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := f.EffectiveLimit()
	args = append(args, limit+1)
	rows, err := s.reader().QueryContext(ctx, query+` ORDER BY id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, "", mapErr(err)
	}
	items, err := collect(rows, scanGrantRequest)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(x *storage.GrantRequest) string {
		return storage.EncodeCursor("grant_requests", x.ID)
	})
	return items, next, nil
}

// DecideGrantRequest implements storage.GrantRequestStore. The conditional UPDATE is the
// decision: with one writer at a time, a second decider finds the request no longer pending.
func (s *Store) DecideGrantRequest(ctx context.Context, id string, d storage.GrantRequestDecision) (*storage.GrantRequest, error) {
	var out *storage.GrantRequest
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		g, err := scanGrantRequest(tx.QueryRowContext(ctx, `UPDATE grant_requests
			SET state = ?, decided_at = ?, decided_by = ?, grant_id = ?
			WHERE id = ? AND state = 'pending' AND expires_at > ?
			RETURNING `+grantRequestCols,
			d.State, micros(d.DecidedAt), d.DecidedBy, d.GrantID, id, micros(d.DecidedAt)))
		if errors.Is(err, storage.ErrNotFound) {
			cur, err := scanGrantRequest(tx.QueryRowContext(ctx,
				`SELECT `+grantRequestCols+` FROM grant_requests WHERE id = ?`, id))
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
	_, err := s.writer().ExecContext(ctx, `INSERT INTO consent_records
		(grant_id, request_id, approved_by, approved_at, remote_addr, text) VALUES (?, ?, ?, ?, ?, ?)`,
		c.GrantID, c.RequestID, c.ApprovedBy, micros(c.ApprovedAt), c.RemoteAddr, c.Text)
	return mapErr(err)
}

// GetConsents implements storage.ConsentStore.
func (s *Store) GetConsents(ctx context.Context, grantIDs []string) ([]storage.ConsentRecord, error) {
	if len(grantIDs) == 0 {
		return nil, nil
	}
	rows, err := s.reader().QueryContext(ctx, `SELECT grant_id, request_id, approved_by, approved_at,
		remote_addr, text FROM consent_records
		WHERE grant_id IN (SELECT value FROM json_each(?)) ORDER BY grant_id`, list(grantIDs))
	if err != nil {
		return nil, mapErr(err)
	}
	return collect(rows, func(r rowScanner) (*storage.ConsentRecord, error) {
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
	_, err := s.writer().ExecContext(ctx, `INSERT INTO sessions (`+sessionCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		x.ID, x.Subject, x.Tenant, x.Name, x.CSRFToken, x.LoginState, x.LoginNonce,
		x.LoginVerifier, x.ReturnTo, micros(x.CreatedAt), micros(x.LastSeenAt), micros(x.ExpiresAt))
	return mapErr(err)
}

// GetSession implements storage.SessionStore.
func (s *Store) GetSession(ctx context.Context, id string) (*storage.Session, error) {
	var x storage.Session
	err := s.reader().QueryRowContext(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = ?`, id).Scan(
		&x.ID, &x.Subject, &x.Tenant, &x.Name, &x.CSRFToken, &x.LoginState, &x.LoginNonce,
		&x.LoginVerifier, &x.ReturnTo, timeCol{&x.CreatedAt}, timeCol{&x.LastSeenAt}, timeCol{&x.ExpiresAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &x, nil
}

// TouchSession implements storage.SessionStore.
func (s *Store) TouchSession(ctx context.Context, id string, at time.Time) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx,
		`UPDATE sessions SET last_seen_at = ? WHERE id = ?`, micros(at), id))
}

// DeleteSession implements storage.SessionStore.
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id))
}

// DeleteExpiredSessions implements storage.SessionStore.
func (s *Store) DeleteExpiredSessions(ctx context.Context, now, idleSince time.Time) (int64, error) {
	res, err := s.writer().ExecContext(ctx, `DELETE FROM sessions WHERE expires_at < ? OR last_seen_at < ?`,
		micros(now), micros(idleSince))
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := res.RowsAffected()
	return n, mapErr(err)
}
