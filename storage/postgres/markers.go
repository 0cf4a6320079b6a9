package postgres

import (
	"context"
	"time"
)

// SetMarker implements storage.MarkerStore: the primary key makes one caller win.
func (s *Store) SetMarker(ctx context.Context, name string, at time.Time) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO markers (name, created_at) VALUES ($1, $2)`, name, ts(at))
		return mapErr(err)
	})
}

// GetMarker implements storage.MarkerStore.
func (s *Store) GetMarker(ctx context.Context, name string) (time.Time, error) {
	var at time.Time
	err := s.db.QueryRow(ctx, `SELECT created_at FROM markers WHERE name = $1`, name).Scan(timeCol{&at})
	return at, mapErr(err)
}
