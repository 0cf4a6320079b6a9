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

var clientCases = []testCase{
	{"CRUD", testClientCRUD},
	{"MinimalRoundTrip", testClientMinimal},
	{"DuplicateIDConflicts", testClientConflict},
	{"MissingIsNotFound", testClientNotFound},
	{"UpdateFnErrorAborts", testClientUpdateFnError},
	{"ListPagination", testClientPagination},
	{"ConcurrentUpdatesLoseNothing", testClientConcurrentUpdates},
	{"LockEnabledClientsWith", testLockEnabledClientsWith},
	{"LastOfALockedListIsKept", testLockEnabledClientsRace},
}

// fullClient sets every field, so a column a backend forgets to write or read shows.
func fullClient(id string, now time.Time) *storage.Client {
	return &storage.Client{
		ID:                      id,
		Name:                    "Client " + id,
		TokenEndpointAuthMethod: "private_key_jwt",
		SecretHash:              []byte{0x01, 0x00, 0xfe, 0xff, 0x7f}, // a NUL and high bytes: binary, not text
		PreviousSecretHash:      []byte("previous-secret-hash"),
		PreviousSecretExpiresAt: now.Add(24 * time.Hour),
		JWKS: []byte(`{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
			"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "use": "sig"}]}`),
		JWKSURI:             "https://mcp.example/.well-known/jwks.json",
		GrantTypes:          []string{"urn:ietf:params:oauth:grant-type:token-exchange", "client_credentials"},
		AllowedTenants:      []string{"acme", "globex"},
		AllowedAudiences:    []string{"orders_api", "https://crm.example/"},
		AllowedScopes:       []string{"orders:read", "orders:write", "crm.contacts"},
		AllowedModes:        []string{"on_behalf_of", "restricted_user"},
		ServiceActors:       []string{"nightly-batch", "svc:reports"},
		MaxEnvelopeLifetime: 5 * time.Minute,
		MaxTokenTTL:         15 * time.Minute,
		Disabled:            true,
		CreatedAt:           now,
		UpdatedAt:           now.Add(time.Second),
		DisabledAt:          now.Add(time.Second),
	}
}

// minimalClient is the least a caller may store.
func minimalClient(id string, now time.Time) *storage.Client {
	return &storage.Client{ID: id, CreatedAt: now, UpdatedAt: now}
}

func testClientCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, fullClient("cli_a", now)), "CreateClient")

	got, err := s.GetClient(ctx, "cli_a")
	mustDo(t, err, "GetClient")
	checkEqual(t, "GetClient after CreateClient", got, fullClient("cli_a", now))

	later := now.Add(time.Hour)
	want := fullClient("cli_a", now)
	want.Name = "Renamed"
	want.AllowedScopes = append(want.AllowedScopes, "extra")
	want.GrantTypes = nil
	want.Disabled = false
	want.SecretHash = []byte("new-hash")
	// Nullable columns can be cleared again.
	want.PreviousSecretHash = nil
	want.PreviousSecretExpiresAt = time.Time{}
	want.JWKS = nil
	want.MaxTokenTTL = 0
	want.DisabledAt = time.Time{}
	want.UpdatedAt = later
	updated, err := s.UpdateClient(ctx, "cli_a", func(c *storage.Client) error {
		checkEqual(t, "client handed to UpdateClient's fn", c, fullClient("cli_a", now))
		c.Name = "Renamed"
		c.AllowedScopes = append(c.AllowedScopes, "extra")
		c.GrantTypes = nil
		c.Disabled = false
		c.SecretHash = []byte("new-hash")
		c.PreviousSecretHash = nil
		c.PreviousSecretExpiresAt = time.Time{}
		c.JWKS = nil
		c.MaxTokenTTL = 0
		c.DisabledAt = time.Time{}
		c.UpdatedAt = later
		return nil
	})
	mustDo(t, err, "UpdateClient")
	checkEqual(t, "UpdateClient's result", updated, want)
	got, err = s.GetClient(ctx, "cli_a")
	mustDo(t, err, "GetClient after UpdateClient")
	checkEqual(t, "GetClient after UpdateClient", got, want)

	// A second client, to see delete removes only its target.
	mustDo(t, s.CreateClient(ctx, minimalClient("cli_b", now)), "CreateClient cli_b")
	mustDo(t, s.DeleteClient(ctx, "cli_a"), "DeleteClient")
	_, err = s.GetClient(ctx, "cli_a")
	wantErr(t, err, storage.ErrNotFound, "GetClient after DeleteClient")
	items, _, err := s.ListClients(ctx, storage.Page{})
	mustDo(t, err, "ListClients")
	wantIDs(t, "ListClients after DeleteClient", clientIDs(items), []string{"cli_b"})

	// The id is free again.
	mustDo(t, s.CreateClient(ctx, fullClient("cli_a", now)), "CreateClient after delete")
}

