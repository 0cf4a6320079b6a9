package storagetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var tokenCases = []testCase{
	{"RecordIssuance", testRecordIssuance},
	{"RecordIssuanceRefusesWhatIsNoIssuance", testRecordIssuanceInvalid},
	{"RecordIssuanceRevokedGrant", testRecordIssuanceRevokedGrant},
	{"ConcurrentRecordIssuanceOneWinner", testRecordIssuanceRace},
	{"RecordIssuancesRowByRow", testRecordIssuancesRows},
	{"RecordIssuancesGrantRevokedDuringBatch", testRecordIssuancesRevokedMidBatch},
	{"ConcurrentRecordIssuancesOneWinner", testRecordIssuancesRace},
	{"TokenStateFollowsGrant", testTokenStateGrant},
	{"TokenStateFollowsClient", testTokenStateClient},
	{"RevokeToken", testRevokeToken},
	{"DeleteExpiredTokens", testDeleteExpiredTokens},
}

// makeIssuance is a token-exchange issuance at now. replayKey "" means no replay key.
func makeIssuance(jti, replayKey, grantID string, now time.Time) storage.Issuance {
	return storage.Issuance{
		Audit: storage.AuditRecord{
			ID:              "evt_" + jti,
			Time:            now,
			Event:           "token_exchange",
			Outcome:         storage.OutcomeGranted,
			Reason:          "ok",
			ClientID:        "cli_1",
			AgentID:         "agent_456",
			ActorSub:        "alice",
			Tenant:          "acme",
			DelegationMode:  "on_behalf_of",
			ActorType:       "user",
			TraceID:         "trace_" + jti,
			SessionID:       "sess_789",
			Audience:        "orders_api",
			RequestedScopes: []string{"orders:read", "orders:write"},
			GrantedScopes:   []string{"orders:read"},
			EnvelopeJTI:     "env_" + jti,
			TokenJTI:        jti,
			GrantID:         grantID,
			RemoteAddr:      "192.0.2.7",
		},
		TokenExpiresAt:  now.Add(5 * time.Minute),
		ReplayKey:       replayKey,
		ReplayExpiresAt: replayExpiry(replayKey, now),
	}
}

// replayExpiry is when an envelope exchanged at now stops being accepted: its 5 minutes and
// the minute of clock skew.
func replayExpiry(key string, now time.Time) time.Time {
	if key == "" {
		return time.Time{}
	}
	return now.Add(6 * time.Minute)
}

// tokenOf is the token record GetTokenState must read back for iss.
func tokenOf(iss storage.Issuance) storage.IssuedToken {
	a := iss.Audit
	return storage.IssuedToken{JTI: a.TokenJTI, ClientID: a.ClientID, Audience: a.Audience,
		GrantID: a.GrantID, IssuedAt: a.Time, ExpiresAt: iss.TokenExpiresAt}
}

// stateOf is what GetTokenState must read for iss while nothing was revoked: the token, and
// its client as GetClient reads it now.
func stateOf(t *testing.T, s storage.Store, iss storage.Issuance) *storage.TokenState {
	t.Helper()
	st := &storage.TokenState{IssuedToken: tokenOf(iss)}
	c, err := s.GetClient(t.Context(), iss.Audit.ClientID)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		st.ClientMissing = true
	case err != nil:
		t.Fatalf("GetClient %s: %v", iss.Audit.ClientID, err)
	default:
		st.ClientCreatedAt, st.ClientDisabled, st.ClientDisabledAt = c.CreatedAt, c.Disabled, c.DisabledAt
	}
	return st
}

func withGrantRevokedAt(st *storage.TokenState, at time.Time) *storage.TokenState {
	st.GrantRevokedAt = at
	return st
}

// wantNoIssuance checks that nothing of a failed issuance was written.
func wantNoIssuance(t *testing.T, s storage.Store, iss storage.Issuance, what string) {
	t.Helper()
	ctx := t.Context()
	if iss.Audit.TokenJTI != "" {
		_, err := s.GetTokenState(ctx, iss.Audit.TokenJTI, storage.IssuedAt(iss.Audit.Time))
		wantErr(t, err, storage.ErrNotFound, what+": token record")
	}
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: iss.Audit.TraceID})
	mustDo(t, err, what+": ListAudit")
	if len(items) != 0 {
		t.Errorf("%s: %d audit records written, want none", what, len(items))
	}
}

