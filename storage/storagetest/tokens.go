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
	{"RecordIssuanceRevokedGrant", testRecordIssuanceRevokedGrant},
	{"ConcurrentRecordIssuanceOneWinner", testRecordIssuanceRace},
	{"TokenStateFollowsGrant", testTokenStateGrant},
	{"RevokeToken", testRevokeToken},
	{"DeleteExpiredTokens", testDeleteExpiredTokens},
}

// makeIssuance is a token-exchange issuance at now. replayKey "" means no replay mark.
func makeIssuance(jti, replayKey, grantID string, now time.Time) storage.Issuance {
	iss := storage.Issuance{
		GrantID: grantID,
		Token: storage.IssuedToken{
			JTI:       jti,
			ClientID:  "cli_1",
			Subject:   "alice",
			Audience:  "orders_api",
			GrantID:   grantID,
			IssuedAt:  now,
			ExpiresAt: now.Add(5 * time.Minute),
		},
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
	}
	if replayKey != "" {
		iss.Replay = []storage.ReplayMark{{Key: replayKey, ExpiresAt: now.Add(10 * time.Minute)}}
	}
	return iss
}

// wantNoIssuance checks that nothing of a failed issuance was written.
func wantNoIssuance(t *testing.T, s storage.Store, iss storage.Issuance, what string) {
	t.Helper()
	ctx := t.Context()
	_, err := s.GetTokenState(ctx, iss.Token.JTI)
	wantErr(t, err, storage.ErrNotFound, what+": token record")
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: iss.Audit.TraceID})
	mustDo(t, err, what+": ListAudit")
	if len(items) != 0 {
		t.Errorf("%s: %d audit records written, want none", what, len(items))
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

	iss := makeIssuance("jti_1", "eie|cli_1|env_1|orders_api", "grt_1", now)
	mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance")
	st, err := s.GetTokenState(ctx, "jti_1")
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "token state after RecordIssuance", st, &storage.TokenState{IssuedToken: iss.Token})
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{TraceID: iss.Audit.TraceID})
	mustDo(t, err, "ListAudit")
	if len(items) != 1 {
		t.Fatalf("RecordIssuance wrote %d audit records, want 1", len(items))
	}
	checkEqual(t, "audit record written by RecordIssuance", &items[0], &iss.Audit)
	wantErr(t, s.MarkUsed(ctx, iss.Replay[0], now), storage.ErrConflict, "MarkUsed of the key RecordIssuance set")

	// The same envelope again: refused, and neither its token nor its audit record is kept.
	again := makeIssuance("jti_2", "eie|cli_1|env_1|orders_api", "grt_1", now)
	wantErr(t, s.RecordIssuance(ctx, again), storage.ErrConflict, "RecordIssuance with a used replay key")
	wantNoIssuance(t, s, again, "RecordIssuance with a used replay key")

	// Several marks commit together: when the second is taken the first is not left set.
	multi := makeIssuance("jti_3", "assertion|cli_1|a_3", "grt_1", now)
	multi.Replay = append(multi.Replay, iss.Replay[0])
	wantErr(t, s.RecordIssuance(ctx, multi), storage.ErrConflict, "RecordIssuance whose second replay key is used")
	wantNoIssuance(t, s, multi, "RecordIssuance whose second replay key is used")
	mustDo(t, s.MarkUsed(ctx, multi.Replay[0], now), "MarkUsed of the first key of a failed RecordIssuance (must be free)")

	// A token id is unique too, and a clash rolls back the replay mark.
	dupJTI := makeIssuance("jti_1", "eie|cli_1|env_4|orders_api", "grt_1", now)
	dupJTI.Audit.ID, dupJTI.Audit.TraceID = "evt_dup", "trace_dup"
	wantErr(t, s.RecordIssuance(ctx, dupJTI), storage.ErrConflict, "RecordIssuance with a taken jti")
	mustDo(t, s.MarkUsed(ctx, dupJTI.Replay[0], now), "MarkUsed of the key of an issuance that failed on its jti (must be free)")
	items, _, err = s.ListAudit(ctx, storage.AuditFilter{TraceID: "trace_dup"})
	mustDo(t, err, "ListAudit")
	if len(items) != 0 {
		t.Errorf("issuance that failed on its jti left %d audit records", len(items))
	}

	// client_credentials: no replay mark, no grant.
	cc := makeIssuance("jti_cc", "", "", now)
	cc.Audit.Event = "client_credentials"
	mustDo(t, s.RecordIssuance(ctx, cc), "RecordIssuance without replay mark or grant")
	st, err = s.GetTokenState(ctx, "jti_cc")
	mustDo(t, err, "GetTokenState jti_cc")
	checkEqual(t, "token state without a grant", st, &storage.TokenState{IssuedToken: cc.Token})
}

