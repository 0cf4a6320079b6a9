package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// GetTokenState implements storage.TokenStore: the token and its grant's revocation in one
// read. grant_id has no foreign key, so a grant that is gone reads as not revoked; the
// token's own expiry bounds that case.
func (s *Store) GetTokenState(ctx context.Context, jti string) (*storage.TokenState, error) {
	var t storage.TokenState
	err := s.reader().QueryRowContext(ctx, `SELECT t.jti, t.client_id, t.subject, t.audience,
		t.grant_id, t.issued_at, t.expires_at, t.revoked_at, g.revoked_at
		FROM issued_tokens t LEFT JOIN grants g ON t.grant_id <> '' AND g.id = t.grant_id
		WHERE t.jti = ?`, jti).Scan(&t.JTI, &t.ClientID, &t.Subject, &t.Audience, &t.GrantID,
		timeCol{&t.IssuedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.RevokedAt}, timeCol{&t.GrantRevokedAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &t, nil
}

// RevokeToken implements storage.TokenStore. The first revocation time is kept.
func (s *Store) RevokeToken(ctx context.Context, jti string, at time.Time) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx,
		`UPDATE issued_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE jti = ?`, micros(at), jti))
}

// DeleteExpiredTokens implements storage.TokenStore.
func (s *Store) DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.writer().ExecContext(ctx, `DELETE FROM issued_tokens WHERE expires_at < ?`, micros(now))
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := res.RowsAffected()
	return n, mapErr(err)
}

// RecordIssuance implements storage.Store. A replay mark is live when it has not expired at
// the token's IssuedAt (the moment the issuance was decided), or at the wall clock when
// IssuedAt is unset. With BEGIN IMMEDIATE the grant read below and the commit happen under
// the write lock, so a revocation cannot slip in between. The statements are the ones
// prepared at Open.
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	now := iss.Token.IssuedAt
	if now.IsZero() {
		now = time.Now()
	}
	return s.withTx(ctx, func(tx *sql.Tx) error {
		if iss.GrantID != "" {
			var revoked sql.NullInt64
			err := tx.StmtContext(ctx, s.hot.grantRevokedAt).QueryRowContext(ctx, iss.GrantID).Scan(&revoked)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("%w: grant %s no longer exists", storage.ErrConflict, iss.GrantID)
			case err != nil:
				return mapErr(err)
			case revoked.Valid:
				return fmt.Errorf("%w: grant %s is revoked", storage.ErrConflict, iss.GrantID)
			}
		}
		if len(iss.Replay) > 0 {
			mark := tx.StmtContext(ctx, s.hot.markUsed)
			for _, m := range iss.Replay {
				if err := markUsedResult(mark.ExecContext(ctx, markUsedArgs(m, now)...)); err != nil {
					return err
				}
			}
		}
		if _, err := tx.StmtContext(ctx, s.hot.insertToken).ExecContext(ctx, tokenArgs(&iss.Token)...); err != nil {
			return mapErr(err)
		}
		_, err := tx.StmtContext(ctx, s.hot.insertAudit).ExecContext(ctx, auditArgs(&iss.Audit)...)
		return mapErr(err)
	})
}

const insertToken = `INSERT INTO issued_tokens
	(jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?)`

func tokenArgs(t *storage.IssuedToken) []any {
	return []any{t.JTI, t.ClientID, t.Subject, t.Audience, t.GrantID, micros(t.IssuedAt),
		micros(t.ExpiresAt), nullMicros(t.RevokedAt)}
}

// hotStmts are the token endpoint's statements, prepared once on the write connection:
// parsing them took about a fifth of RecordIssuance's time (BenchmarkRecordIssuance).
type hotStmts struct {
	grantRevokedAt, markUsed, insertToken, insertAudit *sql.Stmt
}

func prepareHot(ctx context.Context, db *sql.DB) (*hotStmts, error) {
	h := &hotStmts{}
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&h.grantRevokedAt, `SELECT revoked_at FROM grants WHERE id = ?`},
		{&h.markUsed, markUsed},
		{&h.insertToken, insertToken},
		{&h.insertAudit, insertAudit},
	} {
		st, err := db.PrepareContext(ctx, p.query)
		if err != nil {
			_ = h.close()
			return nil, mapErr(err)
		}
		*p.dst = st
	}
	return h, nil
}

func (h *hotStmts) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{h.grantRevokedAt, h.markUsed, h.insertToken, h.insertAudit} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}