// wantKeyUsed checks ReplayKeyUsed's answer for key.
func wantKeyUsed(t *testing.T, s storage.Store, key string, want bool, what string) {
	t.Helper()
	used, err := s.ReplayKeyUsed(t.Context(), key)
	mustDo(t, err, "ReplayKeyUsed "+what)
	if used != want {
		t.Errorf("ReplayKeyUsed %s = %v, want %v", what, used, want)
	}
}

// withGrant creates client cli_1 and an active grant for it.
func withGrant(t *testing.T, s storage.Store, id string, now time.Time) {
	t.Helper()
	withClients(t, s, now, "cli_1")
	mustDo(t, s.CreateGrant(t.Context(), makeGrant(id, now, grantSpec{})), "CreateGrant "+id)
}

func testRecordIssuance(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	const key = "eie|cli_1|env_1|orders_api"

	iss := makeIssuance("jti_1", key, "grt_1", now)
	wantKeyUsed(t, s, key, false, "before RecordIssuance")
	mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance")
	wantKeyUsed(t, s, key, true, "after RecordIssuance")
	wantKeyUsed(t, s, "eie|cli_1|env_1|billing_api", false, "another audience's key")
	st, err := s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "token state after RecordIssuance", st, stateOf(t, s, iss))
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: iss.Audit.TraceID})
	mustDo(t, err, "ListAudit")
	if len(items) != 1 {
		t.Fatalf("RecordIssuance wrote %d audit records, want 1", len(items))
	}
	checkEqual(t, "audit record written by RecordIssuance", &items[0], &iss.Audit)

	// The same key again: refused, and neither its token nor its audit record is kept.
	again := makeIssuance("jti_2", key, "grt_1", now.Add(time.Minute))
	wantErr(t, s.RecordIssuance(ctx, again), storage.ErrConflict, "RecordIssuance with a used replay key")
	wantNoIssuance(t, s, again, "RecordIssuance with a used replay key")

	// Replay marks are a namespace of their own.
	mustDo(t, s.MarkUsed(ctx, storage.ReplayMark{Key: key, ExpiresAt: now.Add(time.Minute)}, now),
		"MarkUsed of a key an issuance used")

	// The key stays used while the envelope it guards is live, whatever the sweep does.
	_, err = s.DeleteExpiredReplayMarks(ctx, iss.ReplayExpiresAt.Add(-time.Second))
	mustDo(t, err, "DeleteExpiredReplayMarks before the key's expiry")
	wantErr(t, s.RecordIssuance(ctx, again), storage.ErrConflict, "RecordIssuance with a used replay key after a sweep")

	// The token is found by its jti in the second of its iat, not in another.
	for _, iat := range []time.Time{storage.IssuedAt(now).Add(-time.Second), storage.IssuedAt(now).Add(time.Second)} {
		_, err = s.GetTokenState(ctx, "jti_1", iat)
		wantErr(t, err, storage.ErrNotFound, "GetTokenState with iat "+iat.Format(time.RFC3339)+" for a token issued at "+now.Format(time.RFC3339Nano))
		wantErr(t, s.RevokeToken(ctx, "jti_1", iat, now), storage.ErrNotFound, "RevokeToken with another second's iat")
	}

	// A record's id is unique.
	dupID := makeIssuance("jti_5", "", "grt_1", now)
	dupID.Audit.ID = iss.Audit.ID
	wantErr(t, s.RecordIssuance(ctx, dupID), storage.ErrConflict, "RecordIssuance with a taken audit id")
	wantNoIssuance(t, s, dupID, "RecordIssuance with a taken audit id")

	// Once what it guards has expired, the sweep frees the key (the envelope is refused as
	// expired long before a client could reuse its jti).
	n, err := s.DeleteExpiredReplayMarks(ctx, iss.ReplayExpiresAt.Add(time.Second))
	mustDo(t, err, "DeleteExpiredReplayMarks after the key's expiry")
	if n < 1 {
		t.Errorf("DeleteExpiredReplayMarks after the key's expiry removed %d, want the key", n)
	}
	wantKeyUsed(t, s, key, false, "after its expiry and a sweep")
	reused := makeIssuance("jti_reused", key, "grt_1", now.Add(time.Hour))
	mustDo(t, s.RecordIssuance(ctx, reused), "RecordIssuance with a key freed by the sweep")
	wantKeyUsed(t, s, key, true, "taken again")

	// client_credentials: no replay key, no grant; any number of issuances go without a key.
	for _, jti := range []string{"jti_cc1", "jti_cc2"} {
		cc := makeIssuance(jti, "", "", now)
		cc.Audit.Event = "client_credentials"
		mustDo(t, s.RecordIssuance(ctx, cc), "RecordIssuance without replay key or grant")
		st, err = s.GetTokenState(ctx, jti, storage.IssuedAt(now))
		mustDo(t, err, "GetTokenState "+jti)
		checkEqual(t, "token state without a grant", st, stateOf(t, s, cc))
	}
	wantKeyUsed(t, s, "", false, "the empty key, after issuances without one")

	// Other records may name the token (a revocation's does); they are not issuances.
	other := storage.AuditRecord{ID: "evt_rev", Time: now.Add(time.Second), Event: "revoke",
		Outcome: storage.OutcomeGranted, ClientID: "cli_1", TokenJTI: "jti_1", GrantID: "grt_1"}
	mustDo(t, s.AppendAudit(ctx, &other), "AppendAudit of a record naming an issued token")
	st, err = s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState after another record named the token")
	checkEqual(t, "token state after another record named the token", st, stateOf(t, s, iss))
	mustDo(t, s.AppendAudit(ctx, &storage.AuditRecord{ID: "evt_x", Time: now, Event: "revoke",
		Outcome: storage.OutcomeDenied, TokenJTI: "jti_unknown"}), "AppendAudit naming an unknown token")
	_, err = s.GetTokenState(ctx, "jti_unknown", storage.IssuedAt(now))
	wantErr(t, err, storage.ErrNotFound, "GetTokenState of a jti only a plain audit record names")
}