func testClientMinimal(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, minimalClient("cli_min", now)), "CreateClient")
	got, err := s.GetClient(ctx, "cli_min")
	mustDo(t, err, "GetClient")
	checkEqual(t, "minimal client", got, minimalClient("cli_min", now))
}

func testClientConflict(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, fullClient("cli_dup", now)), "CreateClient")
	second := minimalClient("cli_dup", now)
	second.Name = "impostor"
	wantErr(t, s.CreateClient(ctx, second), storage.ErrConflict, "CreateClient with a taken id")
	got, err := s.GetClient(ctx, "cli_dup")
	mustDo(t, err, "GetClient")
	checkEqual(t, "client after a conflicting create", got, fullClient("cli_dup", now))
}

func testClientNotFound(t *testing.T, s storage.Store) {
	ctx := t.Context()
	_, err := s.GetClient(ctx, "cli_missing")
	wantErr(t, err, storage.ErrNotFound, "GetClient of a missing id")
	called := false
	_, err = s.UpdateClient(ctx, "cli_missing", func(*storage.Client) error { called = true; return nil })
	wantErr(t, err, storage.ErrNotFound, "UpdateClient of a missing id")
	if called {
		t.Error("UpdateClient called fn for a missing client")
	}
	wantErr(t, s.DeleteClient(ctx, "cli_missing"), storage.ErrNotFound, "DeleteClient of a missing id")
}

func testClientUpdateFnError(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, fullClient("cli_a", now)), "CreateClient")
	errStop := errors.New("caller says stop")
	_, err := s.UpdateClient(ctx, "cli_a", func(c *storage.Client) error {
		c.Name = "should not be stored"
		return fmt.Errorf("validation: %w", errStop)
	})
	wantErr(t, err, errStop, "UpdateClient whose fn fails")
	got, err := s.GetClient(ctx, "cli_a")
	mustDo(t, err, "GetClient")
	checkEqual(t, "client after an aborted update", got, fullClient("cli_a", now))
}

func testClientPagination(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	var ids []string
	for i := range 7 {
		ids = append(ids, fmt.Sprintf("cli_%02d", i))
	}
	for _, id := range shuffled(ids) {
		mustDo(t, s.CreateClient(ctx, minimalClient(id, now)), "CreateClient "+id)
	}
	list := func(p storage.Page) ([]storage.Client, string, error) { return s.ListClients(ctx, p) }
	checkWalk(t, "ListClients", list, func(c storage.Client) string { return c.ID }, ids)
	checkBadCursors(t, "ListClients", list)

	// Items on a page are whole records.
	items, _, err := s.ListClients(ctx, storage.Page{Limit: 1})
	mustDo(t, err, "ListClients")
	if len(items) == 1 {
		checkEqual(t, "ListClients item", &items[0], minimalClient(ids[0], now))
	}
}

// Each of 16 concurrent updates appends its own scope; a backend that reads outside the
// write transaction, or does not serialise read-modify-write, loses some.
func testClientConcurrentUpdates(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	base := fullClient("cli_busy", now)
	mustDo(t, s.CreateClient(ctx, base), "CreateClient")

	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = s.UpdateClient(ctx, "cli_busy", func(c *storage.Client) error {
				// Hold the read-modify-write open a moment so racing updates overlap even on
				// a loaded machine (this widens the race; it asserts nothing about time).
				time.Sleep(time.Millisecond)
				c.AllowedScopes = append(c.AllowedScopes, fmt.Sprintf("concurrent.%02d", i))
				return nil
			})
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent UpdateClient %d: %v", i, err)
		}
	}
	got, err := s.GetClient(ctx, "cli_busy")
	mustDo(t, err, "GetClient")
	want := slices.Clone(fullClient("cli_busy", now).AllowedScopes)
	for i := range n {
		want = append(want, fmt.Sprintf("concurrent.%02d", i))
	}
	gotSorted := slices.Sorted(slices.Values(got.AllowedScopes))
	slices.Sort(want)
	if !slices.Equal(gotSorted, want) {
		t.Errorf("after %d concurrent appends AllowedScopes holds %d entries, want %d:\n  got  %q\n  want %q",
			n, len(got.AllowedScopes), len(want), gotSorted, want)
	}
}

