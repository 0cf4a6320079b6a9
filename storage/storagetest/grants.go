package storagetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var grantCases = []testCase{
	{"CreateGetRevoke", testGrantCRUD},
	{"ListFilters", testGrantListFilters},
	{"ListPagination", testGrantPagination},
	{"FindActiveGrants", testFindActiveGrants},
	{"OutliveTheirClient", testGrantsOutliveTheirClient},
	{"CreateForAMissingClient", testGrantForMissingClient},
}

// grantSpec describes a fixture grant relative to now; zero fields take the defaults below.
type grantSpec struct {
	tenant, subject, client, agent string
	audiences                      []string
	notBefore                      time.Duration // from now; 0 means an hour ago
	expiresIn                      time.Duration // from now; 0 means in an hour
	startsNow, endsNow             bool          // NotBefore / ExpiresAt exactly now
	revoked                        bool
}

func makeGrant(id string, now time.Time, g grantSpec) *storage.Grant {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	nb, exp := g.notBefore, g.expiresIn
	if nb == 0 {
		nb = -time.Hour
	}
	if exp == 0 {
		exp = time.Hour
	}
	if g.startsNow {
		nb = 0
	}
	if g.endsNow {
		exp = 0
	}
	out := &storage.Grant{
		ID:        id,
		Tenant:    def(g.tenant, "acme"),
		Subject:   def(g.subject, "alice"),
		ClientID:  def(g.client, "cli_1"),
		AgentID:   g.agent,
		Audiences: g.audiences,
		Scopes:    []string{"orders:read", "orders:write"},
		Modes:     []string{"on_behalf_of"},
		NotBefore: now.Add(nb),
		ExpiresAt: now.Add(exp),
		CreatedBy: "admin_cli",
		CreatedAt: now.Add(-time.Minute),
	}
	if out.Audiences == nil {
		out.Audiences = []string{"orders_api"}
	}
	if g.revoked {
		out.RevokedAt = now.Add(-time.Second)
		out.RevokedBy = "admin_cli"
		out.RevokeReason = "user left"
	}
	return out
}

// withClients creates the clients grants refer to.
func withClients(t *testing.T, s storage.Store, now time.Time, ids ...string) {
	t.Helper()
	for _, id := range ids {
		mustDo(t, s.CreateClient(t.Context(), minimalClient(id, now)), "CreateClient "+id)
	}
}

func testGrantCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	spec := grantSpec{agent: "agent_456", audiences: []string{"orders_api", "crm_api"}}
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_1", now, spec)), "CreateGrant")
	got, err := s.GetGrant(ctx, "grt_1")
	mustDo(t, err, "GetGrant")
	checkEqual(t, "GetGrant after create", got, makeGrant("grt_1", now, spec))
	if st := got.Status(now); st != storage.GrantActive {
		t.Errorf("fresh grant's status %q, want %q", st, storage.GrantActive)
	}

	wantErr(t, s.CreateGrant(ctx, makeGrant("grt_1", now, grantSpec{subject: "bob"})), storage.ErrConflict,
		"CreateGrant with a taken id")

	at := now.Add(time.Minute).In(zone)
	want := makeGrant("grt_1", now, spec)
	want.RevokedAt, want.RevokedBy, want.RevokeReason = at, "sec_team", "compromised laptop"
	revoked, err := s.RevokeGrant(ctx, "grt_1", "sec_team", "compromised laptop", at)
	mustDo(t, err, "RevokeGrant")
	checkEqual(t, "RevokeGrant's result", revoked, want)
	got, err = s.GetGrant(ctx, "grt_1")
	mustDo(t, err, "GetGrant after revoke")
	checkEqual(t, "GetGrant after revoke", got, want)

	_, err = s.RevokeGrant(ctx, "grt_1", "someone_else", "again", at.Add(time.Hour))
	wantErr(t, err, storage.ErrConflict, "RevokeGrant of a revoked grant")
	got, err = s.GetGrant(ctx, "grt_1")
	mustDo(t, err, "GetGrant after second revoke")
	checkEqual(t, "grant after a second revoke (the first one stands)", got, want)

	_, err = s.RevokeGrant(ctx, "grt_missing", "sec_team", "", at)
	wantErr(t, err, storage.ErrNotFound, "RevokeGrant of a missing id")
	_, err = s.GetGrant(ctx, "grt_missing")
	wantErr(t, err, storage.ErrNotFound, "GetGrant of a missing id")
}