func testRecordIssuanceRevokedGrant(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withGrant(t, s, "grt_1", now)
	_, err := s.RevokeGrant(ctx, "grt_1", "sec_team", "revoked", now.Add(-time.Second))
	mustDo(t, err, "RevokeGrant")
	iss := makeIssuance("jti_1", "eie|cli_1|env_1|orders_api", "grt_1", now)
	wantErr(t, s.RecordIssuance(ctx, iss), storage.ErrConflict, "RecordIssuance under a revoked grant")
	wantNoIssuance(t, s, iss, "RecordIssuance under a revoked grant")
	mustDo(t, s.MarkUsed(ctx, iss.Replay[0], now), "MarkUsed of the key of an issuance refused for its grant (must be free)")
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
		_, err := s.GetTokenState(ctx, fmt.Sprintf("jti_%02d", i))
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
	st, err := s.GetTokenState(ctx, "jti_1")
	mustDo(t, err, "GetTokenState jti_1")
	checkEqual(t, "state of a token whose grant was revoked", st,
		&storage.TokenState{IssuedToken: iss1.Token, GrantRevokedAt: at})
	st, err = s.GetTokenState(ctx, "jti_2")
	mustDo(t, err, "GetTokenState jti_2")
	checkEqual(t, "state of a token of another grant", st, &storage.TokenState{IssuedToken: iss2.Token})

	_, err = s.GetTokenState(ctx, "jti_missing")
	wantErr(t, err, storage.ErrNotFound, "GetTokenState of an unknown jti")
}

func testRevokeToken(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	iss := makeIssuance("jti_1", "", "", now)
	other := makeIssuance("jti_2", "", "", now)
	mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance jti_1")
	mustDo(t, s.RecordIssuance(ctx, other), "RecordIssuance jti_2")

	at := now.Add(time.Minute).In(zone)
	mustDo(t, s.RevokeToken(ctx, "jti_1", at), "RevokeToken")
	want := &storage.TokenState{IssuedToken: iss.Token}
	want.RevokedAt = at
	st, err := s.GetTokenState(ctx, "jti_1")
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "revoked token", st, want)

	mustDo(t, s.RevokeToken(ctx, "jti_1", at.Add(time.Hour)), "RevokeToken of a revoked token")
	st, err = s.GetTokenState(ctx, "jti_1")
	mustDo(t, err, "GetTokenState")
	checkEqual(t, "token revoked twice (the first time stands)", st, want)

	st, err = s.GetTokenState(ctx, "jti_2")
	mustDo(t, err, "GetTokenState jti_2")
	checkEqual(t, "token not revoked", st, &storage.TokenState{IssuedToken: other.Token})

	wantErr(t, s.RevokeToken(ctx, "jti_missing", at), storage.ErrNotFound, "RevokeToken of an unknown jti")
}

func testDeleteExpiredTokens(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	exp := map[string]time.Duration{"jti_old": -time.Hour, "jti_just": -time.Second, "jti_live": time.Hour}
	for jti, d := range exp {
		iss := makeIssuance(jti, "", "", now.Add(-2*time.Hour))
		iss.Token.ExpiresAt = now.Add(d)
		mustDo(t, s.RecordIssuance(ctx, iss), "RecordIssuance "+jti)
	}
	n, err := s.DeleteExpiredTokens(ctx, now)
	mustDo(t, err, "DeleteExpiredTokens")
	if n != 2 {
		t.Errorf("DeleteExpiredTokens removed %d records, want 2", n)
	}
	for jti, d := range exp {
		_, err := s.GetTokenState(ctx, jti)
		if d > 0 {
			mustDo(t, err, "GetTokenState of a live token after the sweep")
		} else {
			wantErr(t, err, storage.ErrNotFound, "GetTokenState of "+jti+" after the sweep")
		}
	}
	n, err = s.DeleteExpiredTokens(ctx, now)
	mustDo(t, err, "DeleteExpiredTokens again")
	if n != 0 {
		t.Errorf("second DeleteExpiredTokens removed %d records, want 0", n)
	}
}