func testRecordIssuanceInvalid(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	for what, edit := range map[string]func(*storage.Issuance){
		"without a token jti":                 func(i *storage.Issuance) { i.Audit.TokenJTI = "" },
		"without an expiry":                   func(i *storage.Issuance) { i.TokenExpiresAt = time.Time{} },
		"of a denied decision":                func(i *storage.Issuance) { i.Audit.Outcome = storage.OutcomeDenied },
		"with a replay key without an expiry": func(i *storage.Issuance) { i.ReplayExpiresAt = time.Time{} },
	} {
		iss := makeIssuance("jti_bad", "eie|bad", "", now)
		edit(&iss)
		if err := s.RecordIssuance(ctx, iss); err == nil || errors.Is(err, storage.ErrConflict) {
			t.Errorf("RecordIssuance %s: err = %v, want a plain error", what, err)
		}
		wantNoIssuance(t, s, iss, "RecordIssuance "+what)
	}
}

func testRecordIssuanceRevokedGrant(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_2", now, grantSpec{})), "CreateGrant grt_2")
	_, err := s.RevokeGrant(ctx, "grt_1", "sec_team", "revoked", now.Add(-time.Second))
	mustDo(t, err, "RevokeGrant")
	iss := makeIssuance("jti_1", "eie|cli_1|env_1|orders_api", "grt_1", now)
	wantErr(t, s.RecordIssuance(ctx, iss), storage.ErrConflict, "RecordIssuance under a revoked grant")
	wantNoIssuance(t, s, iss, "RecordIssuance under a revoked grant")
	gone := makeIssuance("jti_2", "eie|cli_1|env_2|orders_api", "grt_missing", now)
	wantErr(t, s.RecordIssuance(ctx, gone), storage.ErrConflict, "RecordIssuance under a grant that does not exist")
	wantNoIssuance(t, s, gone, "RecordIssuance under a grant that does not exist")

	// The refused issuances used nothing up.
	ok := makeIssuance("jti_1", iss.ReplayKey, "grt_2", now)
	mustDo(t, s.RecordIssuance(ctx, ok), "RecordIssuance with the jti and key of a refused issuance")
}

// 16 exchanges of one envelope at once: one token, one audit record.
func testRecordIssuanceRace(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			iss := makeIssuance(fmt.Sprintf("jti_%02d", i), "eie|cli_1|env_race|orders_api", "grt_1", now)
			iss.Audit.TraceID = "trace_race"
			<-start
			errs[i] = s.RecordIssuance(ctx, iss)
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Errorf("RecordIssuance racers %d and %d both succeeded", winner, i)
			}
			winner = i
		case !errors.Is(err, storage.ErrConflict):
			t.Errorf("RecordIssuance racer %d: unexpected error %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no RecordIssuance racer succeeded: %v", errs)
	}
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: "trace_race"})
	mustDo(t, err, "ListAudit")
	if len(items) != 1 || items[0].TokenJTI != fmt.Sprintf("jti_%02d", winner) {
		t.Errorf("after the race the audit log holds %d records (want 1, for racer %d): %+v", len(items), winner, items)
	}
	for i := range n {
		_, err := s.GetTokenState(ctx, fmt.Sprintf("jti_%02d", i), storage.IssuedAt(now))
		if i == winner {
			mustDo(t, err, "GetTokenState of the winner")
		} else {
			wantErr(t, err, storage.ErrNotFound, fmt.Sprintf("GetTokenState of losing racer %d", i))
		}
	}
}

