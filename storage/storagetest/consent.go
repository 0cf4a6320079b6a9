package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var grantRequestCases = []testCase{
	{"CreateGetDecide", testGrantRequestCRUD},
	{"DecideOnceWhenRaced", testGrantRequestRace},
	{"ExpiredCannotBeDecided", testGrantRequestExpired},
	{"ListFiltersNewestFirst", testGrantRequestList},
	{"ListPagination", testGrantRequestPagination},
	{"GoneWithTheirClient", testGrantRequestCascade},
}

var consentCases = []testCase{
	{"CreateGet", testConsentCRUD},
	{"ApprovalIsOneTransaction", testApprovalAtomic},
}

var sessionCases = []testCase{
	{"CRUD", testSessionCRUD},
	{"DeleteExpired", testSessionExpiry},
}

func makeGrantRequest(id, client string, now time.Time) *storage.GrantRequest {
	return &storage.GrantRequest{
		ID: id, ClientID: client, Tenant: "acme", Subject: "alice", AgentID: "agent_1",
		Audiences: []string{"orders_api", "crm_api"}, Scopes: []string{"orders:read"},
		Modes: []string{"on_behalf_of"}, Duration: 7 * 24 * time.Hour,
		Purpose: "Check the status of your orders ✓ <b>", State: storage.GrantRequestPending,
		CreatedAt: now.Add(-time.Minute), ExpiresAt: now.Add(10 * time.Minute),
	}
}

func testGrantRequestCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	want := makeGrantRequest("gr_1", "cli_1", now)
	mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_1", "cli_1", now)), "CreateGrantRequest")
	got, err := s.GetGrantRequest(ctx, "gr_1")
	mustDo(t, err, "GetGrantRequest")
	checkEqual(t, "GetGrantRequest after create", got, want)
	if st := got.Status(now); st != storage.GrantRequestPending {
		t.Errorf("fresh request's status %q, want pending", st)
	}
	wantErr(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_1", "cli_1", now)), storage.ErrConflict, "CreateGrantRequest with a taken id")
	_, err = s.GetGrantRequest(ctx, "gr_missing")
	wantErr(t, err, storage.ErrNotFound, "GetGrantRequest of a missing id")

	at := now.Add(time.Minute).In(zone)
	d := storage.GrantRequestDecision{State: storage.GrantRequestApproved, DecidedBy: "user:alice", DecidedAt: at, GrantID: "grt_x"}
	decided, err := s.DecideGrantRequest(ctx, "gr_1", d)
	mustDo(t, err, "DecideGrantRequest")
	want.State, want.DecidedBy, want.DecidedAt, want.GrantID = storage.GrantRequestApproved, "user:alice", at, "grt_x"
	checkEqual(t, "DecideGrantRequest's result", decided, want)
	got, err = s.GetGrantRequest(ctx, "gr_1")
	mustDo(t, err, "GetGrantRequest after decide")
	checkEqual(t, "GetGrantRequest after decide", got, want)
	if st := got.Status(now.Add(time.Hour)); st != storage.GrantRequestApproved {
		t.Errorf("approved request's status after its expiry %q, want approved", st)
	}

	// Decided once: neither a second approval nor a denial changes it.
	for _, st := range []string{storage.GrantRequestApproved, storage.GrantRequestDenied} {
		_, err = s.DecideGrantRequest(ctx, "gr_1", storage.GrantRequestDecision{State: st, DecidedBy: "admin:x", DecidedAt: at})
		wantErr(t, err, storage.ErrConflict, "DecideGrantRequest "+st+" of a decided request")
	}
	got, _ = s.GetGrantRequest(ctx, "gr_1")
	checkEqual(t, "request after refused second decisions", got, want)
	_, err = s.DecideGrantRequest(ctx, "gr_missing", d)
	wantErr(t, err, storage.ErrNotFound, "DecideGrantRequest of a missing id")

	mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_2", "cli_1", now)), "CreateGrantRequest gr_2")
	denied, err := s.DecideGrantRequest(ctx, "gr_2", storage.GrantRequestDecision{State: storage.GrantRequestDenied, DecidedBy: "user:alice", DecidedAt: at})
	mustDo(t, err, "DecideGrantRequest deny")
	if denied.State != storage.GrantRequestDenied || denied.GrantID != "" || !denied.DecidedAt.Equal(at) {
		t.Errorf("denied request = %+v", denied)
	}
}

