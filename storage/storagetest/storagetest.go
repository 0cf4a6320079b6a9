// Package storagetest is the one conformance suite of the storage contract. Every backend's
// test calls Run with a function that opens a fresh, empty store; a backend that passes it
// behaves as package storage documents, down to the edge cases (time precision, cursor
// walks, lost updates, replay races, atomic issuance).
//
// It imports only package storage and the standard library: no backend, no driver. The
// suite must never be weakened for one backend; a backend that cannot pass a case is wrong,
// or the contract in package storage is, and that is where to fix it.
package storagetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// Run runs the whole suite. open must return a new, empty store each time it is called (each
// subtest calls it once and may run in parallel with the others) and arrange for it to be
// closed with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) storage.Store) {
	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Clients", clientCases},
		{"Audiences", audienceCases},
		{"Grants", grantCases},
		{"Keys", keyCases},
		{"Replay", replayCases},
		{"Tokens", tokenCases},
		{"Audit", auditCases},
		{"GrantRequests", grantRequestCases},
		{"Consent", consentCases},
		{"Sessions", sessionCases},
		{"Tx", txCases},
		{"Changes", changeCases},
		{"Misc", miscCases},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			t.Parallel()
			for _, c := range g.cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.fn(t, open(t))
				})
			}
		})
	}
}

type testCase struct {
	name string
	fn   func(t *testing.T, s storage.Store)
}

var miscCases = []testCase{
	{"Ping", func(t *testing.T, s storage.Store) {
		if err := s.Ping(t.Context()); err != nil {
			t.Fatalf("Ping on a fresh store: %v", err)
		}
	}},
	{"TimesComeBackUTCWithMicroseconds", testTimeRoundTrip},
	{"MarkersAreSetOnce", testMarkers},
}

func testMarkers(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	_, err := s.GetMarker(ctx, storage.MarkerBootstrap)
	wantErr(t, err, storage.ErrNotFound, "GetMarker on a fresh store")
	// Of concurrent setters exactly one wins; inside a transaction too.
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- s.InTx(ctx, func(tx storage.Store) error { return tx.SetMarker(ctx, storage.MarkerBootstrap, now) })
		}()
	}
	won := 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			won++
		case !errors.Is(err, storage.ErrConflict):
			t.Errorf("SetMarker lost with %v, want ErrConflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent SetMarker calls succeeded, want 1", won)
	}
	at, err := s.GetMarker(ctx, storage.MarkerBootstrap)
	mustDo(t, err, "GetMarker")
	if !at.Equal(now) || at.Location() != time.UTC {
		t.Errorf("GetMarker = %s, want %s in UTC", fmtTime(at), fmtTime(now))
	}
	// A rolled-back SetMarker leaves nothing.
	errAbort := errors.New("abort")
	err = s.InTx(ctx, func(tx storage.Store) error {
		if err := tx.SetMarker(ctx, "other", now); err != nil {
			return err
		}
		return errAbort
	})
	wantErr(t, err, errAbort, "InTx")
	_, err = s.GetMarker(ctx, "other")
	wantErr(t, err, storage.ErrNotFound, "GetMarker of a rolled-back marker")
}

// ---------------------------------------------------------------------------------------------
// Shared fixtures

// zone is where the suite's input times live, so a backend that keeps the caller's zone (or
// reads back in the server's local zone) shows up as a non-UTC time.
var zone = time.FixedZone("UTC+05:30", 5*3600+30*60)

// testNow is the suite's clock: the wall clock (some calls may compare with the database's
// own), cut to microseconds so no case depends on how a backend rounds.
func testNow() time.Time { return time.Now().Truncate(time.Microsecond).In(zone) }