func testTokenStateGrant(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_2", now, grantSpec{})), "CreateGrant grt_2")
	iss1 := makeIssuance("jti_1", "k1", "grt_1", now)
	iss2 := makeIssuance("jti_2", "k2", "grt_2", now)
	mustDo(t, s.RecordIssuance(ctx, iss1), "RecordIssuance jti_1")
	mustDo(t, s.RecordIssuance(ctx, iss2), "RecordIssuance jti_2")

	at := now.Add(time.Minute).In(zone)
	_, err := s.RevokeGrant(ctx, "grt_1", "sec_team", "", at)
	mustDo(t, err, "RevokeGrant")
	st, err := s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState jti_1")
	checkEqual(t, "state of a token whose grant was revoked", st,
		withGrantRevokedAt(stateOf(t, s, iss1), at))
	st, err = s.GetTokenState(ctx, "jti_2", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState jti_2")
	checkEqual(t, "state of a token of another grant", st, stateOf(t, s, iss2))

	_, err = s.GetTokenState(ctx, "jti_missing", storage.IssuedAt(now))
	wantErr(t, err, storage.ErrNotFound, "GetTokenState of an unknown jti")
}

// GetTokenState reads the client a token was issued to as it is now: disabled (and since
// when), deleted, or replaced by a new client with the same id.
func testTokenStateClient(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now.Add(-time.Hour), "cli_1")
	iss := makeIssuance("jti_1", "", "", now)
	mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance")
	state := func(what string) *storage.TokenState {
		t.Helper()
		st, err := s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
		mustDo(t, err, "GetTokenState "+what)
		return st
	}
	want := &storage.TokenState{IssuedToken: tokenOf(iss), ClientCreatedAt: now.Add(-time.Hour)}
	checkEqual(t, "token of an enabled client", state("of an enabled client"), want)

	disabledAt := now.Add(time.Minute).In(zone)
	_, err := s.UpdateClient(ctx, "cli_1", func(c *storage.Client) error {
		c.Disabled, c.DisabledAt = true, disabledAt
		return nil
	})
	mustDo(t, err, "UpdateClient (disable)")
	want.ClientDisabled, want.ClientDisabledAt = true, disabledAt
	checkEqual(t, "token of a disabled client", state("of a disabled client"), want)

	mustDo(t, s.DeleteClient(ctx, "cli_1"), "DeleteClient")
	checkEqual(t, "token of a deleted client", state("of a deleted client"),
		&storage.TokenState{IssuedToken: tokenOf(iss), ClientMissing: true})

	withClients(t, s, now.Add(time.Hour), "cli_1")
	checkEqual(t, "token of a client whose id was taken again", state("after the id was taken again"),
		&storage.TokenState{IssuedToken: tokenOf(iss), ClientCreatedAt: now.Add(time.Hour)})
}

func testRevokeToken(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	iss := makeIssuance("jti_1", "", "", now)
	other := makeIssuance("jti_2", "", "", now)
	mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance jti_1")
	mustDo(t, s.RecordIssuance(ctx, other), "RecordIssuance jti_2")

	at := now.Add(time.Minute).In(zone)
	mustDo(t, s.RevokeToken(ctx, "jti_1", storage.IssuedAt(now), at), "RevokeToken")
	want := stateOf(t, s, iss)
	want.RevokedAt = at
	st, err := s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "revoked token", st, want)

	mustDo(t, s.RevokeToken(ctx, "jti_1", storage.IssuedAt(now), at.Add(time.Hour)), "RevokeToken of a revoked token")
	st, err = s.GetTokenState(ctx, "jti_1", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "token revoked twice (the first time stands)", st, want)

	st, err = s.GetTokenState(ctx, "jti_2", storage.IssuedAt(now))
	mustDo(t, err, "GetTokenState jti_2")
	checkEqual(t, "token not revoked", st, stateOf(t, s, other))

	wantErr(t, s.RevokeToken(ctx, "jti_missing", storage.IssuedAt(now), at), storage.ErrNotFound, "RevokeToken of an unknown jti")
}