func testGrantRequestRace(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_race", "cli_1", now)), "CreateGrantRequest")
	const n = 12
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			st := storage.GrantRequestApproved
			if i%2 == 1 {
				st = storage.GrantRequestDenied
			}
			_, errs[i] = s.DecideGrantRequest(ctx, "gr_race", storage.GrantRequestDecision{
				State: st, DecidedBy: fmt.Sprintf("user:%d", i), DecidedAt: now, GrantID: fmt.Sprintf("grt_%d", i),
			})
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Errorf("deciders %d and %d both succeeded", winner, i)
			}
			winner = i
		case !errors.Is(err, storage.ErrConflict):
			t.Errorf("decider %d: unexpected error %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no decider succeeded")
	}
	got, err := s.GetGrantRequest(ctx, "gr_race")
	mustDo(t, err, "GetGrantRequest")
	if got.DecidedBy != fmt.Sprintf("user:%d", winner) {
		t.Errorf("stored decision by %q, but decider %d won", got.DecidedBy, winner)
	}
}

func testGrantRequestExpired(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	r := makeGrantRequest("gr_old", "cli_1", now)
	r.ExpiresAt = now // expires exactly now: no longer decidable (ExpiresAt is exclusive)
	mustDo(t, s.CreateGrantRequest(ctx, r), "CreateGrantRequest")
	got, _ := s.GetGrantRequest(ctx, "gr_old")
	if st := got.Status(now); st != storage.GrantRequestExpired {
		t.Errorf("status at its expiry %q, want expired", st)
	}
	if st := got.Status(now.Add(-time.Microsecond)); st != storage.GrantRequestPending {
		t.Errorf("status just before its expiry %q, want pending", st)
	}
	_, err := s.DecideGrantRequest(ctx, "gr_old", storage.GrantRequestDecision{State: storage.GrantRequestApproved, DecidedBy: "user:alice", DecidedAt: now})
	wantErr(t, err, storage.ErrConflict, "DecideGrantRequest at its expiry")
	got, _ = s.GetGrantRequest(ctx, "gr_old")
	if got.State != storage.GrantRequestPending || !got.DecidedAt.IsZero() {
		t.Errorf("expired request changed by a refused decision: %+v", got)
	}
	// Decided a moment before its expiry is still in time.
	_, err = s.DecideGrantRequest(ctx, "gr_old", storage.GrantRequestDecision{State: storage.GrantRequestDenied, DecidedBy: "user:alice", DecidedAt: now.Add(-time.Microsecond)})
	mustDo(t, err, "DecideGrantRequest just before its expiry")
}

func testGrantRequestList(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1", "cli_2")
	type spec struct {
		client, tenant, subject string
		expired                 bool
		decide                  string
	}
	fixtures := map[string]spec{
		"gr_1": {"cli_1", "acme", "alice", false, ""},
		"gr_2": {"cli_1", "acme", "bob", false, storage.GrantRequestApproved},
		"gr_3": {"cli_2", "acme", "alice", true, ""},
		"gr_4": {"cli_2", "globex", "alice", false, storage.GrantRequestDenied},
		"gr_5": {"cli_1", "globex", "carol", false, ""},
	}
	for _, id := range shuffled([]string{"gr_1", "gr_2", "gr_3", "gr_4", "gr_5"}) {
		f := fixtures[id]
		r := makeGrantRequest(id, f.client, now)
		r.Tenant, r.Subject = f.tenant, f.subject
		if f.expired {
			r.ExpiresAt = now.Add(-time.Second)
		}
		mustDo(t, s.CreateGrantRequest(ctx, r), "CreateGrantRequest "+id)
		if f.decide != "" {
			_, err := s.DecideGrantRequest(ctx, id, storage.GrantRequestDecision{State: f.decide, DecidedBy: "admin:a", DecidedAt: now})
			mustDo(t, err, "DecideGrantRequest "+id)
		}
	}
	cases := []struct {
		name string
		f    storage.GrantRequestFilter
		want []string
	}{
		{"no filter, newest first", storage.GrantRequestFilter{}, []string{"gr_5", "gr_4", "gr_3", "gr_2", "gr_1"}},
		{"client", storage.GrantRequestFilter{ClientID: "cli_2"}, []string{"gr_4", "gr_3"}},
		{"tenant and subject", storage.GrantRequestFilter{Tenant: "acme", Subject: "alice"}, []string{"gr_3", "gr_1"}},
		{"pending", storage.GrantRequestFilter{Status: storage.GrantRequestPending, Now: now}, []string{"gr_5", "gr_1"}},
		{"expired", storage.GrantRequestFilter{Status: storage.GrantRequestExpired, Now: now}, []string{"gr_3"}},
		{"approved", storage.GrantRequestFilter{Status: storage.GrantRequestApproved, Now: now}, []string{"gr_2"}},
		{"denied", storage.GrantRequestFilter{Status: storage.GrantRequestDenied, Now: now}, []string{"gr_4"}},
		{"pending is evaluated at Now", storage.GrantRequestFilter{Tenant: "acme", Subject: "alice", Status: storage.GrantRequestPending, Now: now.Add(-time.Hour)}, []string{"gr_3", "gr_1"}},
		{"nothing", storage.GrantRequestFilter{Tenant: "initech"}, nil},
	}
	for _, c := range cases {
		items, next, err := s.ListGrantRequests(ctx, c.f)
		if err != nil {
			t.Errorf("ListGrantRequests %s: %v", c.name, err)
			continue
		}
		var ids []string
		for _, it := range items {
			ids = append(ids, it.ID)
		}
		wantIDs(t, "ListGrantRequests "+c.name, ids, c.want)
		if next != "" {
			t.Errorf("ListGrantRequests %s: next cursor on a page that is not full", c.name)
		}
	}
}

