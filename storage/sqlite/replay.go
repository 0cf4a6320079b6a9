package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// markUsed is one statement, so it is atomic on its own: the upsert replaces a mark only when
// it has expired at now (expires_at <= now, the rule of storage.Grant.Status), and changes no
// row when a live one holds the key.
const markUsed = `INSERT INTO replay_marks (key, expires_at) VALUES (?, ?)
	ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
	WHERE replay_marks.expires_at <= ?`

func markUsedArgs(m storage.ReplayMark, now time.Time) []any {
	return []any{m.Key, micros(m.ExpiresAt), micros(now)}
}

// markUsedResult reads markUsed's outcome: no row changed means a live mark holds the key.
func markUsedResult(res sql.Result, err error) error {
	if err != nil {
		return mapErr(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return mapErr(err)
	}
	if n == 0 {
		return fmt.Errorf("%w: replay mark already set", storage.ErrConflict)
	}
	return nil
}

// MarkUsed implements storage.ReplayStore.
func (s *Store) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	return markUsedResult(s.writer().ExecContext(ctx, markUsed, markUsedArgs(m, now)...))
}

// DeleteExpiredReplayMarks implements storage.ReplayStore.
func (s *Store) DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error) {
	res, err := s.writer().ExecContext(ctx, `DELETE FROM replay_marks WHERE expires_at < ?`, micros(now))
	if err != nil {
		return 0, mapErr(err)
	}
	n, err := res.RowsAffected()
	return n, mapErr(err)
}