// The sweep forgets the revocations of expired tokens; their issuances stay, being audit
// records, and still read as expired.
func testDeleteExpiredTokens(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	exp := map[string]time.Duration{"jti_old": -time.Hour, "jti_just": -time.Second, "jti_live": time.Hour, "jti_kept": -time.Hour}
	revokedAt := now.Add(-3 * time.Hour).In(zone)
	for jti, d := range exp {
		iss := makeIssuance(jti, "", "", now.Add(-4*time.Hour))
		iss.TokenExpiresAt = now.Add(d)
		mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance "+jti)
		if jti != "jti_kept" {
			mustDo(t, s.RevokeToken(ctx, jti, storage.IssuedAt(iss.Audit.Time), revokedAt), "RevokeToken "+jti)
		}
	}
	n, err := s.DeleteExpiredTokens(ctx, now)
	mustDo(t, err, "DeleteExpiredTokens")
	if n != 2 {
		t.Errorf("DeleteExpiredTokens removed %d revocations, want 2", n)
	}
	for jti, d := range exp {
		st, err := s.GetTokenState(ctx, jti, storage.IssuedAt(now.Add(-4*time.Hour)))
		mustDo(t, err, "GetTokenState of "+jti+" after the sweep")
		if !st.ExpiresAt.Equal(now.Add(d)) {
			t.Errorf("%s expires at %v after the sweep, want %v", jti, st.ExpiresAt, now.Add(d))
		}
		if live := d > 0; live != !st.RevokedAt.IsZero() {
			t.Errorf("%s after the sweep: revoked at %v (live: %v)", jti, st.RevokedAt, live)
		}
	}
	n, err = s.DeleteExpiredTokens(ctx, now)
	mustDo(t, err, "DeleteExpiredTokens again")
	if n != 0 {
		t.Errorf("second DeleteExpiredTokens removed %d revocations, want 0", n)
	}
}

// A batch (group commit) keeps each row's rules on its own: a replay or a revoked grant fails
// that row, never its neighbours, and what a failed row would have used stays free.
func testRecordIssuancesRows(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_2", now, grantSpec{})), "CreateGrant grt_2")
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_revoked", now, grantSpec{})), "CreateGrant grt_revoked")
	_, err := s.RevokeGrant(ctx, "grt_revoked", "sec_team", "", now)
	mustDo(t, err, "RevokeGrant")
	used := makeIssuance("jti_used", "eie|used", "grt_1", now)
	mustDo(t, s.RecordIssuance(ctx, used), "RecordIssuance before the batch")

	if errs := s.RecordIssuances(ctx, nil); len(errs) != 0 {
		t.Errorf("RecordIssuances of nothing = %v, want no results", errs)
	}

	invalid := makeIssuance("jti_invalid", "eie|invalid", "", now)
	invalid.TokenExpiresAt = time.Time{}
	// The batch's second use of a key, though its jti and id sort first: the first row wins.
	second := makeIssuance("jti_a2", "eie|twice", "grt_2", now)
	second.Audit.ID = "evt_a2"
	batch := []struct {
		iss  storage.Issuance
		want error // nil: committed; ErrConflict; errAny: a plain error
	}{
		{makeIssuance("jti_a", "eie|a", "grt_1", now), nil},
		{makeIssuance("jti_replay", "eie|used", "grt_1", now), storage.ErrConflict},
		{makeIssuance("jti_b", "eie|twice", "grt_1", now), nil},
		{second, storage.ErrConflict},
		{makeIssuance("jti_revoked", "eie|revoked", "grt_revoked", now), storage.ErrConflict},
		{makeIssuance("jti_gone", "eie|gone", "grt_missing", now), storage.ErrConflict},
		{invalid, errAny},
		{makeIssuance("jti_cc", "", "", now), nil},
		{makeIssuance("jti_c", "eie|c", "grt_2", now), nil},
	}
	in := make([]storage.Issuance, len(batch))
	for i := range batch {
		in[i] = batch[i].iss
	}
	errs := s.RecordIssuances(ctx, in)
	if len(errs) != len(batch) {
		t.Fatalf("RecordIssuances answered %d results for %d issuances", len(errs), len(batch))
	}
	for i, b := range batch {
		what := "RecordIssuances row " + b.iss.Audit.TokenJTI + " (" + b.iss.Audit.ID + ")"
		switch {
		case b.want == nil:
			mustDo(t, errs[i], what)
			st, err := s.GetTokenState(ctx, b.iss.Audit.TokenJTI, storage.IssuedAt(b.iss.Audit.Time))
			mustDo(t, err, "GetTokenState after "+what)
			checkEqual(t, "token state after "+what, st, stateOf(t, s, b.iss))
			wantKeyUsed(t, s, b.iss.ReplayKey, b.iss.ReplayKey != "", "the key of "+what)
		case b.want == errAny:
			if errs[i] == nil || errors.Is(errs[i], storage.ErrConflict) {
				t.Errorf("%s: err = %v, want a plain error", what, errs[i])
			}
			wantNoIssuance(t, s, b.iss, what)
		default:
			wantErr(t, errs[i], b.want, what)
			wantNoIssuance(t, s, b.iss, what)
		}
	}

	// What the refused rows would have used is free.
	again := []storage.Issuance{
		makeIssuance("jti_revoked", "eie|revoked", "grt_1", now),
		makeIssuance("jti_gone", "eie|gone", "grt_2", now),
	}
	for i, err := range s.RecordIssuances(ctx, again) {
		mustDo(t, err, "RecordIssuances with the jti and key of a refused row "+again[i].Audit.TokenJTI)
	}
}

