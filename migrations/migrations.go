// Package migrations holds Mandate's schema, one folder of goose .sql files per dialect with
// the same version numbers, and runs them with goose's Provider (no goose globals).
//
// It imports no database driver: callers open the *sql.DB (storage/sqlite, storage/postgres).
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// Dialect names a schema folder.
type Dialect string

const (
	Postgres Dialect = "postgres"
	SQLite   Dialect = "sqlite"
)

// FS returns the migration files of d.
func FS(d Dialect) (fs.FS, error) { return fs.Sub(files, string(d)) }

// NewProvider returns a goose provider for db. On Postgres it takes a session advisory lock
// around every run, so replicas that start together migrate one after the other.
func NewProvider(d Dialect, db *sql.DB) (*goose.Provider, error) {
	fsys, err := FS(d)
	if err != nil {
		return nil, err
	}
	var opts []goose.ProviderOption
	gd := goose.DialectSQLite3
	if d == Postgres {
		gd = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return nil, err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	return goose.NewProvider(gd, db, fsys, opts...)
}

// Status is where a database stands against the embedded migrations.
type Status struct {
	Current int64 // applied version (0: none)
	Latest  int64 // newest embedded version
}

// Behind reports whether migrations are pending.
func (s Status) Behind() bool { return s.Current < s.Latest }

// Check reads the database's version without changing anything.
func Check(ctx context.Context, p *goose.Provider) (Status, error) {
	cur, latest, err := p.GetVersions(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("read schema version: %w", err)
	}
	return Status{Current: cur, Latest: latest}, nil
}
