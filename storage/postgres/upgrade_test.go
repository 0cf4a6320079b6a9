package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage/storagetest"
)

// Migration 2 moves the token records and the live envelope replay marks of version 1 onto
// the audit log. Tokens issued before the upgrade must still introspect (and stay revoked),
// and envelopes exchanged before it must stay used; Down must give version 1 its rows back.
// The fixture and the checks through the contract are storagetest's; storage/sqlite writes
// the same rows.
func TestUpgradeKeepsTokensAndReplayMarks(t *testing.T) {
	url := testURL(t)
	ctx := t.Context()
	s, err := Open(ctx, url, Options{MaxConns: testPoolSize, Schema: freshSchema(t, url)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	p, err := s.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	migrate := func(what string, fn func() error) {
		t.Helper()
		migrateMu.Lock()
		defer migrateMu.Unlock()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	migrate("UpTo 1", func() error { _, err := p.UpTo(ctx, 1); return err })

	now := time.Now().UTC().Truncate(time.Second)
	liveKey, reusedKey := storagetest.V1LiveKey, storagetest.V1ReusedKey
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := s.pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO clients (id, created_at, updated_at) VALUES ('c1', $1, $1)`, now)
	exec(`INSERT INTO grants (id, tenant, subject, client_id, audiences, not_before, expires_at, created_at)
		VALUES ('g1', 'acme', '*', 'c1', '{orders}', $1, $2, $1)`, now.Add(-time.Hour), now.Add(time.Hour))
	audit := `INSERT INTO audit_log (id, time, event, outcome, client_id, actor_sub, delegation_mode,
		audience, envelope_jti, token_jti, grant_id) VALUES ($1, $2, $3, $4, 'c1', 'alice', $5, $6, $7, $8, $9)`
	exec(audit, "evt_1", now.Add(-10*time.Minute), "token_exchange", "granted", "on_behalf_of", "orders", "e1", "t1", "g1")
	exec(audit, "evt_2", now.Add(-5*time.Minute), "client_credentials", "granted", "", "https://mandate.example", "", "t2", "")
	exec(audit, "evt_3", now.Add(-2*time.Minute), "revoke", "granted", "", "orders", "", "t1", "g1")
	// A client that reused an envelope jti after the first one expired: two exchanges, one key.
	exec(audit, "evt_4", now.Add(-100*time.Minute), "token_exchange", "granted", "on_behalf_of", "orders", "e9", "t4", "g1")
	exec(audit, "evt_5", now.Add(-20*time.Minute), "token_exchange", "granted", "service_identity", "orders", "e9", "t5", "g1")
	tok := `INSERT INTO issued_tokens (jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
		VALUES ($1, 'c1', $2, $3, $4, $5, $6, $7)`
	exec(tok, "t1", "alice", "orders", "g1", now.Add(-10*time.Minute), now.Add(5*time.Minute), now.Add(-2*time.Minute))
	exec(tok, "t2", "c1", "https://mandate.example", "", now.Add(-5*time.Minute), now.Add(10*time.Minute), nil)
	exec(tok, "t5", "c1", "orders", "g1", now.Add(-20*time.Minute), now.Add(2*time.Minute), nil)
	mark := `INSERT INTO replay_marks (key, expires_at) VALUES ($1, $2)`
	exec(mark, liveKey, now.Add(50*time.Minute))
	exec(mark, reusedKey, now.Add(40*time.Minute))
	exec(mark, storagetest.V1AssertionKey, now.Add(time.Minute))

	migrate("Up", func() error { _, err := p.Up(ctx); return err })

	storagetest.CheckUpgradeFromV1(t, s, now)

	migrate("DownTo 1", func() error { _, err := p.DownTo(ctx, 1); return err })
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM issued_tokens
		WHERE (jti = 't1' AND revoked_at IS NOT NULL AND subject = 'alice')
		   OR (jti = 't2' AND revoked_at IS NULL AND subject = 'c1')
		   OR (jti = 't5' AND subject = 'c1') OR jti = 't6'`).Scan(&n); err != nil || n != 4 {
		t.Errorf("issued_tokens after Down: %d of the 4 tokens, %v", n, err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM replay_marks WHERE key = ANY($1) AND expires_at > now()`,
		[]string{liveKey, reusedKey, storagetest.V1NewKey, storagetest.V1AssertionKey}).Scan(&n); err != nil || n != 4 {
		t.Errorf("live replay marks after Down: %d of 4, %v", n, err)
	}
	migrate("Up again", func() error { _, err := p.Up(ctx); return err })
	if _, err := s.GetTokenState(ctx, "t6", now); err != nil {
		t.Errorf("t6 after Down and Up: %v", err)
	}
}

// Migration 4: grants outlive their client, bootstrap is remembered, and a token whose grant
// and client version 3 deleted reads as such.
func TestUpgradeFromV3(t *testing.T) {
	url := testURL(t)
	ctx := t.Context()
	s, err := Open(ctx, url, Options{MaxConns: testPoolSize, Schema: freshSchema(t, url)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	p, err := s.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	migrate := func(what string, fn func() error) {
		t.Helper()
		migrateMu.Lock()
		defer migrateMu.Unlock()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	migrate("UpTo 3", func() error { _, err := p.UpTo(ctx, 3); return err })
	now := time.Now().UTC().Truncate(time.Second)
	for _, q := range []string{
		`INSERT INTO clients (id, created_at, updated_at) VALUES ('c1', $1, $1)`,
		`INSERT INTO grants (id, tenant, subject, client_id, audiences, not_before, expires_at, created_at)
			VALUES ('g1', 'acme', '*', 'c1', '{orders}', $1, $2, $1)`,
		`INSERT INTO audit_log (id, time, event, outcome, client_id) VALUES ('evt_b', $1, 'admin.bootstrap', 'granted', 'mandate-admin')`,
		`INSERT INTO audit_log (id, time, event, outcome, client_id, audience, token_jti, grant_id, token_expires_at)
			VALUES ('evt_9', $1, 'token_exchange', 'granted', 'c2', 'orders', 't9', 'g2', $2)`,
	} {
		args := []any{now.Add(-time.Hour), now.Add(5 * time.Minute)}
		if !strings.Contains(q, "$2") {
			args = args[:1]
		}
		if _, err := s.pool.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	migrate("Up", func() error { _, err := p.Up(ctx); return err })
	storagetest.CheckUpgradeFromV3(t, s, now)
	migrate("DownTo 3", func() error { _, err := p.DownTo(ctx, 3); return err })
	migrate("Up again", func() error { _, err := p.Up(ctx); return err })
}
