package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/mandatehq/mandate/migrations"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/postgres"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// This file is the only place that picks a concrete storage backend.

// openStore opens the store cfg names. SQLite is migrated as it opens (it is the
// zero-setup default); Postgres must be at the embedded schema version already, unless
// --auto-migrate asks to bring it there.
func openStore(ctx context.Context, cfg *config, log *slog.Logger) (storage.Store, string, error) {
	database, maxConns, autoMigrate := cfg.Database, cfg.DatabaseMaxConns, cfg.AutoMigrate
	if !isPostgres(database) {
		// SQLite's wait for another process's lock ignores contexts: it must not outlast the
		// deadline the server puts on every call.
		s, err := sqlite.OpenWith(ctx, database, sqlite.Options{BusyTimeout: cfg.DatabaseTimeout})
		if err != nil {
			return nil, "", fmt.Errorf("open SQLite store %s: %w", database, err)
		}
		return s, "sqlite", nil
	}
	s, err := postgres.Open(ctx, database, postgres.Options{MaxConns: int32(maxConns)})
	if err != nil {
		return nil, "", fmt.Errorf("open Postgres store: %w", err)
	}
	st, err := s.MigrationStatus(ctx)
	if err != nil {
		s.Close()
		return nil, "", err
	}
	if st.Behind() {
		if !autoMigrate {
			s.Close()
			return nil, "", fmt.Errorf("database schema is at version %d, this build needs %d: run `mandate migrate up` or start with --auto-migrate", st.Current, st.Latest)
		}
		p, err := s.Migrations()
		if err == nil {
			_, err = p.Up(ctx)
		}
		if err != nil {
			s.Close()
			return nil, "", fmt.Errorf("migrate Postgres: %w", err)
		}
		log.Info("database migrated", "from", st.Current, "to", st.Latest)
	}
	return s, "postgres", nil
}

// loadMaster finds the deployment secret: MANDATE_SECRET, the file MANDATE_SECRET_FILE
// names, or (SQLite only, the zero-config default) a file generated beside the database.
func loadMaster(cfg *config, log *slog.Logger) (*secret.Master, error) {
	s := cfg.Secret
	switch {
	case s != "":
	case cfg.SecretFile != "":
		b, err := os.ReadFile(cfg.SecretFile)
		if err != nil {
			return nil, usagef("MANDATE_SECRET_FILE: %v", err)
		}
		s = strings.TrimSpace(string(b))
	default:
		path := cfg.Database + ".secret"
		var created bool
		var err error
		s, created, err = secret.LoadOrCreateFile(path)
		if err != nil {
			return nil, fmt.Errorf("deployment secret: %w", err)
		}
		if created {
			log.Warn("generated a deployment secret beside the database; set MANDATE_SECRET in production and keep this file with the database (it decrypts the signing keys)", "path", path)
		}
	}
	m, err := secret.NewMaster(s)
	if err != nil {
		return nil, usagef("deployment secret: %v", err)
	}
	return m, nil
}

// runMigrate is `mandate migrate up|status|down`.
func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	migrateSubs := [][2]string{
		{"up", "apply every pending migration (Postgres: under an advisory lock, safe with replicas)"},
		{"status", "print the schema version and whether migrations are pending"},
		{"down", "roll back the newest migration (Postgres only)"},
	}
	if len(args) > 0 && isHelp(args[0]) {
		printGroup(stdout, "migrate", migrateSubs)
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usagef("migrate: say up, status or down (mandate migrate --help)")
	}
	verb := args[0]
	if verb != "up" && verb != "status" && verb != "down" {
		return usagef("migrate: unknown action %q: up, status or down", verb)
	}
	var c config
	fe := newFlagSet("migrate "+verb, stdout)
	for _, s := range migrateSubs {
		if s[0] == verb {
			fe.describe(s[1])
		}
	}
	c.bindShared(fe)
	if err := fe.parse(args[1:], getenv); err != nil {
		return err
	}
	if !isPostgres(c.Database) {
		// SQLite migrates as it opens; status still reports, down is refused: it would drop
		// the zero-setup store's data for no benefit.
		if verb == "down" {
			return usagef("migrate down is for Postgres; delete the SQLite file to start over")
		}
		s, err := sqlite.Open(ctx, c.Database)
		if err != nil {
			return err
		}
		defer s.Close()
		st, err := s.MigrationStatus(ctx)
		if err != nil {
			return err
		}
		return printStatus(stdout, st)
	}
	s, err := postgres.Open(ctx, c.Database, postgres.Options{MaxConns: 2})
	if err != nil {
		return err
	}
	defer s.Close()
	p, err := s.Migrations()
	if err != nil {
		return err
	}
	switch verb {
	case "up":
		res, err := p.Up(ctx)
		if err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		for _, r := range res {
			fmt.Fprintf(stdout, "applied %s\n", r.Source.Path)
		}
	case "down":
		r, err := p.Down(ctx)
		if err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
		if r != nil {
			fmt.Fprintf(stdout, "rolled back %s\n", r.Source.Path)
		}
	}
	st, err := s.MigrationStatus(ctx)
	if err != nil {
		return err
	}
	return printStatus(stdout, st)
}

func printStatus(w io.Writer, st migrations.Status) error {
	state := "up to date"
	if st.Behind() {
		state = "behind: run `mandate migrate up`"
	}
	_, err := fmt.Fprintf(w, "schema version %d of %d (%s)\n", st.Current, st.Latest, state)
	return err
}
