package postgres

import (
	"context"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// GetTokenState implements storage.TokenStore: the token and its grant's revocation in one
// read. grant_id has no foreign key, so a grant that is gone reads as not revoked; the
// token's own expiry bounds that case.
func (s *Store) GetTokenState(ctx context.Context, jti string) (*storage.TokenState, error) {
	var t storage.TokenState
	err := s.db.QueryRow(ctx, `SELECT t.jti, t.client_id, t.subject, t.audience, t.grant_id,
		t.issued_at, t.expires_at, t.revoked_at, g.revoked_at
		FROM issued_tokens t LEFT JOIN grants g ON t.grant_id <> '' AND g.id = t.grant_id
		WHERE t.jti = $1`, jti).Scan(&t.JTI, &t.ClientID, &t.Subject, &t.Audience, &t.GrantID,
		timeCol{&t.IssuedAt}, timeCol{&t.ExpiresAt}, timeCol{&t.RevokedAt}, timeCol{&t.GrantRevokedAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &t, nil
}

// RevokeToken implements storage.TokenStore in one statement. The first revocation time is
// kept; ErrNotFound when there is no such token.
func (s *Store) RevokeToken(ctx context.Context, jti string, at time.Time) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx,
			`UPDATE issued_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE jti = $1`, jti, ts(at)))
	})
}

// DeleteExpiredTokens implements storage.TokenStore.
func (s *Store) DeleteExpiredTokens(ctx context.Context, now time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, `DELETE FROM issued_tokens WHERE expires_at < $1`, ts(now))
		n = tag.RowsAffected()
		return mapErr(err)
	})
	return n, err
}
