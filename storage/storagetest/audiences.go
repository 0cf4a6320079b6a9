package storagetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var audienceCases = []testCase{
	{"CRUD", testAudienceCRUD},
	{"DuplicatesConflict", testAudienceConflict},
	{"MissingIsNotFound", testAudienceNotFound},
	{"ListPagination", testAudiencePagination},
}

func fullAudience(id string, now time.Time, uris ...string) *storage.Audience {
	return &storage.Audience{
		ID:           id,
		Name:         "Audience " + id,
		ResourceURIs: uris,
		Scopes:       []string{"orders:read", "orders:write"},
		AllowedModes: []string{"on_behalf_of", "service_identity"},
		TokenTTL:     10 * time.Minute,
		// SPEC §11's consent settings round-trip with the rest.
		UserConsent:        storage.ConsentAllowed,
		MaxConsentDuration: 7 * 24 * time.Hour,
		CreatedAt:          now,
		UpdatedAt:          now.Add(time.Second),
	}
}

// checkAudience compares audiences; the order of resource URIs carries no meaning.
func checkAudience(t *testing.T, what string, got, want *storage.Audience) {
	t.Helper()
	if got != nil {
		g := *got
		g.ResourceURIs = slices.Sorted(slices.Values(got.ResourceURIs))
		got = &g
	}
	w := *want
	w.ResourceURIs = slices.Sorted(slices.Values(want.ResourceURIs))
	checkEqual(t, what, got, &w)
}

func testAudienceCRUD(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	uriB, uriA, uriC := "https://b.example/mcp", "https://a.example/api", "https://c.example/"
	mustDo(t, s.CreateAudience(ctx, fullAudience("orders_api", now, uriB, uriA)), "CreateAudience")

	got, err := s.GetAudience(ctx, "orders_api")
	mustDo(t, err, "GetAudience")
	checkAudience(t, "GetAudience after create", got, fullAudience("orders_api", now, uriA, uriB))
	for _, uri := range []string{uriA, uriB} {
		got, err := s.GetAudienceByResource(ctx, uri)
		mustDo(t, err, "GetAudienceByResource "+uri)
		checkAudience(t, "GetAudienceByResource "+uri, got, fullAudience("orders_api", now, uriA, uriB))
	}
	_, err = s.GetAudienceByResource(ctx, "https://a.example/")
	wantErr(t, err, storage.ErrNotFound, "GetAudienceByResource of a URI nobody registered (a prefix of one)")

	// An audience without resource URIs.
	mustDo(t, s.CreateAudience(ctx, fullAudience("bare", now)), "CreateAudience without URIs")
	got, err = s.GetAudience(ctx, "bare")
	mustDo(t, err, "GetAudience bare")
	checkAudience(t, "audience without URIs", got, fullAudience("bare", now))

	later := now.Add(time.Hour)
	want := fullAudience("orders_api", now, uriA, uriC)
	want.Name = "Orders"
	want.Scopes = []string{"orders:read"}
	want.TokenTTL = 0
	want.UserConsent, want.MaxConsentDuration = storage.ConsentAdminOnly, 0
	want.UpdatedAt = later
	updated, err := s.UpdateAudience(ctx, "orders_api", func(a *storage.Audience) error {
		checkAudience(t, "audience handed to UpdateAudience's fn", a, fullAudience("orders_api", now, uriA, uriB))
		a.Name = "Orders"
		a.Scopes = []string{"orders:read"}
		a.TokenTTL = 0
		a.UserConsent, a.MaxConsentDuration = storage.ConsentAdminOnly, 0
		a.ResourceURIs = []string{uriC, uriA}
		a.UpdatedAt = later
		return nil
	})
	mustDo(t, err, "UpdateAudience")
	checkAudience(t, "UpdateAudience's result", updated, want)
	got, err = s.GetAudience(ctx, "orders_api")
	mustDo(t, err, "GetAudience after update")
	checkAudience(t, "GetAudience after update", got, want)
	_, err = s.GetAudienceByResource(ctx, uriB)
	wantErr(t, err, storage.ErrNotFound, "GetAudienceByResource of a URI the update removed")
	got, err = s.GetAudienceByResource(ctx, uriC)
	mustDo(t, err, "GetAudienceByResource of a URI the update added")
	checkAudience(t, "GetAudienceByResource after update", got, want)

	// An aborted update changes nothing.
	errStop := errors.New("stop")
	_, err = s.UpdateAudience(ctx, "orders_api", func(a *storage.Audience) error {
		a.ResourceURIs = nil
		return errStop
	})
	wantErr(t, err, errStop, "UpdateAudience whose fn fails")
	got, err = s.GetAudience(ctx, "orders_api")
	mustDo(t, err, "GetAudience after aborted update")
	checkAudience(t, "audience after an aborted update", got, want)

	mustDo(t, s.DeleteAudience(ctx, "orders_api"), "DeleteAudience")
	_, err = s.GetAudience(ctx, "orders_api")
	wantErr(t, err, storage.ErrNotFound, "GetAudience after delete")
	_, err = s.GetAudienceByResource(ctx, uriA)
	wantErr(t, err, storage.ErrNotFound, "GetAudienceByResource after delete")
	_, err = s.GetAudience(ctx, "bare")
	mustDo(t, err, "GetAudience of the audience not deleted")

	// Deleting frees the URIs.
	mustDo(t, s.CreateAudience(ctx, fullAudience("orders_v2", now, uriA)), "CreateAudience reusing a freed URI")
}