// Deleting a client leaves its grants for the audit trail, and RevokeGrantsOfClient revokes
// the ones still unrevoked, of that client only, once.
func testGrantsOutliveTheirClient(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1", "cli_2")
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_1", now, grantSpec{})), "CreateGrant grt_1")
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_2", now, grantSpec{expiresIn: -time.Minute})), "CreateGrant grt_2")
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_3", now, grantSpec{revoked: true})), "CreateGrant grt_3")
	mustDo(t, s.CreateGrant(ctx, makeGrant("grt_4", now, grantSpec{client: "cli_2"})), "CreateGrant grt_4")
	before, err := s.GetGrant(ctx, "grt_3")
	mustDo(t, err, "GetGrant grt_3")

	at := now.Add(time.Minute).In(zone)
	err = s.InTx(ctx, func(tx storage.Store) error {
		if err := tx.DeleteClient(ctx, "cli_1"); err != nil {
			return err
		}
		n, err := tx.RevokeGrantsOfClient(ctx, "cli_1", "admin_1", "client_deleted", at)
		if n != 2 {
			t.Errorf("RevokeGrantsOfClient revoked %d grants, want 2 (grt_1 and the expired grt_2)", n)
		}
		return err
	})
	mustDo(t, err, "DeleteClient and RevokeGrantsOfClient")
	for _, id := range []string{"grt_1", "grt_2"} {
		g, err := s.GetGrant(ctx, id)
		mustDo(t, err, "GetGrant "+id+" after its client was deleted")
		if !g.RevokedAt.Equal(at) || g.RevokedBy != "admin_1" || g.RevokeReason != "client_deleted" {
			t.Errorf("%s after its client was deleted: revoked %s by %q for %q", id, fmtTime(g.RevokedAt), g.RevokedBy, g.RevokeReason)
		}
	}
	after, err := s.GetGrant(ctx, "grt_3")
	mustDo(t, err, "GetGrant grt_3")
	checkEqual(t, "a grant revoked before its client was deleted", after, before)
	other, err := s.GetGrant(ctx, "grt_4")
	mustDo(t, err, "GetGrant grt_4")
	if !other.RevokedAt.IsZero() {
		t.Errorf("another client's grant was revoked")
	}
	n, err := s.RevokeGrantsOfClient(ctx, "cli_1", "admin_1", "client_deleted", at.Add(time.Hour))
	mustDo(t, err, "RevokeGrantsOfClient again")
	if n != 0 {
		t.Errorf("RevokeGrantsOfClient again revoked %d grants, want 0", n)
	}
	items, _, err := s.ListGrants(ctx, storage.GrantFilter{ClientID: "cli_1", Now: now})
	mustDo(t, err, "ListGrants of the deleted client")
	if len(items) != 3 {
		t.Errorf("ListGrants of the deleted client: %d grants, want 3", len(items))
	}
}

// A grant names an existing client: without one CreateGrant is ErrNotFound and writes nothing.
func testGrantForMissingClient(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	wantErr(t, s.CreateGrant(ctx, makeGrant("grt_1", now, grantSpec{client: "cli_missing"})), storage.ErrNotFound,
		"CreateGrant for a missing client")
	_, err := s.GetGrant(ctx, "grt_1")
	wantErr(t, err, storage.ErrNotFound, "GetGrant of a grant refused for its client")
}