func testGrantRequestPagination(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1", "cli_2")
	var want, all []string
	for i := range 7 {
		want = append(want, fmt.Sprintf("gr_%02d_1", 6-i))
		all = append(all, fmt.Sprintf("gr_%02d_1", i), fmt.Sprintf("gr_%02d_2", i))
	}
	for _, id := range shuffled(all) {
		mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest(id, "cli_"+id[len(id)-1:], now)), "CreateGrantRequest "+id)
	}
	list := func(p storage.Page) ([]storage.GrantRequest, string, error) {
		return s.ListGrantRequests(ctx, storage.GrantRequestFilter{ClientID: "cli_1", Page: p})
	}
	checkWalk(t, "ListGrantRequests client=cli_1", list, func(r storage.GrantRequest) string { return r.ID }, want)
	checkBadCursors(t, "ListGrantRequests", list)
	_, _, err := s.ListGrantRequests(ctx, storage.GrantRequestFilter{Page: storage.Page{Cursor: storage.EncodeCursor("grants", "x")}})
	wantErr(t, err, storage.ErrBadCursor, "ListGrantRequests with a grants cursor")
}

func testGrantRequestCascade(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_1", "cli_1", now)), "CreateGrantRequest")
	mustDo(t, s.DeleteClient(ctx, "cli_1"), "DeleteClient")
	_, err := s.GetGrantRequest(ctx, "gr_1")
	wantErr(t, err, storage.ErrNotFound, "GetGrantRequest after its client was deleted")
}

func makeConsent(grantID string, now time.Time) *storage.ConsentRecord {
	return &storage.ConsentRecord{
		GrantID: grantID, RequestID: "gr_" + grantID, ApprovedBy: "user:alice", ApprovedAt: now,
		RemoteAddr: "192.0.2.7", Text: "Demo MCP server asks to act for you.\nAPIs: Orders API\nPurpose: «check orders» <script>",
	}
}

func testConsentCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	for _, id := range []string{"grt_1", "grt_2", "grt_3"} {
		mustDo(t, s.CreateGrant(ctx, makeGrant(id, now, grantSpec{})), "CreateGrant "+id)
	}
	mustDo(t, s.CreateConsent(ctx, makeConsent("grt_2", now)), "CreateConsent grt_2")
	mustDo(t, s.CreateConsent(ctx, makeConsent("grt_1", now.Add(time.Second))), "CreateConsent grt_1")
	wantErr(t, s.CreateConsent(ctx, makeConsent("grt_1", now)), storage.ErrConflict, "a second CreateConsent for one grant")

	got, err := s.GetConsents(ctx, []string{"grt_3", "grt_2", "grt_1", "grt_missing"})
	mustDo(t, err, "GetConsents")
	slices.SortFunc(got, func(a, b storage.ConsentRecord) int {
		if a.GrantID < b.GrantID {
			return -1
		}
		return 1
	})
	want := []*storage.ConsentRecord{makeConsent("grt_1", now.Add(time.Second)), makeConsent("grt_2", now)}
	if len(got) != len(want) {
		t.Fatalf("GetConsents returned %d records, want %d", len(got), len(want))
	}
	for i := range want {
		checkEqual(t, "GetConsents "+want[i].GrantID, &got[i], want[i])
	}
	if none, err := s.GetConsents(ctx, nil); err != nil || len(none) != 0 {
		t.Errorf("GetConsents of no grants: %v, %v", none, err)
	}
	// A consent record lives as long as its grant, and grants outlive their client (revoked,
	// for the audit trail): so does the record of who approved them.
	mustDo(t, s.DeleteClient(ctx, "cli_1"), "DeleteClient")
	got, err = s.GetConsents(ctx, []string{"grt_1", "grt_2"})
	mustDo(t, err, "GetConsents after the client was deleted")
	if len(got) != 2 {
		t.Errorf("%d consent records after the client was deleted, want the 2 of its grants", len(got))
	}
}

