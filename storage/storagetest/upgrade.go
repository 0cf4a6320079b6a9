package storagetest

import (
	"errors"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// The schema upgrade fixture. Each backend's upgrade test writes, in version 1's tables and its
// own dialect and relative to one time now:
//
//   - client c1 and grant g1 (tenant acme, audience orders, active);
//   - token t1 (token_exchange by c1 under g1, envelope e1, audience orders): issued 10 min ago,
//     expiring in 5, revoked 2 min ago; plus a revoke audit record naming it;
//   - token t2 (client_credentials by c1): issued 5 min ago, expiring in 10;
//   - envelope e9 exchanged twice, 100 min ago (token t4, record collected) and 20 min ago
//     (token t5, expiring in 2), as a client reusing a jti after expiry could;
//   - live replay marks V1LiveKey, V1ReusedKey and V1AssertionKey.
//
// Then it migrates up and calls CheckUpgradeFromV1.
const (
	V1LiveKey      = "eie|2:c1|2:e1|orders" // exchange.replayKey's format
	V1ReusedKey    = "eie|2:c1|2:e9|orders"
	V1AssertionKey = "assertion|2:c1|a1"
	V1NewKey       = "eie|2:c1|2:e6|orders" // t6's, issued by CheckUpgradeFromV1
)

// CheckUpgradeFromV1 checks, through the storage contract, a store upgraded from the fixture:
// tokens issued before the upgrade introspect as they did, envelopes and client assertions
// used before it stay used. It issues t6 under V1NewKey at now, for the test's own checks
// after.
func CheckUpgradeFromV1(t *testing.T, s storage.Store, now time.Time) {
	t.Helper()
	ctx := t.Context()
	st, err := s.GetTokenState(ctx, "t1", now.Add(-10*time.Minute))
	if err != nil {
		t.Fatalf("GetTokenState of a token issued before the upgrade: %v", err)
	}
	if !st.ExpiresAt.Equal(now.Add(5*time.Minute)) || !st.RevokedAt.Equal(now.Add(-2*time.Minute)) ||
		st.ClientID != "c1" || st.GrantID != "g1" || st.Audience != "orders" {
		t.Errorf("t1 after the upgrade: %+v", st)
	}
	if st, err := s.GetTokenState(ctx, "t2", now.Add(-5*time.Minute)); err != nil || !st.RevokedAt.IsZero() || !st.ExpiresAt.Equal(now.Add(10*time.Minute)) {
		t.Errorf("t2 after the upgrade: %+v, %v", st, err)
	}
	if _, err := s.GetTokenState(ctx, "t4", now.Add(-100*time.Minute)); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("t4 (its record was collected before the upgrade): %v, want ErrNotFound", err)
	}
	// An exchange's issuance: its key is exchange.replayKey's, of client c1, the envelope and
	// audience orders.
	issue := func(jti, envJTI, key string) error {
		iss := makeIssuance(jti, key, "g1", now)
		iss.Audit.ClientID, iss.Audit.EnvelopeJTI, iss.Audit.Audience = "c1", envJTI, "orders"
		return s.RecordIssuance(ctx, iss)
	}
	for env, key := range map[string]string{"e1": V1LiveKey, "e9": V1ReusedKey} {
		wantErr(t, issue(storage.NewID("at"), env, key), storage.ErrConflict, "issuance with "+key+", used before the upgrade")
	}
	wantErr(t, s.MarkUsed(ctx, storage.ReplayMark{Key: V1AssertionKey, ExpiresAt: now.Add(time.Minute)}, now),
		storage.ErrConflict, "client assertion mark set before the upgrade")
	mustDo(t, issue("t6", "e6", V1NewKey), "issuance after the upgrade")
}

// The version 3 to 4 upgrade fixture. Each backend's test writes, at version 3 and relative to
// one time now: client c1 with grant g1; an audit record of event admin.bootstrap (the store
// was bootstrapped, and mandate-admin deleted since); and the issuance record of token t9
// (token_exchange, expiring in 5 minutes) by client c2 under grant g2, neither of which
// exists (version 3 deleted a client's grants with it), an hour before now. Then it migrates
// up and calls
// CheckUpgradeFromV3.

// CheckUpgradeFromV3 checks a store upgraded from the version 3 fixture: it remembers it was
// bootstrapped, t9's state says its grant and client are gone, and deleting c1 leaves g1.
func CheckUpgradeFromV3(t *testing.T, s storage.Store, now time.Time) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.GetMarker(ctx, storage.MarkerBootstrap); err != nil {
		t.Errorf("GetMarker(bootstrap) on a store bootstrapped before the upgrade: %v", err)
	}
	st, err := s.GetTokenState(ctx, "t9", now.Add(-time.Hour))
	mustDo(t, err, "GetTokenState t9")
	if !st.GrantMissing || !st.ClientMissing || st.GrantID != "g2" {
		t.Errorf("t9, whose grant and client are gone: %+v", st)
	}
	mustDo(t, s.DeleteClient(ctx, "c1"), "DeleteClient c1")
	if _, err := s.GetGrant(ctx, "g1"); err != nil {
		t.Errorf("g1 after its client was deleted: %v; want it kept", err)
	}
}