func clientIDs(items []storage.Client) []string {
	var ids []string
	for _, c := range items {
		ids = append(ids, c.ID)
	}
	return ids
}

const (
	lockScope = "mandate:admin"
	lockGrant = "client_credentials"
)

// adminLike is a client LockEnabledClientsWith(lockScope, lockGrant) lists unless edit
// changes that.
func adminLike(id string, now time.Time, edit func(*storage.Client)) *storage.Client {
	c := &storage.Client{ID: id, GrantTypes: []string{"urn:ietf:params:oauth:grant-type:token-exchange", lockGrant},
		AllowedScopes: []string{"other", lockScope}, CreatedAt: now, UpdatedAt: now}
	if edit != nil {
		edit(c)
	}
	return c
}

func testLockEnabledClientsWith(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	for _, c := range []*storage.Client{
		adminLike("cli_c", now, nil),
		adminLike("cli_a", now, nil),
		adminLike("cli_disabled", now, func(c *storage.Client) { c.Disabled = true }),
		adminLike("cli_no_grant", now, func(c *storage.Client) { c.GrantTypes = []string{"urn:ietf:params:oauth:grant-type:token-exchange"} }),
		adminLike("cli_no_scope", now, func(c *storage.Client) { c.AllowedScopes = []string{"mandate:admin:read"} }),
		// A scope that merely contains the one asked for does not count.
		adminLike("cli_prefix", now, func(c *storage.Client) { c.AllowedScopes = []string{"mandate:admin:x"} }),
	} {
		mustDo(t, s.CreateClient(ctx, c), "CreateClient "+c.ID)
	}
	ids, err := s.LockEnabledClientsWith(ctx, lockScope, lockGrant)
	mustDo(t, err, "LockEnabledClientsWith")
	wantIDs(t, "LockEnabledClientsWith", ids, []string{"cli_a", "cli_c"})
	err = s.InTx(ctx, func(tx storage.Store) error {
		ids, err := tx.LockEnabledClientsWith(ctx, lockScope, lockGrant)
		wantIDs(t, "LockEnabledClientsWith inside InTx", ids, []string{"cli_a", "cli_c"})
		return err
	})
	mustDo(t, err, "InTx")
	ids, err = s.LockEnabledClientsWith(ctx, "nobody:holds", lockGrant)
	mustDo(t, err, "LockEnabledClientsWith of a scope nobody holds")
	wantIDs(t, "LockEnabledClientsWith of a scope nobody holds", ids, nil)
}

var errLastOne = errors.New("the last one")

// Two transactions each remove one of the last two clients of the list, after checking that
// another remains: exactly one may succeed, or the store would be left with none.
func testLockEnabledClientsRace(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	mustDo(t, s.CreateClient(ctx, adminLike("cli_1", now, nil)), "CreateClient cli_1")
	mustDo(t, s.CreateClient(ctx, adminLike("cli_2", now, nil)), "CreateClient cli_2")
	remove := func(id string, locked chan<- struct{}, hold time.Duration, del bool) error {
		return s.InTx(ctx, func(tx storage.Store) error {
			ids, err := tx.LockEnabledClientsWith(ctx, lockScope, lockGrant)
			if err != nil {
				return err
			}
			if locked != nil {
				close(locked)
			}
			time.Sleep(hold) // the other transaction reaches its own check meanwhile
			if !slices.Contains(ids, id) || len(ids) < 2 {
				return errLastOne
			}
			if del {
				return tx.DeleteClient(ctx, id)
			}
			_, err = tx.UpdateClient(ctx, id, func(c *storage.Client) error { c.Disabled = true; return nil })
			return err
		})
	}
	for _, del := range []bool{true, false} {
		if !del {
			// Again, disabling instead of deleting.
			mustDo(t, s.CreateClient(ctx, adminLike("cli_1", now, nil)), "CreateClient cli_1 again")
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		locked := make(chan struct{})
		wg.Go(func() { errs[0] = remove("cli_1", locked, 300*time.Millisecond, del) })
		<-locked
		wg.Go(func() { errs[1] = remove("cli_2", nil, 0, del) })
		wg.Wait()
		if errs[0] != nil || !errors.Is(errs[1], errLastOne) {
			t.Fatalf("delete=%v: the first removal got %v, the second %v; want success, then %v", del, errs[0], errs[1], errLastOne)
		}
		ids, err := s.LockEnabledClientsWith(ctx, lockScope, lockGrant)
		mustDo(t, err, "LockEnabledClientsWith")
		wantIDs(t, fmt.Sprintf("delete=%v: clients left", del), ids, []string{"cli_2"})
	}
}
