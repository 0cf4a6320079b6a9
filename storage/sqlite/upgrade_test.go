package sqlite_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage/storagetest"
)

// Migration 2 moves the token records and the live envelope replay marks of version 1 onto
// the audit log. Tokens issued before the upgrade must still introspect (and stay revoked),
// and envelopes exchanged before it must stay used; Down must give version 1 its rows back.
// The fixture and the checks through the contract are storagetest's; storage/postgres writes
// the same rows.
func TestUpgradeKeepsTokensAndReplayMarks(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "m.db")
	db, p := rawProvider(t, path)
	if _, err := p.UpTo(ctx, 1); err != nil {
		t.Fatalf("UpTo 1: %v", err)
	}

	now := time.Now().UTC().Truncate(time.Second)
	us := func(d time.Duration) int64 { return now.Add(d).UnixMicro() }
	liveKey, reusedKey := storagetest.V1LiveKey, storagetest.V1ReusedKey
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`INSERT INTO clients (id, created_at, updated_at) VALUES ('c1', ?, ?)`, us(0), us(0))
	exec(`INSERT INTO grants (id, tenant, subject, client_id, audiences, not_before, expires_at, created_at)
		VALUES ('g1', 'acme', '*', 'c1', '["orders"]', ?, ?, ?)`, us(-time.Hour), us(time.Hour), us(0))
	audit := `INSERT INTO audit_log (id, time, event, outcome, client_id, actor_sub, delegation_mode,
		audience, envelope_jti, token_jti, grant_id) VALUES (?, ?, ?, ?, 'c1', 'alice', ?, ?, ?, ?, ?)`
	exec(audit, "evt_1", us(-10*time.Minute), "token_exchange", "granted", "on_behalf_of", "orders", "e1", "t1", "g1")
	exec(audit, "evt_2", us(-5*time.Minute), "client_credentials", "granted", "", "https://mandate.example", "", "t2", "")
	exec(audit, "evt_3", us(-2*time.Minute), "revoke", "granted", "", "orders", "", "t1", "g1")
	// A client that reused an envelope jti after the first one expired: two exchanges, one key.
	exec(audit, "evt_4", us(-100*time.Minute), "token_exchange", "granted", "on_behalf_of", "orders", "e9", "t4", "g1")
	exec(audit, "evt_5", us(-20*time.Minute), "token_exchange", "granted", "service_identity", "orders", "e9", "t5", "g1")
	tok := `INSERT INTO issued_tokens (jti, client_id, subject, audience, grant_id, issued_at, expires_at, revoked_at)
		VALUES (?, 'c1', ?, ?, ?, ?, ?, ?)`
	exec(tok, "t1", "alice", "orders", "g1", us(-10*time.Minute), us(5*time.Minute), us(-2*time.Minute))
	exec(tok, "t2", "c1", "https://mandate.example", "", us(-5*time.Minute), us(10*time.Minute), nil)
	exec(tok, "t5", "c1", "orders", "g1", us(-20*time.Minute), us(2*time.Minute), nil)
	mark := `INSERT INTO replay_marks (key, expires_at) VALUES (?, ?)`
	exec(mark, liveKey, us(50*time.Minute))
	exec(mark, reusedKey, us(40*time.Minute))
	exec(mark, storagetest.V1AssertionKey, us(time.Minute))

	s := open(t, path) // migrates up
	storagetest.CheckUpgradeFromV1(t, s, now)

	if _, err := p.DownTo(ctx, 1); err != nil {
		t.Fatalf("DownTo 1: %v", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM issued_tokens
		WHERE (jti = 't1' AND revoked_at IS NOT NULL AND subject = 'alice')
		   OR (jti = 't2' AND revoked_at IS NULL AND subject = 'c1')
		   OR (jti = 't5' AND subject = 'c1') OR jti = 't6'`).Scan(&n); err != nil || n != 4 {
		t.Errorf("issued_tokens after Down: %d of the 4 tokens, %v", n, err)
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM replay_marks
		WHERE key IN (?, ?, ?, ?) AND expires_at > ?`, liveKey, reusedKey, storagetest.V1NewKey,
		storagetest.V1AssertionKey, time.Now().UnixMicro()).Scan(&n); err != nil || n != 4 {
		t.Errorf("live replay marks after Down: %d of 4, %v", n, err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("Up again: %v", err)
	}
	if _, err := s.GetTokenState(ctx, "t6", now); err != nil {
		t.Errorf("t6 after Down and Up: %v", err)
	}
}

// Migration 4: grants outlive their client, bootstrap is remembered, and a token whose grant
// and client version 3 deleted reads as such.
func TestUpgradeFromV3(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "m.db")
	db, p := rawProvider(t, path)
	if _, err := p.UpTo(ctx, 3); err != nil {
		t.Fatalf("UpTo 3: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	us := func(d time.Duration) int64 { return now.Add(d).UnixMicro() }
	for _, q := range []string{
		`INSERT INTO clients (id, created_at, updated_at) VALUES ('c1', ?1, ?1)`,
		`INSERT INTO grants (id, tenant, subject, client_id, audiences, not_before, expires_at, created_at)
			VALUES ('g1', 'acme', '*', 'c1', '["orders"]', ?1, ?2, ?1)`,
		`INSERT INTO audit_log (id, time, event, outcome, client_id) VALUES ('evt_b', ?1, 'admin.bootstrap', 'granted', 'mandate-admin')`,
		`INSERT INTO audit_log (id, time, event, outcome, client_id, audience, token_jti, grant_id, token_expires_at)
			VALUES ('evt_9', ?1, 'token_exchange', 'granted', 'c2', 'orders', 't9', 'g2', ?2)`,
	} {
		if _, err := db.ExecContext(ctx, q, us(-time.Hour), us(5*time.Minute)); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s := open(t, path) // migrates up
	storagetest.CheckUpgradeFromV3(t, s, now)
	if _, err := p.DownTo(ctx, 3); err != nil {
		t.Fatalf("DownTo 3: %v", err)
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("Up again: %v", err)
	}
}