func testTimeRoundTrip(t *testing.T, s storage.Store) {
	ctx := t.Context()
	// 400ns past a whole microsecond: truncating and rounding agree, and only microseconds
	// survive in either backend.
	in := time.Date(2031, time.March, 4, 5, 6, 7, 123456400, zone)
	want := time.Date(2031, time.March, 3, 23, 36, 7, 123456000, time.UTC)
	c := &storage.Client{ID: "cli_time", CreatedAt: in, UpdatedAt: in, PreviousSecretExpiresAt: in}
	mustDo(t, s.CreateClient(ctx, c), "CreateClient")
	got, err := s.GetClient(ctx, c.ID)
	mustDo(t, err, "GetClient")
	for name, v := range map[string]time.Time{
		"CreatedAt": got.CreatedAt, "UpdatedAt": got.UpdatedAt,
		"PreviousSecretExpiresAt": got.PreviousSecretExpiresAt,
	} {
		if v.Location() != time.UTC {
			t.Errorf("%s: location %q, want UTC", name, v.Location())
		}
		if !v.Equal(want) {
			t.Errorf("%s: got %s, want %s (stored %s)", name, fmtTime(v), fmtTime(want), fmtTime(in))
		}
		if v.Nanosecond() != 123456000 {
			t.Errorf("%s: nanoseconds %d, want 123456000 (microsecond precision)", name, v.Nanosecond())
		}
	}

	// The zero time is "unset", not 0001-01-01 in some other shape or the Unix epoch.
	z := &storage.Client{ID: "cli_zero", CreatedAt: in, UpdatedAt: in}
	mustDo(t, s.CreateClient(ctx, z), "CreateClient")
	got, err = s.GetClient(ctx, z.ID)
	mustDo(t, err, "GetClient")
	if !got.PreviousSecretExpiresAt.IsZero() {
		t.Errorf("unset PreviousSecretExpiresAt came back as %s, want the zero time", fmtTime(got.PreviousSecretExpiresAt))
	}
}

// ---------------------------------------------------------------------------------------------
// Assertions

func mustDo(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: unexpected error: %v", what, err)
	}
}

// wantErr checks errors.Is(err, target).
func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}

// wantIDs compares two id lists in order.
func wantIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n  got  %q\n  want %q", what, got, want)
	}
}

// checkEqual compares a record read back with what was stored, field by field, under the
// contract's rules: times compared as instants at microsecond precision and required to be
// UTC, nil and empty lists equal, JSON bytes compared as JSON (jsonb reformats them).
func checkEqual(t *testing.T, what string, got, want any) {
	t.Helper()
	if d := diff(got, want); len(d) > 0 {
		t.Errorf("%s: read back differs from what was stored:\n  %s", what, strings.Join(d, "\n  "))
	}
}

var timeType = reflect.TypeFor[time.Time]()

func diff(got, want any) []string {
	var out []string
	diffValue(&out, "", reflect.ValueOf(got), reflect.ValueOf(want))
	return out
}

func diffValue(out *[]string, path string, g, w reflect.Value) {
	add := func(format string, args ...any) {
		*out = append(*out, strings.TrimPrefix(path, ".")+": "+fmt.Sprintf(format, args...))
	}
	if g.Type() != w.Type() {
		add("type %s, want %s", g.Type(), w.Type())
		return
	}
	switch {
	case g.Type() == timeType:
		gt, wt := g.Interface().(time.Time), w.Interface().(time.Time).Truncate(time.Microsecond)
		switch {
		case !gt.Equal(wt):
			add("got %s, want %s", fmtTime(gt), fmtTime(wt))
		case !gt.IsZero() && gt.Location() != time.UTC:
			add("got location %q, want UTC", gt.Location())
		}
	case g.Kind() == reflect.Pointer:
		if g.IsNil() || w.IsNil() {
			if g.IsNil() != w.IsNil() {
				add("got %v, want %v", g.Interface(), w.Interface())
			}
			return
		}
		diffValue(out, path, g.Elem(), w.Elem())
	case g.Kind() == reflect.Struct:
		for i := range g.NumField() {
			diffValue(out, path+"."+g.Type().Field(i).Name, g.Field(i), w.Field(i))
		}
	case g.Kind() == reflect.Slice && g.Type().Elem().Kind() == reflect.Uint8:
		gb, wb := g.Bytes(), w.Bytes()
		if !bytesEqual(gb, wb) {
			add("got %q, want %q", gb, wb)
		}
	case g.Kind() == reflect.Slice:
		if g.Len() == 0 && w.Len() == 0 {
			return // nil and empty are the same list
		}
		if !reflect.DeepEqual(g.Interface(), w.Interface()) {
			add("got %#v, want %#v", g.Interface(), w.Interface())
		}
	default:
		if !reflect.DeepEqual(g.Interface(), w.Interface()) {
			add("got %#v, want %#v", g.Interface(), w.Interface())
		}
	}
}

