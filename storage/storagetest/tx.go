package storagetest

import (
	"errors"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var txCases = []testCase{
	{"Commit", testTxCommit},
	{"Rollback", testTxRollback},
	{"NestedJoinsOuter", testTxNested},
	{"ConflictInsideTxIsRecoverable", testTxConflictRecoverable},
}

// A caller may meet ErrConflict inside a transaction, handle it and go on: the failed call
// leaves the transaction usable and the rest commits.
func testTxConflictRecoverable(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, fullClient("cli_taken", now)), "CreateClient")
	mustDo(t, s.CreateAudience(ctx, fullAudience("aud_taken", now, "https://taken.example/")), "CreateAudience")
	err := s.InTx(ctx, func(tx storage.Store) error {
		wantErr(t, tx.CreateClient(ctx, minimalClient("cli_taken", now)), storage.ErrConflict, "CreateClient with a taken id inside InTx")
		// A multi-statement call failing half-way leaves nothing of itself behind.
		wantErr(t, tx.CreateAudience(ctx, fullAudience("aud_half", now, "https://free.example/", "https://taken.example/")),
			storage.ErrConflict, "CreateAudience with a taken URI inside InTx")
		return tx.CreateClient(ctx, minimalClient("cli_after", now))
	})
	mustDo(t, err, "InTx that recovered from conflicts")
	_, err = s.GetClient(ctx, "cli_after")
	mustDo(t, err, "GetClient of the client created after the conflict")
	got, err := s.GetClient(ctx, "cli_taken")
	mustDo(t, err, "GetClient cli_taken")
	checkEqual(t, "client whose id a tx tried to take", got, fullClient("cli_taken", now))
	_, err = s.GetAudience(ctx, "aud_half")
	wantErr(t, err, storage.ErrNotFound, "audience whose create failed half-way inside a committed tx")
	_, err = s.GetAudienceByResource(ctx, "https://free.example/")
	wantErr(t, err, storage.ErrNotFound, "free URI of an audience whose create failed inside a committed tx")
}

func testTxCommit(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	err := s.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateClient(ctx, fullClient("cli_tx", now)); err != nil {
			return err
		}
		// The transaction reads its own writes, and read-modify-write calls run inside it.
		if _, err := tx.GetClient(ctx, "cli_tx"); err != nil {
			return err
		}
		if _, err := tx.UpdateClient(ctx, "cli_tx", func(c *storage.Client) error {
			c.Name = "Updated in tx"
			return nil
		}); err != nil {
			return err
		}
		if err := tx.CreateAudience(ctx, fullAudience("aud_tx", now, "https://tx.example/")); err != nil {
			return err
		}
		return tx.RecordIssuance(ctx, makeIssuance("jti_tx", "k_tx", "", now))
	})
	mustDo(t, err, "InTx")
	c, err := s.GetClient(ctx, "cli_tx")
	mustDo(t, err, "GetClient after commit")
	if c.Name != "Updated in tx" {
		t.Errorf("client name after commit %q, want %q", c.Name, "Updated in tx")
	}
	_, err = s.GetAudienceByResource(ctx, "https://tx.example/")
	mustDo(t, err, "GetAudienceByResource after commit")
	_, err = s.GetTokenState(ctx, "jti_tx", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState after commit")
}

func testTxRollback(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, fullClient("cli_pre", now)), "CreateClient")
	errAbort := errors.New("abort")
	mark := storage.ReplayMark{Key: "k_rollback", ExpiresAt: now.Add(time.Hour)}
	iss := makeIssuance("jti_rb", "k_rb_issuance", "", now)
	err := s.InTx(ctx, func(tx storage.Store) error {
		steps := []error{
			tx.CreateClient(ctx, fullClient("cli_rb", now)),
			tx.CreateGrant(ctx, makeGrant("grt_rb", now, grantSpec{client: "cli_rb"})),
			tx.CreateAudience(ctx, fullAudience("aud_rb", now, "https://rb.example/")),
			tx.CreateKey(ctx, makeKey("kid_rb", now)),
			tx.MarkUsed(ctx, mark, now),
			tx.AppendAudit(ctx, makeAudit("evt_rb", now, "admin.client.create", "granted", "", "", "", "", "", "trace_rb")),
			tx.RecordIssuance(ctx, iss),
			tx.DeleteClient(ctx, "cli_pre"),
		}
		for i, err := range steps {
			if err != nil {
				t.Errorf("step %d inside InTx: %v", i, err)
			}
		}
		return errAbort
	})
	wantErr(t, err, errAbort, "InTx whose fn fails")

	_, err = s.GetClient(ctx, "cli_rb")
	wantErr(t, err, storage.ErrNotFound, "client created in a rolled-back tx")
	_, err = s.GetGrant(ctx, "grt_rb")
	wantErr(t, err, storage.ErrNotFound, "grant created in a rolled-back tx")
	_, err = s.GetAudience(ctx, "aud_rb")
	wantErr(t, err, storage.ErrNotFound, "audience created in a rolled-back tx")
	keys, err := s.ListKeys(ctx)
	mustDo(t, err, "ListKeys")
	if len(keys) != 0 {
		t.Errorf("%d keys after a rolled-back tx created one", len(keys))
	}
	mustDo(t, s.MarkUsed(ctx, mark, now), "MarkUsed of a key set in a rolled-back tx (must be free)")
	wantNoIssuance(t, s, iss, "issuance in a rolled-back tx")
	mustDo(t, s.RecordIssuance(ctx, makeIssuance("jti_rb2", iss.ReplayKey, "", now)),
		"RecordIssuance with the key of an issuance rolled back (must be free)")
	audit, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: "trace_rb"})
	mustDo(t, err, "ListAudit")
	if len(audit) != 0 {
		t.Errorf("%d audit records after a rolled-back tx appended one", len(audit))
	}
	_, err = s.GetClient(ctx, "cli_pre")
	mustDo(t, err, "GetClient of the client deleted in a rolled-back tx")
}

func testTxNested(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	errAbort := errors.New("abort outer")
	err := s.InTx(ctx, func(tx storage.Store) error {
		if err := tx.InTx(ctx, func(inner storage.Store) error {
			return inner.CreateClient(ctx, fullClient("cli_inner", now))
		}); err != nil {
			t.Errorf("inner InTx: %v", err)
		}
		if _, err := tx.GetClient(ctx, "cli_inner"); err != nil {
			t.Errorf("outer tx does not see the inner InTx's write: %v", err)
		}
		return errAbort
	})
	wantErr(t, err, errAbort, "outer InTx")
	_, err = s.GetClient(ctx, "cli_inner")
	wantErr(t, err, storage.ErrNotFound, "client created by a nested InTx whose outer tx rolled back")
}