func testGrantListFilters(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1", "cli_2")
	fixtures := map[string]grantSpec{
		"grt_1": {tenant: "t1", subject: "alice", client: "cli_1", audiences: []string{"api1"}},
		"grt_2": {tenant: "t1", subject: "bob", client: "cli_1", audiences: []string{"api1", "api2"}, expiresIn: -time.Minute},
		"grt_3": {tenant: "t1", subject: "*", client: "cli_2", audiences: []string{"api2"}, revoked: true},
		"grt_4": {tenant: "t2", subject: "alice", client: "cli_2", audiences: []string{"api3"}, notBefore: time.Hour, expiresIn: 2 * time.Hour},
		// Expires exactly now: expired (storage.Grant.Status).
		"grt_5": {tenant: "t2", subject: "alice", client: "cli_1", audiences: []string{"api1"}, endsNow: true},
		// Revoked and past its expiry: revoked wins.
		"grt_6": {tenant: "t2", subject: "carol", client: "cli_1", audiences: []string{"api12"}, expiresIn: -time.Hour, revoked: true},
	}
	for _, id := range shuffled([]string{"grt_1", "grt_2", "grt_3", "grt_4", "grt_5", "grt_6"}) {
		mustDo(t, s.CreateGrant(ctx, makeGrant(id, now, fixtures[id])), "CreateGrant "+id)
	}

	cases := []struct {
		name string
		f    storage.GrantFilter
		want []string
	}{
		{"no filter", storage.GrantFilter{}, []string{"grt_1", "grt_2", "grt_3", "grt_4", "grt_5", "grt_6"}},
		{"tenant", storage.GrantFilter{Tenant: "t1"}, []string{"grt_1", "grt_2", "grt_3"}},
		{"subject", storage.GrantFilter{Subject: "alice"}, []string{"grt_1", "grt_4", "grt_5"}},
		{"subject * is literal", storage.GrantFilter{Subject: "*"}, []string{"grt_3"}},
		{"client", storage.GrantFilter{ClientID: "cli_2"}, []string{"grt_3", "grt_4"}},
		{"audience", storage.GrantFilter{Audience: "api1"}, []string{"grt_1", "grt_2", "grt_5"}},
		{"audience in a longer list", storage.GrantFilter{Audience: "api2"}, []string{"grt_2", "grt_3"}},
		{"audience matches whole values only", storage.GrantFilter{Audience: "api"}, nil},
		{"status active (not_before ahead counts)", storage.GrantFilter{Status: storage.GrantActive, Now: now}, []string{"grt_1", "grt_4"}},
		{"status expired", storage.GrantFilter{Status: storage.GrantExpired, Now: now}, []string{"grt_2", "grt_5"}},
		{"status revoked", storage.GrantFilter{Status: storage.GrantRevoked, Now: now}, []string{"grt_3", "grt_6"}},
		{"status is evaluated at Now", storage.GrantFilter{Status: storage.GrantActive, Now: now.Add(-2 * time.Minute)}, []string{"grt_1", "grt_2", "grt_4", "grt_5"}},
		{"tenant and status", storage.GrantFilter{Tenant: "t1", Status: storage.GrantActive, Now: now}, []string{"grt_1"}},
		{"tenant and client", storage.GrantFilter{Tenant: "t2", ClientID: "cli_1"}, []string{"grt_5", "grt_6"}},
		{"nothing matches", storage.GrantFilter{Tenant: "t1", Subject: "carol"}, nil},
	}
	for _, c := range cases {
		items, next, err := s.ListGrants(ctx, c.f)
		if err != nil {
			t.Errorf("ListGrants %s: %v", c.name, err)
			continue
		}
		wantIDs(t, "ListGrants "+c.name, grantIDs(items), c.want)
		if next != "" {
			t.Errorf("ListGrants %s: next cursor %q on a page that is not full", c.name, next)
		}
		for i := range items {
			checkEqual(t, "ListGrants item "+items[i].ID, &items[i], makeGrant(items[i].ID, now, fixtures[items[i].ID]))
		}
	}
}

func testGrantPagination(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1")
	var ids, all []string
	for i := range 7 {
		ids = append(ids, fmt.Sprintf("grt_%02d_t1", i))
		all = append(all, fmt.Sprintf("grt_%02d_t1", i), fmt.Sprintf("grt_%02d_t2", i))
	}
	// Grants of another tenant interleave with the ones listed: the cursor must compose with
	// the filter.
	for _, id := range shuffled(all) {
		tenant := id[len(id)-2:]
		mustDo(t, s.CreateGrant(ctx, makeGrant(id, now, grantSpec{tenant: tenant})), "CreateGrant "+id)
	}
	list := func(p storage.Page) ([]storage.Grant, string, error) {
		return s.ListGrants(ctx, storage.GrantFilter{Tenant: "t1", Page: p})
	}
	checkWalk(t, "ListGrants tenant=t1", list, func(g storage.Grant) string { return g.ID }, ids)
	checkBadCursors(t, "ListGrants", list)
}

