package postgres

import (
	"context"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// getTokenState reads an issuance by its jti within [iat, iat+1s).
const getTokenState = `SELECT a.token_jti, a.client_id, a.audience, a.grant_id, a.time,
		a.token_expires_at, r.revoked_at, g.revoked_at,
		a.grant_id <> '' AND g.id IS NULL, c.id IS NULL, c.created_at, coalesce(c.disabled, false),
		c.disabled_at
		FROM audit_log a
		LEFT JOIN token_revocations r ON r.jti = a.token_jti
		LEFT JOIN grants g ON a.grant_id <> '' AND g.id = a.grant_id
		LEFT JOIN clients c ON c.id = a.client_id
		WHERE a.token_jti = $1 AND a.token_expires_at IS NOT NULL
			AND a.time >= $2 AND a.time < $3`

// GetTokenState implements storage.TokenStore: the issuance, its revocation, its grant's and
// its client's state in one read. The record's time lies in the second of the token's iat,
// which confines the read to one day partition and one probe of its token_jti index.
func (s *Store) GetTokenState(ctx context.Context, jti string, iat time.Time) (*storage.TokenState, error) {
	var t storage.TokenState
	err := s.db.QueryRow(ctx, getTokenState, jti, ts(iat), ts(iat.Add(time.Second))).Scan(&t.JTI, &t.ClientID,
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
	err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM issuance_keys WHERE key = $1)`, key).Scan(&used)
	return used, mapErr(err)
}

// RevokeToken implements storage.TokenStore in one statement: the revocation copies the
// token's expiry, after which DeleteExpiredTokens may forget it. The first revocation time is
// kept (the upsert's no-op update still counts the row, telling it from an unknown jti).
func (s *Store) RevokeToken(ctx context.Context, jti string, iat, at time.Time) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `INSERT INTO token_revocations AS r (jti, revoked_at, expires_at)
			SELECT token_jti, $2, token_expires_at FROM audit_log
			WHERE token_jti = $1 AND token_expires_at IS NOT NULL AND time >= $3 AND time < $4
			LIMIT 1
			ON CONFLICT (jti) DO UPDATE SET revoked_at = r.revoked_at`, jti, ts(at), ts(iat), ts(iat.Add(time.Second))))
	})
}

// DeleteExpiredTokens implements storage.TokenStore.
func (s *Store) DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, `DELETE FROM token_revocations WHERE expires_at < $1`, ts(now))
		n = tag.RowsAffected()
		return mapErr(err)
	})
	return n, err
}
