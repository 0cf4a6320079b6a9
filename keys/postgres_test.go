package keys_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/storage/postgres"
	"github.com/mandatehq/mandate/storage/postgres/pgtest"
)

// openPostgres opens two Stores ("replicas") on one fresh, migrated schema. It skips when
// MANDATE_TEST_DATABASE_URL is unset and fails when it is set but unreachable.
func openPostgres(t *testing.T) (a, b *postgres.Store) {
	t.Helper()
	schema, _ := pgtest.Schema(t)
	url := pgtest.BaseURL(t)
	ctx := context.Background()
	open := func() *postgres.Store {
		s, err := postgres.Open(ctx, url, postgres.Options{Schema: schema, MaxConns: 2})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	a = open()
	p, err := a.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return a, open()
}

// Two replicas starting and rotating at the same moment end up agreeing on the signing key.
func TestPostgresReplicasAgree(t *testing.T) {
	ctx := context.Background()
	sa, sb := openPostgres(t)
	c := newClock()
	a := newManager(t, sa, secretA, c, testOpts)
	b := newManager(t, sb, secretA, c, testOpts)
	both := func(f func(m *keys.Manager) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, m := range []*keys.Manager{a, b} {
			wg.Go(func() { errs[i] = f(m) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	agree := func(stage string) {
		t.Helper()
		both(func(m *keys.Manager) error { return m.Refresh(ctx) })
		if a.ActiveKID() == "" || a.ActiveKID() != b.ActiveKID() {
			t.Fatalf("%s: active A %s, B %s", stage, a.ActiveKID(), b.ActiveKID())
		}
		docA, _ := a.JWKS()
		docB, _ := b.JWKS()
		if string(docA) != string(docB) {
			t.Fatalf("%s: JWKS differ:\n%s\n%s", stage, docA, docB)
		}
		tok, _ := sign(t, b, `{"sub":"alice"}`)
		verifyWithJWKS(t, docA, tok)
	}

	both(func(m *keys.Manager) error { return m.Ensure(ctx) })
	agree("start")

	c.Add(testOpts.RotateEvery)
	both(func(m *keys.Manager) error { return m.Refresh(ctx) }) // both may create a next key
	agree("rotation due")
	c.Add(testOpts.PublishAhead + time.Second)
	agree("after PublishAhead")
	list, err := a.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	active := 0
	for _, k := range list {
		if k.Status == "active" {
			active++
			if k.KID != a.ActiveKID() {
				t.Fatalf("List says %s is active, Sign uses %s", k.KID, a.ActiveKID())
			}
		}
	}
	if active != 1 {
		t.Fatalf("%d active keys in %+v", active, list)
	}
}
