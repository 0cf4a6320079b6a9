package postgres

import (
	"context"
	"fmt"
	"slices"
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

// recordIssuance is RecordIssuance's single statement: one round trip, atomic because it is
// one statement. Its data-modifying CTEs all run, in an order Postgres does not promise, so
// each one is gated on the rows the ones before it returned:
//
//   - g locks the grant row FOR SHARE when there is one and it is unrevoked: a concurrent
//     RevokeGrant either commits first (then g finds revoked_at set and comes back empty) or
//     waits for this statement to commit, so the grant is unrevoked at commit time.
//   - marks writes the replay marks, replacing only marks expired at $4; a live mark makes
//     the upsert write no row for its key.
//   - replayed fires only when marks wrote fewer rows than asked: it inserts every key again
//     without ON CONFLICT, which must hit the unique key (the live mark, or one this very
//     statement wrote), so the whole statement fails with 23505 -> ErrConflict and the marks
//     it did write are rolled back with it. Without this, of two marks (envelope and client
//     assertion) the fresh one would be used up by a rejected request.
//   - tok and aud write the token record and its audit record only when the grant check and
//     every mark succeeded: no token without its audit record.
//
// The statement returns whether the audit record (hence everything) was written; false
// means the grant check failed and nothing was written.
const recordIssuance = `WITH
g AS (
	SELECT 1 FROM grants
	WHERE $1::text <> '' AND id = $1::text AND revoked_at IS NULL
	FOR SHARE
),
grant_ok AS (
	SELECT $1::text = '' OR EXISTS (SELECT 1 FROM g) AS ok
),
marks AS (
	INSERT INTO replay_marks AS m (key, expires_at)
	SELECT k, e FROM unnest($2::text[], $3::timestamptz[]) AS r (k, e)
	WHERE (SELECT ok FROM grant_ok)
	ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
	WHERE m.expires_at <= $4
	RETURNING 1
),
marked AS (
	SELECT count(*) AS n FROM marks
),
replayed AS (
	INSERT INTO replay_marks (key, expires_at)
	SELECT k, e FROM unnest($2::text[], $3::timestamptz[]) AS r (k, e)
	WHERE (SELECT ok FROM grant_ok) AND (SELECT n FROM marked) <> $5::bigint
	RETURNING 1
),
tok AS (
	INSERT INTO issued_tokens
		(jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
	SELECT $6, $7, $8, $9, $33, $10, $11, $12
	WHERE (SELECT ok FROM grant_ok) AND (SELECT n FROM marked) = $5::bigint
	RETURNING 1
),
aud AS (
	INSERT INTO audit_log (` + auditCols + `)
	SELECT $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29,
		$30, $31, $32
	WHERE EXISTS (SELECT 1 FROM tok)
	RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM aud)`

// RecordIssuance implements storage.Store in one statement, hence one round trip on a warm
// connection (pgx caches the prepared statement per connection). A replay mark is live when
// it has not expired at the token's IssuedAt (the moment the issuance was decided), or at
// the wall clock when IssuedAt is unset, as in the SQLite backend.
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	now := iss.Token.IssuedAt
	if now.IsZero() {
		now = time.Now()
	}
	keys := make([]string, len(iss.Replay))
	exps := make([]time.Time, len(iss.Replay))
	for i, m := range iss.Replay {
		// The second of two equal keys is a replay of the first, as it is when the marks
		// are set one by one; in one upsert it would be an error of its own kind.
		if slices.Contains(keys[:i], m.Key) {
			return fmt.Errorf("%w: replay mark given twice", storage.ErrConflict)
		}
		keys[i], exps[i] = m.Key, ts(m.ExpiresAt)
	}
	t := &iss.Token
	args := make([]any, 0, 33)
	args = append(args, iss.GrantID, keys, exps, ts(now), int64(len(keys)),
		t.JTI, t.ClientID, t.Subject, t.Audience, ts(t.IssuedAt), ts(t.ExpiresAt), nullTS(t.RevokedAt))
	args = append(args, auditArgs(&iss.Audit)...)
	args = append(args, t.GrantID)

	return s.write(ctx, func(q querier) error {
		var recorded bool
		if err := q.QueryRow(ctx, recordIssuance, args...).Scan(&recorded); err != nil {
			return mapErr(err)
		}
		if !recorded {
			return fmt.Errorf("%w: grant %s is revoked or gone", storage.ErrConflict, iss.GrantID)
		}
		return nil
	})
}
