package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/mandatehq/mandate/storage/postgres/pgtest"
)

const testSecret = "test-deployment-secret-0123456789abcdef"

// postgresURL returns a database URL for a fresh, empty schema of its own (dropped at the end
// of the test), or skips when MANDATE_TEST_DATABASE_URL is unset.
func postgresURL(t *testing.T) string {
	t.Helper()
	_, u := pgtest.Schema(t)
	return u
}

func TestServePostgresNeedsMigrateUpFirst(t *testing.T) {
	db := postgresURL(t)
	env := map[string]string{"MANDATE_SECRET": testSecret, "MANDATE_DATABASE_URL": db}
	getenv := func(k string) string { return env[k] }

	// Schema behind: one line that says what to run.
	err := run(context.Background(), []string{"serve", "--public-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"}, getenv, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "mandate migrate up") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("serve on an unmigrated database = %v; want one line naming `mandate migrate up`", err)
	}

	var out strings.Builder
	if err := run(context.Background(), []string{"migrate", "status"}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("migrate status: %v", err)
	}
	if !strings.Contains(out.String(), "behind") {
		t.Fatalf("migrate status before up = %q, want behind", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"migrate", "up"}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	if !strings.Contains(out.String(), "up to date") {
		t.Fatalf("migrate up printed %q", out.String())
	}

	inst := start(t, env)
	if code, _ := get(t, inst.PublicURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz on Postgres = %d", code)
	}
	if !strings.Contains(inst.Stdout.String(), "mandate-admin") {
		t.Fatalf("first start on Postgres did not print the bootstrap admin")
	}
	inst.stop(t)

	// A second replica on the same database finds everything in place.
	again := start(t, env)
	if code, _ := get(t, again.PublicURL+"/readyz"); code != http.StatusOK {
		t.Fatalf("second start /readyz = %d", code)
	}
	if strings.Contains(again.Stdout.String(), "client_secret") {
		t.Fatalf("second start printed a new bootstrap secret")
	}
}

func TestServePostgresAutoMigrateAndReplicasTogether(t *testing.T) {
	db := postgresURL(t)
	env := map[string]string{"MANDATE_SECRET": testSecret, "MANDATE_DATABASE_URL": db, "MANDATE_AUTO_MIGRATE": "true"}
	// Two replicas start at once on an empty schema: both migrate safely, exactly one creates
	// the bootstrap admin, and both serve.
	res := make(chan *instance, 2)
	for range 2 {
		go func() { res <- startNoFatal(t, env) }()
	}
	a, b := <-res, <-res
	if a == nil || b == nil {
		t.Fatalf("a replica failed to start")
	}
	created := 0
	for _, i := range []*instance{a, b} {
		if code, _ := get(t, i.PublicURL+"/readyz"); code != http.StatusOK {
			t.Fatalf("/readyz = %d", code)
		}
		if strings.Contains(i.Stdout.String(), "client_secret") {
			created++
		}
	}
	if created != 1 {
		t.Fatalf("%d replicas created the bootstrap admin, want exactly 1", created)
	}
}

func TestServePostgresUnreachableIsOneLine(t *testing.T) {
	env := map[string]string{"MANDATE_SECRET": testSecret}
	err := run(context.Background(), []string{"serve", "--database", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2"},
		func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "Postgres") {
		t.Fatalf("serve on an unreachable database = %v; want one line", err)
	}
	var ue usageError
	if errors.As(err, &ue) {
		t.Fatalf("an unreachable database is not a usage error")
	}
}
