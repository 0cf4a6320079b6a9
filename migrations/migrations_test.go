package migrations_test

import (
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/pressly/goose/v3"

	"github.com/mandatehq/mandate/migrations"
)

// versions reads the migration versions of d's folder and checks each file is a goose SQL
// migration with both directions, so a half-written file fails here and not at deploy time.
func versions(t *testing.T, d migrations.Dialect) []int64 {
	t.Helper()
	fsys, err := migrations.FS(d)
	if err != nil {
		t.Fatalf("FS(%s): %v", d, err)
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		t.Fatalf("glob %s: %v", d, err)
	}
	if len(names) == 0 {
		t.Fatalf("%s: no migrations embedded", d)
	}
	var vs []int64
	for _, name := range names {
		v, err := goose.NumericComponent(name)
		if err != nil {
			t.Errorf("%s/%s: no version number: %v", d, name, err)
			continue
		}
		if slices.Contains(vs, v) {
			t.Errorf("%s: version %d appears twice", d, v)
		}
		vs = append(vs, v)
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatalf("read %s/%s: %v", d, name, err)
		}
		for _, want := range []string{"-- +goose Up", "-- +goose Down"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s/%s: missing %q annotation", d, name, want)
			}
		}
	}
	slices.Sort(vs)
	return vs
}

// Both dialects must step through the same versions: the server reports one schema version
// whichever backend it runs on, and a migration added to one folder only would leave the
// other backend silently behind.
func TestDialectsHoldTheSameVersions(t *testing.T) {
	pg := versions(t, migrations.Postgres)
	lite := versions(t, migrations.SQLite)
	if !slices.Equal(pg, lite) {
		t.Fatalf("migration versions differ:\n  postgres: %v\n  sqlite:   %v", pg, lite)
	}
}