// A revocation that commits while a batch waits for its grant: that grant's rows fail, the
// others commit. The revocation holds its transaction open until the batch has been started,
// so the batch has to wait for it (on Postgres for the grant's row lock, on SQLite for the
// write lock) and then decide on the committed revocation.
func testRecordIssuancesRevokedMidBatch(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_2", now, grantSpec{})), "CreateGrant grt_2")
	batch := []storage.Issuance{
		makeIssuance("jti_1", "eie|1", "grt_1", now),
		makeIssuance("jti_2", "eie|2", "grt_2", now),
		makeIssuance("jti_3", "eie|3", "grt_1", now),
		makeIssuance("jti_4", "eie|4", "grt_2", now),
	}
	started := make(chan struct{})
	var errs []error
	done := make(chan struct{})
	err := s.InTx(ctx, func(tx storage.Store) error {
		if _, err := tx.RevokeGrant(ctx, "grt_2", "sec_team", "", now); err != nil {
			return err
		}
		go func() {
			defer close(done)
			close(started)
			errs = s.RecordIssuances(ctx, batch)
		}()
		<-started
		time.Sleep(200 * time.Millisecond) // let the batch reach the lock the revocation holds
		return nil
	})
	mustDo(t, err, "RevokeGrant in a transaction")
	<-done
	for i, iss := range batch {
		what := "RecordIssuances row " + iss.Audit.TokenJTI + " of " + iss.Audit.GrantID
		if iss.Audit.GrantID == "grt_2" {
			wantErr(t, errs[i], storage.ErrConflict, what+" (revoked during the batch)")
			wantNoIssuance(t, s, iss, what)
			continue
		}
		mustDo(t, errs[i], what)
		_, err := s.GetTokenState(ctx, iss.Audit.TokenJTI, storage.IssuedAt(iss.Audit.Time))
		mustDo(t, err, "GetTokenState after "+what)
	}
}

// Batches from several replicas race for one envelope: exactly one row wins in all of them.
func testRecordIssuancesRace(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	const n, per = 4, 3
	errs := make([][]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			var batch []storage.Issuance
			for j := range per {
				// Each batch holds the contested key and keys of its own, in both orders.
				key := fmt.Sprintf("eie|own_%d_%d", i, j)
				if j == (i % per) {
					key = "eie|contested"
				}
				batch = append(batch, makeIssuance(fmt.Sprintf("jti_%d_%d", i, j), key, "grt_1", now))
			}
			<-start
			errs[i] = s.RecordIssuances(ctx, batch)
		})
	}
	close(start)
	wg.Wait()
	winners := 0
	for i := range n {
		for j := range per {
			err := errs[i][j]
			if j != i%per {
				mustDo(t, err, fmt.Sprintf("batch %d row %d (a key of its own)", i, j))
				continue
			}
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, storage.ErrConflict):
				t.Errorf("batch %d, contested row: %v", i, err)
			}
		}
	}
	if winners != 1 {
		t.Errorf("%d batches issued the contested key, want exactly 1", winners)
	}
}

// errAny stands for "some error, neither ErrConflict nor nil" in tables of expected outcomes.
var errAny = errors.New("any plain error")
