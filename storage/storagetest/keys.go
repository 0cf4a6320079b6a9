package storagetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mandatehq/mandate/storage"
)

var keyCases = []testCase{
	{"Lifecycle", testKeys},
	{"MissingIsNotFound", testKeyNotFound},
	{"CreateIfNoneLive", testCreateKeyIfNoneLive},
	{"CreateIfNoneLiveRace", func(t *testing.T, s storage.Store) { raceFirstKey(t, s, s) }},
}

func makeKey(kid string, created time.Time) *storage.SigningKey {
	return &storage.SigningKey{
		KID:                 kid,
		Alg:                 "ES256",
		Status:              storage.KeyActive,
		PublicJWK:           []byte(`{"kty":"EC","crv":"P-256","kid":"` + kid + `","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}`),
		EncryptedPrivateKey: []byte{0x00, 0x01, 0x02, 0xfd, 0xfe, 0xff, 'x'},
		CreatedAt:           created,
		ActivatesAt:         created.Add(time.Minute),
	}
}

func testKeys(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	keys, err := s.ListKeys(ctx)
	mustDo(t, err, "ListKeys on an empty store")
	if len(keys) != 0 {
		t.Fatalf("ListKeys on an empty store: %d keys", len(keys))
	}

	// Created newest first; listed oldest first.
	mustDo(t, s.CreateKey(ctx, makeKey("kid_new", now.Add(time.Hour))), "CreateKey kid_new")
	mustDo(t, s.CreateKey(ctx, makeKey("kid_old", now)), "CreateKey kid_old")
	wantErr(t, s.CreateKey(ctx, makeKey("kid_old", now.Add(2*time.Hour))), storage.ErrConflict, "CreateKey with a taken kid")

	keys, err = s.ListKeys(ctx)
	mustDo(t, err, "ListKeys")
	if len(keys) != 2 {
		t.Fatalf("ListKeys: %d keys, want 2", len(keys))
	}
	checkEqual(t, "ListKeys[0] (oldest)", &keys[0], makeKey("kid_old", now))
	checkEqual(t, "ListKeys[1]", &keys[1], makeKey("kid_new", now.Add(time.Hour)))

	retired := makeKey("kid_old", now)
	retired.Status = storage.KeyRetired
	retired.RetiredAt = now.Add(3 * time.Hour)
	retired.RemoveAt = now.Add(27 * time.Hour)
	got, err := s.UpdateKey(ctx, "kid_old", func(k *storage.SigningKey) error {
		checkEqual(t, "key handed to UpdateKey's fn", k, makeKey("kid_old", now))
		k.Status = storage.KeyRetired
		k.RetiredAt = now.Add(3 * time.Hour)
		k.RemoveAt = now.Add(27 * time.Hour)
		return nil
	})
	mustDo(t, err, "UpdateKey")
	checkEqual(t, "UpdateKey's result", got, retired)

	errStop := errors.New("stop")
	_, err = s.UpdateKey(ctx, "kid_new", func(k *storage.SigningKey) error {
		k.Status = storage.KeyRetired
		return errStop
	})
	wantErr(t, err, errStop, "UpdateKey whose fn fails")

	keys, err = s.ListKeys(ctx)
	mustDo(t, err, "ListKeys after updates")
	if len(keys) != 2 {
		t.Fatalf("ListKeys after updates: %d keys, want 2", len(keys))
	}
	checkEqual(t, "retired key", &keys[0], retired)
	checkEqual(t, "key whose update was aborted", &keys[1], makeKey("kid_new", now.Add(time.Hour)))

	mustDo(t, s.DeleteKey(ctx, "kid_old"), "DeleteKey")
	keys, err = s.ListKeys(ctx)
	mustDo(t, err, "ListKeys after delete")
	if len(keys) != 1 || keys[0].KID != "kid_new" {
		t.Errorf("ListKeys after deleting kid_old: %+v, want only kid_new", keys)
	}
}

