package keys_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/storage"
)

// Replicas that find an empty store at the same moment must end up with one key, not one
// each: a key that signs at once is one the others would call unknown until their next
// reload (reliability run: replica C called A's and B's tokens inactive).
func TestReplicasStartingTogetherCreateOneKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db")
	const n = 4
	ms := make([]*keys.Manager, n)
	for i := range ms {
		ms[i] = newManager(t, openStore(t, path), secretA, nil, testOpts)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range ms {
		wg.Go(func() {
			<-start
			errs[i] = m.Ensure(t.Context())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: Ensure: %v", i, err)
		}
	}
	list, err := ms[0].List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("%d replicas starting together stored %d keys, want 1", n, len(list))
	}
	for i, m := range ms {
		if m.ActiveKID() != list[0].KID {
			t.Errorf("replica %d signs with %q, the store's one key is %q", i, m.ActiveKID(), list[0].KID)
		}
	}
}

// countingKeys counts the store reads a Manager makes, and can fail them.
type countingKeys struct {
	storage.KeyStore
	lists atomic.Int64
	fail  atomic.Bool
}

var errStoreDown = errors.New("store down")

func (c *countingKeys) ListKeys(ctx context.Context) ([]storage.SigningKey, error) {
	c.lists.Add(1)
	if c.fail.Load() {
		return nil, errStoreDown
	}
	return c.KeyStore.ListKeys(ctx)
}

// freshPair returns replica A and replica B (whose store reads are counted) on one file, both
// loaded, and a token A signed with a key B has never loaded: A made it after retiring every
// key, as a store whose keys were all retired makes a first key that signs at once.
func freshPair(t *testing.T, opts keys.Options) (a, b *keys.Manager, bStore *countingKeys, tok string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mandate.db")
	sa := openStore(t, path)
	a = newManager(t, sa, secretA, nil, opts)
	ensure(t, a)
	bStore = &countingKeys{KeyStore: openStore(t, path)}
	b = newManager(t, bStore, secretA, nil, opts)
	ensure(t, b)
	old := a.ActiveKID()
	now := time.Now()
	if _, err := sa.UpdateKey(t.Context(), old, func(k *storage.SigningKey) error {
		k.Status, k.RetiredAt, k.RemoveAt = storage.KeyRetired, now, now.Add(time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if a.ActiveKID() == old || a.ActiveKID() == "" {
		t.Fatalf("A did not make a new key: %q", a.ActiveKID())
	}
	tok, _ = sign(t, a, `{"sub":"alice"}`)
	if _, _, err := b.Verify(tok); !errors.Is(err, keys.ErrInvalidToken) {
		t.Fatalf("B knew A's new key without reloading: %v", err)
	}
	return a, b, bStore, tok
}

func TestVerifyFreshReloadsForAnUnknownKID(t *testing.T) {
	opts := testOpts
	opts.UnknownKIDGap = time.Millisecond
	a, b, _, tok := freshPair(t, opts)
	payload, kid, err := b.VerifyFresh(t.Context(), tok)
	if err != nil || string(payload) != `{"sub":"alice"}` || kid != a.ActiveKID() {
		t.Fatalf("B.VerifyFresh(A's token) = %q, %q, %v; want A's payload and kid %s", payload, kid, err, a.ActiveKID())
	}
	doc, _ := b.JWKS()
	verifyWithJWKS(t, doc, tok)

	// A kid nobody made is still refused, as invalid (not as unavailable).
	forged := tokenWithKID(t, a, "kid-nobody-made")
	if _, _, err := b.VerifyFresh(t.Context(), forged); !errors.Is(err, keys.ErrInvalidToken) || errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("VerifyFresh(made-up kid) = %v, want ErrInvalidToken", err)
	}
}

// A reload that cannot be done leaves the verdict open: the caller must say "retry later",
// never "inactive".
func TestVerifyFreshWithTheStoreDownIsUnavailable(t *testing.T) {
	opts := testOpts
	opts.UnknownKIDGap = time.Millisecond
	_, b, bs, tok := freshPair(t, opts)
	bs.fail.Store(true)
	if _, _, err := b.VerifyFresh(t.Context(), tok); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("VerifyFresh with the store down = %v, want ErrUnavailable", err)
	}
	bs.fail.Store(false)
	if _, _, err := b.VerifyFresh(t.Context(), tok); err != nil {
		t.Fatalf("VerifyFresh once the store is back = %v", err)
	}
}

// Made-up kids cannot make a replica hammer the store: a burst shares one reload, and a
// reload starts at most once per UnknownKIDGap.
func TestVerifyFreshReloadsAreSharedAndRateLimited(t *testing.T) {
	opts := testOpts
	opts.UnknownKIDGap = time.Hour // no second reload can start during the test
	a, b, bs, tok := freshPair(t, opts)
	before := bs.lists.Load()

	const n = 32
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			_, _, results[i] = b.VerifyFresh(ctx, tokenWithKID(t, a, fmt.Sprintf("made-up-%d", i)))
		})
	}
	wg.Wait()
	// One Refresh that writes nothing reads the keys once.
	if got := bs.lists.Load() - before; got != 1 {
		t.Fatalf("%d concurrent made-up kids made %d key reads, want 1", n, got)
	}
	for i, err := range results {
		if !errors.Is(err, keys.ErrInvalidToken) && !errors.Is(err, keys.ErrUnavailable) {
			t.Errorf("made-up kid %d: %v", i, err)
		}
	}
	// That one reload found A's key: a real token verifies with no further read...
	if _, _, err := b.Verify(tok); err != nil {
		t.Fatalf("after the shared reload, B still does not know A's key: %v", err)
	}
	// ...and a new made-up kid waits for the next slot rather than reading again.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := b.VerifyFresh(ctx, tokenWithKID(t, a, "made-up-late")); !errors.Is(err, keys.ErrUnavailable) {
		t.Fatalf("made-up kid within the gap = %v, want ErrUnavailable (it waited)", err)
	}
	if got := bs.lists.Load() - before; got != 1 {
		t.Fatalf("a made-up kid within the gap read the keys again (%d reads)", got)
	}
}

// tokenWithKID is a token signed by m's active key whose header names kid instead.
func tokenWithKID(t *testing.T, m *keys.Manager, kid string) string {
	t.Helper()
	h := fmt.Sprintf(`{"alg":"ES256","kid":%q,"typ":"at+jwt"}`, kid)
	tok, _ := sign(t, m, `{"sub":"mallory"}`)
	parts := strings.Split(tok, ".")
	return base64.RawURLEncoding.EncodeToString([]byte(h)) + "." + parts[1] + "." + parts[2]
}
