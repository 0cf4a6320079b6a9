package storagetest

import (
	"cmp"

	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var auditCases = []testCase{
	{"ListFilters", testAuditFilters},
	{"ListPagination", testAuditPagination},
	{"FullRecordRoundTrip", testAuditRoundTrip},
	{"PruneRemovesWholeDays", testPruneAudit},
	{"ListAcrossMonths", testAuditAcrossMonths},
}

func makeAudit(id string, at time.Time, event, outcome, client, actor, agent, tenant, aud, trace string) *storage.AuditRecord {
	return &storage.AuditRecord{
		ID: id, Time: at, Event: event, Outcome: outcome, ClientID: client, ActorSub: actor,
		AgentID: agent, Tenant: tenant, Audience: aud, TraceID: trace,
	}
}

func testAuditFilters(t *testing.T, s storage.Store) {
	ctx := t.Context()
	base := testNow().Truncate(time.Second)
	at := func(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }
	records := []*storage.AuditRecord{
		makeAudit("evt_1", at(1), "token_exchange", "granted", "cli_1", "alice", "ag_1", "t1", "api1", "tr_1"),
		makeAudit("evt_2", at(2), "token_exchange", "denied", "cli_1", "bob", "ag_2", "t1", "api2", "tr_2"),
		makeAudit("evt_3", at(3), "client_credentials", "granted", "cli_2", "", "", "t2", "api1", "tr_3"),
		// Same time as evt_3: the id breaks the tie, newest (greatest) id first.
		makeAudit("evt_4", at(3), "revoke", "granted", "cli_2", "alice", "ag_1", "t2", "api3", "tr_3"),
		makeAudit("evt_5", at(4), "admin.client.create", "granted", "admin", "admin_sub", "", "", "", "tr_4"),
		makeAudit("evt_6", at(5), "token_exchange", "error", "cli_1", "alice", "ag_1", "t1", "api1", "tr_5"),
	}
	for _, i := range []int{3, 0, 5, 1, 4, 2} { // not in time order
		mustDo(t, s.AppendAudit(ctx, records[i]), "AppendAudit "+records[i].ID)
	}
	cases := []struct {
		name string
		f    storage.AuditFilter
		want []string
	}{
		{"no filter, newest first", storage.AuditFilter{}, []string{"evt_6", "evt_5", "evt_4", "evt_3", "evt_2", "evt_1"}},
		{"event", storage.AuditFilter{Event: "token_exchange"}, []string{"evt_6", "evt_2", "evt_1"}},
		{"outcome", storage.AuditFilter{Outcome: "granted"}, []string{"evt_5", "evt_4", "evt_3", "evt_1"}},
		{"client", storage.AuditFilter{ClientID: "cli_1"}, []string{"evt_6", "evt_2", "evt_1"}},
		{"actor", storage.AuditFilter{ActorSub: "alice"}, []string{"evt_6", "evt_4", "evt_1"}},
		{"agent", storage.AuditFilter{AgentID: "ag_2"}, []string{"evt_2"}},
		{"tenant", storage.AuditFilter{Tenant: "t2"}, []string{"evt_4", "evt_3"}},
		{"audience", storage.AuditFilter{Audience: "api1"}, []string{"evt_6", "evt_3", "evt_1"}},
		{"trace", storage.AuditFilter{TraceID: "tr_3"}, []string{"evt_4", "evt_3"}},
		{"since is inclusive", storage.AuditFilter{Since: at(3).In(zone)}, []string{"evt_6", "evt_5", "evt_4", "evt_3"}},
		{"until is exclusive", storage.AuditFilter{Until: at(3).In(zone)}, []string{"evt_2", "evt_1"}},
		{"since and until", storage.AuditFilter{Since: at(2), Until: at(4)}, []string{"evt_4", "evt_3", "evt_2"}},
		{"since a microsecond after", storage.AuditFilter{Since: at(4).Add(time.Microsecond)}, []string{"evt_6"}},
		{"event and actor", storage.AuditFilter{Event: "token_exchange", ActorSub: "alice"}, []string{"evt_6", "evt_1"}},
		{"nothing matches", storage.AuditFilter{Outcome: "denied", Tenant: "t2"}, nil},
	}
	for _, c := range cases {
		items, next, err := s.ListAudit(ctx, c.f)
		if err != nil {
			t.Errorf("ListAudit %s: %v", c.name, err)
			continue
		}
		wantIDs(t, "ListAudit "+c.name, auditIDs(items), c.want)
		if next != "" {
			t.Errorf("ListAudit %s: next cursor %q on a page that is not full", c.name, next)
		}
	}
}

func testAuditPagination(t *testing.T, s storage.Store) {
	ctx := t.Context()
	base := testNow()
	// Ties in time across page boundaries: the cursor must carry the id as well.
	offsets := map[string]time.Duration{
		"evt_a": 0, "evt_b": 0, "evt_c": time.Second, "evt_d": time.Second,
		"evt_e": time.Second, "evt_f": 2 * time.Second, "evt_g": 3 * time.Second,
	}
	var mine []*storage.AuditRecord
	for _, id := range shuffled([]string{"evt_a", "evt_b", "evt_c", "evt_d", "evt_e", "evt_f", "evt_g"}) {
		r := makeAudit(id, base.Add(offsets[id]), "token_exchange", "granted", "cli_1", "alice", "", "t1", "api1", "")
		mine = append(mine, r)
		mustDo(t, s.AppendAudit(ctx, r), "AppendAudit "+id)
		// Another client's record at the same time, interleaved: the filter composes with
		// the cursor.
		noise := makeAudit(id+"_other", r.Time, "token_exchange", "granted", "cli_2", "bob", "", "t1", "api1", "")
		mustDo(t, s.AppendAudit(ctx, noise), "AppendAudit "+noise.ID)
	}
	slices.SortFunc(mine, func(a, b *storage.AuditRecord) int {
		return cmp.Or(b.Time.Compare(a.Time), cmp.Compare(b.ID, a.ID))
	})
	var want []string
	for _, r := range mine {
		want = append(want, r.ID)
	}
	list := func(p storage.Page) ([]storage.AuditRecord, string, error) {
		return s.ListAudit(ctx, storage.AuditFilter{ClientID: "cli_1", Page: p})
	}
	checkWalk(t, "ListAudit client=cli_1", list, func(r storage.AuditRecord) string { return r.ID }, want)
	checkBadCursors(t, "ListAudit", list)

	// Unfiltered, all 14 in pages of 5: 5, 5, 4.
	keys, sizes := walk(t, "ListAudit", 5, func(p storage.Page) ([]storage.AuditRecord, string, error) {
		return s.ListAudit(ctx, storage.AuditFilter{Page: p})
	}, func(r storage.AuditRecord) string { return r.ID })
	if len(keys) != 14 || !slices.Equal(sizes, []int{5, 5, 4}) {
		t.Errorf("ListAudit of 14 in pages of 5: %d records in pages %v, want 14 in [5 5 4]", len(keys), sizes)
	}
}

func testAuditRoundTrip(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	full := &storage.AuditRecord{
		ID: "evt_full", Time: now, Event: "admin.client.update", Outcome: storage.OutcomeGranted,
		Reason: "ok", ClientID: "admin_cli", AgentID: "agent_1", ActorType: "service", ActorSub: "admin_sub",
		Tenant: "acme", DelegationMode: "service_identity", TraceID: "trace_full",
		SessionID: "sess_1", Audience: "orders_api",
		RequestedScopes: []string{"clients:write", "clients:read"},
		GrantedScopes:   []string{"clients:write"}, EnvelopeJTI: "env_1", TokenJTI: "jti_1",
		GrantID: "grt_1", RemoteAddr: "[2001:db8::1]:443",
		Detail: []byte(`{"client_id": "cli_1", "changed": ["name", "allowed_scopes"], "nested": {"n": 1, "ok": true}}`),
	}
	bare := &storage.AuditRecord{ID: "evt_bare", Time: now.Add(-time.Second), Event: "introspect", Outcome: storage.OutcomeDenied}
	mustDo(t, s.AppendAudit(ctx, full), "AppendAudit full")
	mustDo(t, s.AppendAudit(ctx, bare), "AppendAudit bare")
	wantErr(t, s.AppendAudit(ctx, bare), storage.ErrConflict, "AppendAudit with a taken id")
	items, _, err := s.ListAudit(ctx, storage.AuditFilter{})
	mustDo(t, err, "ListAudit")
	if len(items) != 2 {
		t.Fatalf("ListAudit: %d records, want 2", len(items))
	}
	checkEqual(t, "full audit record", &items[0], full)
	checkEqual(t, "bare audit record", &items[1], bare)
}

func auditIDs(items []storage.AuditRecord) []string {
	var ids []string
	for _, r := range items {
		ids = append(ids, r.ID)
	}
	return ids
}

// Retention: PruneAudit removes the records of every UTC day before its cutoff's day and
// nothing of that day or after, and the log goes on taking records.
func testPruneAudit(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	day := storage.AuditDay(now)
	mustDo(t, s.PrepareAuditLog(ctx, now), "PrepareAuditLog")
	mustDo(t, s.PrepareAuditLog(ctx, now), "PrepareAuditLog again (replicas all do)")
	at := map[string]time.Time{
		"evt_old":        day.AddDate(0, 0, -30),
		"evt_last_gone":  day.AddDate(0, 0, -1).Add(-time.Microsecond), // the last instant of the day before yesterday
		"evt_first_kept": day.AddDate(0, 0, -1),                        // the first of yesterday
		"evt_now":        now,
		"evt_ahead":      day.AddDate(0, 0, 3),
	}
	for id, tm := range at {
		mustDo(t, s.AppendAudit(ctx, makeAudit(id, tm.In(zone), "admin.test", storage.OutcomeGranted, "cli_1", "", "", "", "", "")), "AppendAudit "+id)
	}
	// Any instant of yesterday cuts at yesterday's start.
	_, err := s.PruneAudit(ctx, day.AddDate(0, 0, -1).Add(13*time.Hour))
	mustDo(t, err, "PruneAudit")
	wantAuditIDs(t, s, "after PruneAudit", "evt_ahead", "evt_now", "evt_first_kept")

	again, err := s.PruneAudit(ctx, day.AddDate(0, 0, -1))
	mustDo(t, err, "PruneAudit again")
	if again.Rows != 0 || len(again.Partitions) != 0 {
		t.Errorf("a second PruneAudit with the same cutoff removed %+v, want nothing", again)
	}
	mustDo(t, s.AppendAudit(ctx, makeAudit("evt_later", now.Add(time.Second), "admin.test",
		storage.OutcomeGranted, "cli_1", "", "", "", "", "")), "AppendAudit after PruneAudit")
	wantAuditIDs(t, s, "after a record was added", "evt_ahead", "evt_later", "evt_now", "evt_first_kept")
}

// wantAuditIDs checks the whole log's record ids, newest first.
func wantAuditIDs(t *testing.T, s storage.Store, what string, want ...string) {
	t.Helper()
	items, _, err := s.ListAudit(t.Context(), storage.AuditFilter{Page: storage.Page{Limit: storage.MaxPageLimit}})
	mustDo(t, err, "ListAudit "+what)
	var got []string
	for _, a := range items {
		got = append(got, a.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit log %s: %v, want %v", what, got, want)
	}
}

// A log that spans more than a year (backends may read it in time windows, newest first):
// every page is in order, none skips or repeats a record, and the filters and bounds hold
// across the whole span.
func testAuditAcrossMonths(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	ages := []struct {
		id, client string
		age        time.Duration
	}{
		{"evt_future", "cli_a", -time.Hour}, // a clock ahead
		{"evt_now", "cli_b", 0},
		{"evt_2d", "cli_a", 2 * 24 * time.Hour},
		{"evt_10d", "cli_b", 10 * 24 * time.Hour},
		{"evt_100d", "cli_a", 100 * 24 * time.Hour},
		{"evt_400d", "cli_b", 400 * 24 * time.Hour},
	}
	for _, a := range ages {
		mustDo(t, s.AppendAudit(ctx, makeAudit(a.id, now.Add(-a.age), "admin.test", storage.OutcomeGranted,
			a.client, "", "", "", "", "")), "AppendAudit "+a.id)
	}
	pages := func(f storage.AuditFilter) []string {
		t.Helper()
		var ids []string
		for range 20 {
			items, next, err := s.ListAudit(ctx, f)
			mustDo(t, err, "ListAudit")
			for _, a := range items {
				ids = append(ids, a.ID)
			}
			if next == "" {
				return ids
			}
			f.Cursor = next
		}
		t.Fatalf("ListAudit %+v: more than 20 pages", f)
		return nil
	}
	all := []string{"evt_future", "evt_now", "evt_2d", "evt_10d", "evt_100d", "evt_400d"}
	for _, limit := range []int{1, 2, 4, 50} {
		if got := pages(storage.AuditFilter{Page: storage.Page{Limit: limit}}); !slices.Equal(got, all) {
			t.Errorf("pages of %d: %v, want %v", limit, got, all)
		}
	}
	for _, c := range []struct {
		f    storage.AuditFilter
		want []string
	}{
		{storage.AuditFilter{ClientID: "cli_b", Page: storage.Page{Limit: 1}}, []string{"evt_now", "evt_10d", "evt_400d"}},
		{storage.AuditFilter{Since: now.Add(-50 * 24 * time.Hour), Page: storage.Page{Limit: 2}},
			[]string{"evt_future", "evt_now", "evt_2d", "evt_10d"}},
		{storage.AuditFilter{Until: now.Add(-24 * time.Hour), Page: storage.Page{Limit: 1}},
			[]string{"evt_2d", "evt_10d", "evt_100d", "evt_400d"}},
		{storage.AuditFilter{Since: now.Add(-200 * 24 * time.Hour), Until: now.Add(-5 * 24 * time.Hour), ClientID: "cli_a"},
			[]string{"evt_100d"}},
	} {
		if got := pages(c.f); !slices.Equal(got, c.want) {
			t.Errorf("ListAudit %+v: %v, want %v", c.f, got, c.want)
		}
	}
}