func testFindActiveGrants(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	withClients(t, s, now, "cli_1", "cli_2")
	fixtures := map[string]grantSpec{
		"g_exact":        {subject: "alice"},
		"g_any_subject":  {subject: storage.AnySubject},
		"g_same_agent":   {subject: "alice", agent: "agent_1"},
		"g_other_agent":  {subject: "alice", agent: "agent_2"},
		"g_other_user":   {subject: "bob"},
		"g_other_tenant": {tenant: "globex", subject: "alice"},
		"g_other_client": {subject: "alice", client: "cli_2"},
		"g_not_yet":      {subject: "alice", notBefore: time.Minute},
		"g_starts_now":   {subject: "alice", startsNow: true},
		"g_expired":      {subject: "alice", expiresIn: -time.Second},
		"g_revoked":      {subject: "alice", revoked: true},
		"g_bob_agent_1":  {subject: "bob", agent: "agent_1"},
		"g_ends_now":     {subject: "alice", endsNow: true},
	}
	for id, spec := range fixtures {
		mustDo(t, s.CreateGrant(ctx, makeGrant(id, now, spec)), "CreateGrant "+id)
	}
	// g_starts_now is in and g_ends_now out: NotBefore <= Now < ExpiresAt.

	cases := []struct {
		name string
		q    storage.GrantQuery
		want []string
	}{
		{"user and agent", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_1", AgentID: "agent_1", Now: now},
			[]string{"g_any_subject", "g_exact", "g_same_agent", "g_starts_now"}},
		{"no agent: only unrestricted grants", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_1", Now: now},
			[]string{"g_any_subject", "g_exact", "g_starts_now"}},
		{"other agent", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_1", AgentID: "agent_2", Now: now},
			[]string{"g_any_subject", "g_exact", "g_other_agent", "g_starts_now"}},
		{"other user", storage.GrantQuery{Tenant: "acme", Subject: "bob", ClientID: "cli_1", AgentID: "agent_1", Now: now},
			[]string{"g_any_subject", "g_bob_agent_1", "g_other_user"}},
		{"unknown user gets only *", storage.GrantQuery{Tenant: "acme", Subject: "mallory", ClientID: "cli_1", AgentID: "agent_9", Now: now},
			[]string{"g_any_subject"}},
		{"other client", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_2", Now: now},
			[]string{"g_other_client"}},
		{"other tenant", storage.GrantQuery{Tenant: "globex", Subject: "alice", ClientID: "cli_1", Now: now},
			[]string{"g_other_tenant"}},
		{"unknown tenant", storage.GrantQuery{Tenant: "initech", Subject: "alice", ClientID: "cli_1", Now: now}, nil},
		{"later: not_before reached, the one-hour grants expired", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_1", Now: now.Add(2 * time.Hour)}, nil},
		{"a minute on", storage.GrantQuery{Tenant: "acme", Subject: "alice", ClientID: "cli_1", Now: now.Add(time.Minute)},
			[]string{"g_any_subject", "g_exact", "g_not_yet", "g_starts_now"}},
	}
	for _, c := range cases {
		got, err := s.FindActiveGrants(ctx, c.q)
		if err != nil {
			t.Errorf("FindActiveGrants %s: %v", c.name, err)
			continue
		}
		ids := grantIDs(got)
		slices.Sort(ids)
		wantIDs(t, "FindActiveGrants "+c.name, ids, c.want)
		for i := range got {
			checkEqual(t, "FindActiveGrants item "+got[i].ID, &got[i], makeGrant(got[i].ID, now, fixtures[got[i].ID]))
		}
	}

	// ActiveGrantsOf: every subject and agent of one client in one tenant, by id, up to limit.
	of := []struct {
		name           string
		tenant, client string
		at             time.Time
		limit          int
		want           []string
	}{
		{"all of a client", "acme", "cli_1", now, 100,
			[]string{"g_any_subject", "g_bob_agent_1", "g_exact", "g_other_agent", "g_other_user", "g_same_agent", "g_starts_now"}},
		{"limited", "acme", "cli_1", now, 3, []string{"g_any_subject", "g_bob_agent_1", "g_exact"}},
		{"other client", "acme", "cli_2", now, 100, []string{"g_other_client"}},
		{"other tenant", "globex", "cli_1", now, 100, []string{"g_other_tenant"}},
		{"unknown tenant", "initech", "cli_1", now, 100, nil},
		{"a minute on", "acme", "cli_1", now.Add(time.Minute), 100,
			[]string{"g_any_subject", "g_bob_agent_1", "g_exact", "g_not_yet", "g_other_agent", "g_other_user", "g_same_agent", "g_starts_now"}},
	}
	for _, c := range of {
		got, err := s.ActiveGrantsOf(ctx, c.tenant, c.client, c.at, c.limit)
		if err != nil {
			t.Errorf("ActiveGrantsOf %s: %v", c.name, err)
			continue
		}
		wantIDs(t, "ActiveGrantsOf "+c.name, grantIDs(got), c.want) // in id order, unsorted
		for i := range got {
			checkEqual(t, "ActiveGrantsOf item "+got[i].ID, &got[i], makeGrant(got[i].ID, now, fixtures[got[i].ID]))
		}
	}
}

func grantIDs(items []storage.Grant) []string {
	var ids []string
	for _, g := range items {
		ids = append(ids, g.ID)
	}
	return ids
}
