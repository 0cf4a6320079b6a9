package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// markUsed is one statement, so it is atomic on its own: the upsert replaces a mark only when
// it has expired at now (expires_at <= now, the rule of storage.Grant.Status), and changes no
// row when a live one holds the key. Concurrent callers queue on the key's index entry and
// row lock, and each re-reads the latest row before deciding, so exactly one wins.
const markUsed = `INSERT INTO replay_marks AS m (key, expires_at) VALUES ($1, $2)
	ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
	WHERE m.expires_at <= $3`

// MarkUsed implements storage.ReplayStore.
func (s *Store) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	return s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, markUsed, m.Key, ts(m.ExpiresAt), ts(now))
		if err != nil {
			return mapErr(err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: replay mark already set", storage.ErrConflict)
		}
		return nil
	})
}

// DeleteExpiredReplayMarks implements storage.ReplayStore.
func (s *Store) DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, `DELETE FROM replay_marks WHERE expires_at < $1`, ts(now))
		n = tag.RowsAffected()
		return mapErr(err)
	})
	return n, err
}

// recordIssuance is RecordIssuance's single statement: one row, one round trip, atomic
// because it is one statement.
//
//   - g locks the grant row FOR SHARE when there is one and it is unrevoked: a concurrent
//     RevokeGrant either commits first (then g finds revoked_at set and comes back empty, so
//     nothing is inserted) or waits for this statement to commit, so the grant is unrevoked
//     at commit time.
//   - The insert itself enforces the one-time rules through the unique indexes on replay_key
//     and on an issuance's token_jti: a used key or jti fails the statement with 23505, which
//     mapErr turns into ErrConflict. Concurrent inserts of one key queue on its index entry,
//     so exactly one of them commits.
const recordIssuance = `WITH g AS (
	SELECT 1 FROM grants
	WHERE $18::text <> '' AND id = $18::text AND revoked_at IS NULL
	FOR SHARE
)
INSERT INTO audit_log (` + auditCols + `, token_expires_at, replay_key)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
	$20, $21, $22, $23
WHERE $18::text = '' OR EXISTS (SELECT 1 FROM g)`

// RecordIssuance implements storage.Store in one statement, hence one round trip on a warm
// connection (pgx caches the prepared statement per connection).
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	if err := storage.CheckIssuance(&iss); err != nil {
		return err
	}
	args := make([]any, 0, 23)
	args = appendAuditArgs(args, &iss.Audit)
	args = append(args, ts(iss.TokenExpiresAt), iss.ReplayKey)
	return s.write(ctx, func(q querier) error {
		tag, err := q.Exec(ctx, recordIssuance, args...)
		if err != nil {
			return mapErr(err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: grant %s is revoked or gone", storage.ErrConflict, iss.Audit.GrantID)
		}
		return nil
	})
}