func testAudienceConflict(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	uri1, uri2, uri3 := "https://one.example/", "https://two.example/", "https://three.example/"
	mustDo(t, s.CreateAudience(ctx, fullAudience("aud_1", now, uri1)), "CreateAudience aud_1")

	wantErr(t, s.CreateAudience(ctx, fullAudience("aud_1", now, uri2)), storage.ErrConflict, "CreateAudience with a taken id")
	_, err := s.GetAudienceByResource(ctx, uri2)
	wantErr(t, err, storage.ErrNotFound, "URI of an audience whose create conflicted on its id")

	// uri1 belongs to aud_1: the whole create fails, including the audience row and its
	// other (free) URI.
	wantErr(t, s.CreateAudience(ctx, fullAudience("aud_2", now, uri2, uri1)), storage.ErrConflict,
		"CreateAudience with a resource URI another audience holds")
	_, err = s.GetAudience(ctx, "aud_2")
	wantErr(t, err, storage.ErrNotFound, "audience whose create conflicted on a URI")
	_, err = s.GetAudienceByResource(ctx, uri2)
	wantErr(t, err, storage.ErrNotFound, "free URI of an audience whose create conflicted")

	mustDo(t, s.CreateAudience(ctx, fullAudience("aud_3", now, uri3)), "CreateAudience aud_3")
	_, err = s.UpdateAudience(ctx, "aud_3", func(a *storage.Audience) error {
		a.Name = "should not be stored"
		a.ResourceURIs = []string{uri1}
		return nil
	})
	wantErr(t, err, storage.ErrConflict, "UpdateAudience taking another audience's URI")
	got, err := s.GetAudienceByResource(ctx, uri3)
	mustDo(t, err, "GetAudienceByResource of aud_3's URI after the conflicting update")
	checkAudience(t, "aud_3 after a conflicting update", got, fullAudience("aud_3", now, uri3))
	got, err = s.GetAudienceByResource(ctx, uri1)
	mustDo(t, err, "GetAudienceByResource of aud_1's URI")
	checkAudience(t, "aud_1 after aud_3's conflicting update", got, fullAudience("aud_1", now, uri1))
}

func testAudienceNotFound(t *testing.T, s storage.Store) {
	ctx := t.Context()
	_, err := s.GetAudience(ctx, "missing")
	wantErr(t, err, storage.ErrNotFound, "GetAudience of a missing id")
	_, err = s.GetAudienceByResource(ctx, "https://missing.example/")
	wantErr(t, err, storage.ErrNotFound, "GetAudienceByResource of an unknown URI")
	_, err = s.UpdateAudience(ctx, "missing", func(*storage.Audience) error { return nil })
	wantErr(t, err, storage.ErrNotFound, "UpdateAudience of a missing id")
	wantErr(t, s.DeleteAudience(ctx, "missing"), storage.ErrNotFound, "DeleteAudience of a missing id")
}

func testAudiencePagination(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	var ids []string
	for i := range 7 {
		ids = append(ids, fmt.Sprintf("aud_%02d", i))
	}
	for _, id := range shuffled(ids) {
		a := fullAudience(id, now, "https://"+id+".example/a", "https://"+id+".example/b")
		mustDo(t, s.CreateAudience(ctx, a), "CreateAudience "+id)
	}
	list := func(p storage.Page) ([]storage.Audience, string, error) { return s.ListAudiences(ctx, p) }
	checkWalk(t, "ListAudiences", list, func(a storage.Audience) string { return a.ID }, ids)
	checkBadCursors(t, "ListAudiences", list)

	// Listed audiences carry their resource URIs.
	items, _, err := s.ListAudiences(ctx, storage.Page{Limit: 2})
	mustDo(t, err, "ListAudiences")
	for i := range items {
		id := items[i].ID
		checkAudience(t, "ListAudiences item "+id, &items[i],
			fullAudience(id, now, "https://"+id+".example/a", "https://"+id+".example/b"))
	}
}
