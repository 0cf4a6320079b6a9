package sqlite

import (
	"context"
	"time"
)

// SetMarker implements storage.MarkerStore: the primary key makes one caller win.
func (s *Store) SetMarker(ctx context.Context, name string, at time.Time) error {
	_, err := s.writer().ExecContext(ctx, `INSERT INTO markers (name, created_at) VALUES (?, ?)`, name, micros(at))
	return mapErr(err)
}

// GetMarker implements storage.MarkerStore.
func (s *Store) GetMarker(ctx context.Context, name string) (time.Time, error) {
	var at time.Time
	err := s.reader().QueryRowContext(ctx, `SELECT created_at FROM markers WHERE name = ?`, name).Scan(timeCol{&at})
	return at, mapErr(err)
}