// The consent page's approval: the request's decision, the grant, its consent record and the
// audit record commit together or not at all.
func testApprovalAtomic(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	mustDo(t, s.CreateGrantRequest(ctx, makeGrantRequest("gr_1", "cli_1", now)), "CreateGrantRequest")
	approve := func(fail bool) error {
		return s.InTx(ctx, func(tx storage.Store) error {
			if _, err := tx.DecideGrantRequest(ctx, "gr_1", storage.GrantRequestDecision{
				State: storage.GrantRequestApproved, DecidedBy: "user:alice", DecidedAt: now, GrantID: "grt_1"}); err != nil {
				return err
			}
			if err := tx.CreateGrant(ctx, makeGrant("grt_1", now, grantSpec{})); err != nil {
				return err
			}
			if err := tx.CreateConsent(ctx, makeConsent("grt_1", now)); err != nil {
				return err
			}
			if err := tx.AppendAudit(ctx, makeAudit("evt_approve", now, "grant_request.approve", "granted", "", "", "", "", "", "trace_approve")); err != nil {
				return err
			}
			if fail {
				return errors.New("abort")
			}
			return nil
		})
	}
	if err := approve(true); err == nil {
		t.Fatal("InTx returned no error from an aborted fn")
	}
	got, _ := s.GetGrantRequest(ctx, "gr_1")
	if got.State != storage.GrantRequestPending {
		t.Errorf("request state after a rolled-back approval %q, want pending", got.State)
	}
	_, err := s.GetGrant(ctx, "grt_1")
	wantErr(t, err, storage.ErrNotFound, "grant of a rolled-back approval")
	if c, _ := s.GetConsents(ctx, []string{"grt_1"}); len(c) != 0 {
		t.Error("consent record of a rolled-back approval survived")
	}
	mustDo(t, approve(false), "approval")
	if err := approve(false); !errors.Is(err, storage.ErrConflict) {
		t.Errorf("second approval: %v, want ErrConflict", err)
	}
	if c, _ := s.GetConsents(ctx, []string{"grt_1"}); len(c) != 1 {
		t.Errorf("%d consent records after one approval, want 1", len(c))
	}
}

func makeSession(id string, now time.Time) *storage.Session {
	return &storage.Session{
		ID: id, Subject: "alice", Tenant: "acme", Name: "Alice Ämbler", CSRFToken: "csrf_" + id,
		LoginState: "st", LoginNonce: "nn", LoginVerifier: "vv", ReturnTo: "/consent/gr_1",
		CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(12 * time.Hour),
	}
}

func testSessionCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateSession(ctx, makeSession("ses_1", now)), "CreateSession")
	wantErr(t, s.CreateSession(ctx, makeSession("ses_1", now)), storage.ErrConflict, "CreateSession with a taken id")
	got, err := s.GetSession(ctx, "ses_1")
	mustDo(t, err, "GetSession")
	checkEqual(t, "GetSession", got, makeSession("ses_1", now))
	later := now.Add(5 * time.Minute).In(zone)
	mustDo(t, s.TouchSession(ctx, "ses_1", later), "TouchSession")
	got, _ = s.GetSession(ctx, "ses_1")
	want := makeSession("ses_1", now)
	want.LastSeenAt = later
	checkEqual(t, "GetSession after TouchSession", got, want)
	wantErr(t, s.TouchSession(ctx, "ses_missing", later), storage.ErrNotFound, "TouchSession of a missing id")
	mustDo(t, s.DeleteSession(ctx, "ses_1"), "DeleteSession")
	_, err = s.GetSession(ctx, "ses_1")
	wantErr(t, err, storage.ErrNotFound, "GetSession after DeleteSession")
	wantErr(t, s.DeleteSession(ctx, "ses_1"), storage.ErrNotFound, "DeleteSession twice")
}

func testSessionExpiry(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	fresh := makeSession("ses_fresh", now)
	old := makeSession("ses_absolute", now.Add(-13*time.Hour)) // expired at now-1h
	idle := makeSession("ses_idle", now.Add(-time.Hour))
	idle.LastSeenAt = now.Add(-time.Hour)
	for _, x := range []*storage.Session{fresh, old, idle} {
		mustDo(t, s.CreateSession(ctx, x), "CreateSession "+x.ID)
	}
	n, err := s.DeleteExpiredSessions(ctx, now, now.Add(-30*time.Minute))
	mustDo(t, err, "DeleteExpiredSessions")
	if n != 2 {
		t.Errorf("DeleteExpiredSessions removed %d, want 2", n)
	}
	if _, err := s.GetSession(ctx, "ses_fresh"); err != nil {
		t.Errorf("a live session was removed: %v", err)
	}
	for _, id := range []string{"ses_absolute", "ses_idle"} {
		_, err := s.GetSession(ctx, id)
		wantErr(t, err, storage.ErrNotFound, "GetSession of expired "+id)
	}
}
