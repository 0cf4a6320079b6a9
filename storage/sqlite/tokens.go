package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// GetTokenState implements storage.TokenStore: the issuance, its revocation, its grant's and
// its client's state in one read, of the record within the second of the token's iat.
func (s *Store) GetTokenState(ctx context.Context, jti string, iat time.Time) (*storage.TokenState, error) {
	var t storage.TokenState
	err := s.reader().QueryRowContext(ctx, `SELECT a.token_jti, a.client_id, a.audience,
		a.grant_id, a.time, a.token_expires_at, r.revoked_at, g.revoked_at,
		a.grant_id <> '' AND g.id IS NULL, c.id IS NULL, c.created_at, coalesce(c.disabled, 0),
		c.disabled_at
		FROM audit_log a
		LEFT JOIN token_revocations r ON r.jti = a.token_jti
		LEFT JOIN grants g ON a.grant_id <> '' AND g.id = a.grant_id
		LEFT JOIN clients c ON c.id = a.client_id
		WHERE a.token_jti = ? AND a.token_expires_at IS NOT NULL AND a.time >= ? AND a.time < ?`,
		jti, micros(iat), micros(iat.Add(time.Second))).Scan(&t.JTI, &t.ClientID,
		&t.Audience, &t.GrantID, timeCol{&t.IssuedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.RevokedAt},
		timeCol{&t.GrantRevokedAt}, &t.GrantMissing, &t.ClientMissing, timeCol{&t.ClientCreatedAt},
		&t.ClientDisabled, timeCol{&t.ClientDisabledAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &t, nil
}

// ReplayKeyUsed implements storage.Store: the key RecordIssuance would conflict on.
func (s *Store) ReplayKeyUsed(ctx context.Context, key string) (bool, error) {
	var used bool
	err := s.reader().QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM issuance_keys WHERE key = ?)`, key).Scan(&used)
	return used, mapErr(err)
}

// RevokeToken implements storage.TokenStore: the revocation copies the token's expiry, after
// which DeleteExpiredTokens may forget it. The first revocation time is kept (the upsert's
// no-op update still counts the row, telling it from an unknown jti).
func (s *Store) RevokeToken(ctx context.Context, jti string, iat, at time.Time) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `INSERT INTO token_revocations
		(jti, revoked_at, expires_at)
		SELECT token_jti, ?, token_expires_at FROM audit_log
		WHERE token_jti = ? AND token_expires_at IS NOT NULL AND time >= ? AND time < ?
		ON CONFLICT (jti) DO UPDATE SET revoked_at = token_revocations.revoked_at`,
		micros(at), jti, micros(iat), micros(iat.Add(time.Second))))
}

// DeleteExpiredTokens implements storage.TokenStore.
func (s *Store) DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.writer().ExecContext(ctx, `DELETE FROM token_revocations WHERE expires_at < ?`, micros(now))
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := res.RowsAffected()
	return n, mapErr(err)
}

// RecordIssuance implements storage.Store. With BEGIN IMMEDIATE the grant read below and the
// commit happen under the write lock, so a revocation cannot slip in between, and so does the
// replay key's insert, whose primary key makes it one-time. The statements are the ones
// prepared at Open.
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	if err := storage.CheckIssuance(&iss); err != nil {
		return err
	}
	return s.withTx(ctx, func(tx *sql.Tx) error { return s.insertIssuance(ctx, tx, &iss) })
}

// RecordIssuances implements storage.Store: one BEGIN IMMEDIATE transaction, hence one
// fsync, for the whole batch, which on SQLite is the whole win of group commit. Each row is
// RecordIssuance's grant check and insert; a row that conflicts is left out and the others
// go on, because SQLite undoes only the failed statement, not the transaction.
func (s *Store) RecordIssuances(ctx context.Context, iss []storage.Issuance) []error {
	errs := make([]error, len(iss))
	valid := make([]int, 0, len(iss)) // the rows that go to the database
	for i := range iss {
		if errs[i] = storage.CheckIssuance(&iss[i]); errs[i] == nil {
			valid = append(valid, i)
		}
	}
	if len(valid) == 0 {
		return errs
	}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		for _, i := range valid {
			err := s.insertIssuance(ctx, tx, &iss[i])
			if err != nil && !errors.Is(err, storage.ErrConflict) {
				return err
			}
			errs[i] = err
		}
		return nil
	})
	if err != nil { // nothing was written: the failure is every row's that went in
		for _, i := range valid {
			errs[i] = err
		}
	}
	return errs
}

// insertIssuance is one issuance's statements inside a write transaction.
func (s *Store) insertIssuance(ctx context.Context, tx *sql.Tx, iss *storage.Issuance) error {
	if grantID := iss.Audit.GrantID; grantID != "" {
		var revoked sql.NullInt64
		err := tx.StmtContext(ctx, s.hot.grantRevokedAt).QueryRowContext(ctx, grantID).Scan(&revoked)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("%w: grant %s no longer exists", storage.ErrConflict, grantID)
		case err != nil:
			return mapErr(err)
		case revoked.Valid:
			return fmt.Errorf("%w: grant %s is revoked", storage.ErrConflict, grantID)
		}
	}
	if iss.ReplayKey != "" {
		res, err := tx.StmtContext(ctx, s.hot.insertKey).ExecContext(ctx, iss.ReplayKey, micros(iss.ReplayExpiresAt))
		if err != nil {
			return mapErr(err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return mapErr(err)
		} else if n == 0 {
			return fmt.Errorf("%w: replay key already used", storage.ErrConflict)
		}
	}
	args := append(auditArgs(&iss.Audit), micros(iss.TokenExpiresAt))
	_, err := tx.StmtContext(ctx, s.hot.insertIssuance).ExecContext(ctx, args...)
	return mapErr(err)
}

const insertIssuance = `INSERT INTO audit_log (` + auditCols + `, token_expires_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// hotStmts are the token endpoint's statements, prepared once on the write connection:
// parsing them took about a fifth of RecordIssuance's time (BenchmarkRecordIssuance).
type hotStmts struct {
	grantRevokedAt, insertKey, insertIssuance *sql.Stmt
}

func prepareHot(ctx context.Context, db *sql.DB) (*hotStmts, error) {
	h := &hotStmts{}
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&h.grantRevokedAt, `SELECT revoked_at FROM grants WHERE id = ?`},
		{&h.insertKey, `INSERT INTO issuance_keys (key, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING`},
		{&h.insertIssuance, insertIssuance},
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
	for _, st := range []*sql.Stmt{h.grantRevokedAt, h.insertKey, h.insertIssuance} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}
