package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// MarkUsed implements storage.ReplayStore in one statement, atomic on its own: the upsert
// replaces a mark only when it has expired at now (expires_at <= now, the rule of
// storage.Grant.Status), and changes no row when a live one holds the key.
func (s *Store) MarkUsed(ctx context.Context, m storage.ReplayMark, now time.Time) error {
	res, err := s.writer().ExecContext(ctx, `INSERT INTO replay_marks (key, expires_at) VALUES (?, ?)
		ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at
		WHERE replay_marks.expires_at <= ?`, m.Key, micros(m.ExpiresAt), micros(now))
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

// DeleteExpiredReplayMarks implements storage.ReplayStore: client assertion marks, then
// issuances' replay keys, each table in one statement.
func (s *Store) DeleteExpiredReplayMarks(ctx context.Context, now time.Time) (int64, error) {
	var total int64
	for _, table := range []string{"replay_marks", "issuance_keys"} {
		res, err := s.writer().ExecContext(ctx, `DELETE FROM `+table+` WHERE expires_at < ?`, micros(now))
		if err != nil {
			return total, mapErr(err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, mapErr(err)
		}
		total += n
	}
	return total, nil
}