// CreateKeyIfNoneLive creates only while every stored key, if any, is retired.
func testCreateKeyIfNoneLive(t *testing.T, s storage.Store) {
	ctx := t.Context()
	now := testNow()
	first := makeKey("kid_first", now)
	created, err := s.CreateKeyIfNoneLive(ctx, first)
	mustDo(t, err, "CreateKeyIfNoneLive on an empty store")
	if !created {
		t.Fatalf("CreateKeyIfNoneLive on an empty store created nothing")
	}
	keys, err := s.ListKeys(ctx)
	mustDo(t, err, "ListKeys")
	if len(keys) != 1 {
		t.Fatalf("ListKeys: %d keys, want 1", len(keys))
	}
	checkEqual(t, "key created by CreateKeyIfNoneLive", &keys[0], first)

	for _, status := range []string{storage.KeyActive, storage.KeyNext} {
		_, err := s.UpdateKey(ctx, "kid_first", func(k *storage.SigningKey) error {
			k.Status = status
			return nil
		})
		mustDo(t, err, "UpdateKey to "+status)
		created, err = s.CreateKeyIfNoneLive(ctx, makeKey("kid_second", now.Add(time.Hour)))
		mustDo(t, err, "CreateKeyIfNoneLive beside a "+status+" key")
		if created {
			t.Fatalf("CreateKeyIfNoneLive created a key beside a %s key", status)
		}
	}
	_, err = s.UpdateKey(ctx, "kid_first", func(k *storage.SigningKey) error {
		k.Status, k.RetiredAt, k.RemoveAt = storage.KeyRetired, now, now.Add(time.Hour)
		return nil
	})
	mustDo(t, err, "UpdateKey to retired")
	created, err = s.CreateKeyIfNoneLive(ctx, makeKey("kid_second", now.Add(time.Hour)))
	mustDo(t, err, "CreateKeyIfNoneLive beside a retired key")
	if !created {
		t.Fatalf("CreateKeyIfNoneLive beside only a retired key created nothing")
	}
	created, err = s.CreateKeyIfNoneLive(ctx, makeKey("kid_first", now))
	if created || err != nil && !errors.Is(err, storage.ErrConflict) {
		t.Errorf("CreateKeyIfNoneLive with a taken kid beside a live key = %v, %v; want false and no error or ErrConflict", created, err)
	}
}

// raceFirstKey has several callers, half on a and half on b (two handles on one store, or
// one twice), create a first key at once: exactly one may succeed.
func raceFirstKey(t *testing.T, a, b storage.Store) {
	ctx := t.Context()
	now := testNow()
	const n = 8
	start := make(chan struct{})
	var wg sync.WaitGroup
	created := make([]bool, n)
	errs := make([]error, n)
	for i := range n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			created[i], errs[i] = s.CreateKeyIfNoneLive(ctx, makeKey(fmt.Sprintf("kid_race_%d", i), now))
		})
	}
	close(start)
	wg.Wait()
	winners := 0
	for i := range n {
		mustDo(t, errs[i], fmt.Sprintf("racing CreateKeyIfNoneLive #%d", i))
		if created[i] {
			winners++
		}
	}
	keys, err := a.ListKeys(ctx)
	mustDo(t, err, "ListKeys after the race")
	if winners != 1 || len(keys) != 1 {
		t.Fatalf("%d of %d racing callers created a key and the store holds %d; want exactly 1 and 1", winners, n, len(keys))
	}
}

func testKeyNotFound(t *testing.T, s storage.Store) {
	ctx := t.Context()
	_, err := s.UpdateKey(ctx, "kid_missing", func(*storage.SigningKey) error { return nil })
	wantErr(t, err, storage.ErrNotFound, "UpdateKey of a missing kid")
	wantErr(t, s.DeleteKey(ctx, "kid_missing"), storage.ErrNotFound, "DeleteKey of a missing kid")
}