// bytesEqual treats nil and empty as equal and compares JSON documents by value.
func bytesEqual(g, w []byte) bool {
	if len(g) == 0 && len(w) == 0 {
		return true
	}
	if bytes.Equal(g, w) {
		return true
	}
	if !json.Valid(g) || !json.Valid(w) {
		return false
	}
	var gv, wv any
	_ = json.Unmarshal(g, &gv)
	_ = json.Unmarshal(w, &wv)
	return reflect.DeepEqual(gv, wv)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "zero time"
	}
	return t.Format(time.RFC3339Nano) + " (" + t.Location().String() + ")"
}

// ---------------------------------------------------------------------------------------------
// Pagination

// walk reads every page of a list with the given page size and returns the keys in the order
// read, failing on a page over the size, a short page that still has a next cursor, a key
// seen twice, or a cursor that never ends. sizes receives each page's length.
func walk[T any](t *testing.T, what string, size int, list func(storage.Page) ([]T, string, error), key func(T) string) (keys []string, sizes []int) {
	t.Helper()
	seen := map[string]int{}
	cursor := ""
	for page := 1; ; page++ {
		if page > 100 {
			t.Fatalf("%s: more than 100 pages of %d; the cursor does not advance", what, size)
		}
		items, next, err := list(storage.Page{Limit: size, Cursor: cursor})
		if err != nil {
			t.Fatalf("%s: page %d (cursor %q): %v", what, page, cursor, err)
		}
		if len(items) > size {
			t.Fatalf("%s: page %d holds %d items, over the limit %d", what, page, len(items), size)
		}
		sizes = append(sizes, len(items))
		for _, it := range items {
			k := key(it)
			if p, dup := seen[k]; dup {
				t.Errorf("%s: %q on page %d was already on page %d", what, k, page, p)
			}
			seen[k] = page
			keys = append(keys, k)
		}
		if next == "" {
			return keys, sizes
		}
		if next == cursor {
			t.Fatalf("%s: page %d returned the cursor it was given", what, page)
		}
		cursor = next
	}
}

// checkWalk walks a list of 7 with pages of 3 and checks the pages are 3, 3, 1 and hold want
// in order.
func checkWalk[T any](t *testing.T, what string, list func(storage.Page) ([]T, string, error), key func(T) string, want []string) {
	t.Helper()
	if len(want) != 7 {
		t.Fatalf("checkWalk wants 7 items, given %d", len(want))
	}
	keys, sizes := walk(t, what, 3, list, key)
	wantIDs(t, what+": keys over all pages", keys, want)
	if !slices.Equal(sizes, []int{3, 3, 1}) {
		t.Errorf("%s: page sizes %v, want [3 3 1] (the last page has no next cursor)", what, sizes)
	}
	// The default limit (50) returns everything on one page, with no next cursor.
	items, next, err := list(storage.Page{})
	mustDo(t, err, what+": default page")
	if len(items) != len(want) || next != "" {
		t.Errorf("%s: default page holds %d items with next %q, want %d and no cursor", what, len(items), next, len(want))
	}
}

// badCursors are cursors no backend produces.
var badCursors = []string{"not a cursor!", "%%%", "\x00\xff"}

func checkBadCursors[T any](t *testing.T, what string, list func(storage.Page) ([]T, string, error)) {
	t.Helper()
	for _, c := range badCursors {
		_, _, err := list(storage.Page{Limit: 3, Cursor: c})
		wantErr(t, err, storage.ErrBadCursor, fmt.Sprintf("%s with cursor %q", what, c))
	}
}

// shuffled returns ids in a fixed scrambled order, so a backend that returns insertion order
// instead of sorting fails.
func shuffled(ids []string) []string {
	out := slices.Clone(ids)
	for i := range out {
		j := (i*5 + 3) % len(out)
		out[i], out[j] = out[j], out[i]
	}
	return out
}
