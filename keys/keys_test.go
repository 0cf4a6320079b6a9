package keys_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// clock is a controllable time source shared by the "processes" of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const (
	secretA = "first-deployment-secret-0123456789abcdef"
	secretB = "another-deployment-secret-0123456789abcdef"
)

// openStore opens the SQLite file at path: each call is one "process".
func openStore(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func newSealer(t testing.TB, s string) *keys.Sealer {
	t.Helper()
	m, err := secret.NewMaster(s)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := keys.NewSealer(m)
	if err != nil {
		t.Fatal(err)
	}
	return sl
}

var testOpts = keys.Options{
	RotateEvery:      24 * time.Hour,
	PublishAhead:     15 * time.Minute,
	TokenLifetimeMax: time.Hour,
	ReloadEvery:      10 * time.Second,
}

func newManager(t testing.TB, store storage.KeyStore, sec string, c *clock, opts keys.Options) *keys.Manager {
	t.Helper()
	if c != nil {
		opts.Now = c.Now
	}
	m, err := keys.NewManager(store, newSealer(t, sec), opts)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	return m
}

func ensure(t testing.TB, m *keys.Manager) {
	t.Helper()
	if err := m.Ensure(context.Background()); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
}

func sign(t testing.TB, m *keys.Manager, claims string) (string, string) {
	t.Helper()
	tok, kid, err := m.Sign([]byte(claims), keys.TypAccessToken)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok, kid
}

// verifyWithJWKS checks tok the way a downstream API would: with jwx and the published JWKS.
func verifyWithJWKS(t *testing.T, doc []byte, tok string) []byte {
	t.Helper()
	set, err := jwk.Parse(doc)
	if err != nil {
		t.Fatalf("parse JWKS: %v", err)
	}
	payload, err := jws.Verify([]byte(tok), jws.WithKeySet(set))
	if err != nil {
		t.Fatalf("jwx verify with JWKS: %v", err)
	}
	return payload
}

func jwksKIDs(t *testing.T, doc []byte) []string {
	t.Helper()
	var d struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("JWKS JSON: %v", err)
	}
	var kids []string
	for _, k := range d.Keys {
		kid, _ := k["kid"].(string)
		kids = append(kids, kid)
	}
	return kids
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func headerOf(t *testing.T, tok string) map[string]any {
	t.Helper()
	h, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(h, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTwoProcessesShareOneKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db")
	c := newClock()
	a := newManager(t, openStore(t, path), secretA, c, testOpts)
	ensure(t, a)
	b := newManager(t, openStore(t, path), secretA, c, testOpts)
	ensure(t, b)

	if a.ActiveKID() == "" || a.ActiveKID() != b.ActiveKID() {
		t.Fatalf("active kid: A %q, B %q", a.ActiveKID(), b.ActiveKID())
	}
	ks, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || ks[0].Status != storage.KeyActive || ks[0].EncryptedPrivateKey != nil {
		t.Fatalf("List: %+v", ks)
	}

	claims := `{"sub":"alice","aud":"api"}`
	tok, kid := sign(t, b, claims)
	if kid != a.ActiveKID() {
		t.Fatalf("B signed with %s, A's active key is %s", kid, a.ActiveKID())
	}
	docA, _ := a.JWKS()
	if got := verifyWithJWKS(t, docA, tok); string(got) != claims {
		t.Fatalf("payload %q", got)
	}
	got, vkid, err := a.Verify(tok)
	if err != nil || string(got) != claims || vkid != kid {
		t.Fatalf("A.Verify(B's token) = %q, %q, %v", got, vkid, err)
	}
	h := headerOf(t, tok)
	if h["alg"] != "ES256" || h["typ"] != "at+jwt" || h["kid"] != kid || len(h) != 3 {
		t.Fatalf("header %v", h)
	}
	// RFC 7518 §3.4: the ES256 signature is R||S, 64 bytes, not ASN.1.
	sig, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[2])
	if len(sig) != 64 {
		t.Fatalf("signature is %d bytes", len(sig))
	}
}

// Two replicas that each created a first key at the same instant (before seeing the other's)
// must settle on the same one from the rows alone.
func TestSimultaneousFirstKeysAgree(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	shared := openStore(t, filepath.Join(dir, "shared.db"))
	a := newManager(t, shared, secretA, c, testOpts)
	ensure(t, a)

	// B made its key in isolation at the same clock reading; then its row lands in the store.
	other := openStore(t, filepath.Join(dir, "other.db"))
	ensure(t, newManager(t, other, secretA, c, testOpts))
	rows, err := other.ListKeys(context.Background())
	if err != nil || len(rows) != 1 {
		t.Fatalf("other store: %v %v", rows, err)
	}
	if err := shared.CreateKey(context.Background(), &rows[0]); err != nil {
		t.Fatal(err)
	}
	b := newManager(t, openStore(t, filepath.Join(dir, "shared.db")), secretA, c, testOpts)
	ensure(t, b)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	all, _ := shared.ListKeys(context.Background())
	if len(all) != 2 || !all[0].ActivatesAt.Equal(all[1].ActivatesAt) {
		t.Fatalf("want two keys with the same ActivatesAt: %+v", all)
	}
	want := max(all[0].KID, all[1].KID) // the documented tie-break
	if a.ActiveKID() != want || b.ActiveKID() != want {
		t.Fatalf("active: A %s, B %s, want %s", a.ActiveKID(), b.ActiveKID(), want)
	}
	for _, k := range all {
		wantStatus := storage.KeyRetired
		if k.KID == want {
			wantStatus = storage.KeyActive
		}
		if k.Status != wantStatus {
			t.Errorf("stored %s status %s, want %s", k.KID, k.Status, wantStatus)
		}
	}
	// Both stay published: the loser may have signed before the replicas converged.
	doc, _ := b.JWKS()
	if kids := jwksKIDs(t, doc); len(kids) != 2 {
		t.Fatalf("JWKS kids %v", kids)
	}
}

func TestRotationLifecycle(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mandate.db")
	c := newClock()
	store := openStore(t, path)
	a := newManager(t, store, secretA, c, testOpts)
	ensure(t, a)
	b := newManager(t, openStore(t, path), secretA, c, testOpts)
	ensure(t, b)
	k1 := a.ActiveKID()
	oldTok, _ := sign(t, a, `{"n":1}`)
	etag1 := func() string { _, e := a.JWKS(); return e }()

	// Not due yet: nothing happens.
	c.Add(testOpts.RotateEvery - time.Second)
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, _ := store.ListKeys(ctx); len(rows) != 1 {
		t.Fatalf("rotated early: %d keys", len(rows))
	}

	// Due: a next key is created and published, but the old one still signs.
	c.Add(time.Second)
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ := store.ListKeys(ctx)
	if len(rows) != 2 {
		t.Fatalf("want 2 keys, have %d", len(rows))
	}
	k2 := rows[1].KID
	if rows[1].Status != storage.KeyNext || !rows[1].ActivatesAt.Equal(c.Now().Add(testOpts.PublishAhead)) {
		t.Fatalf("next key: %+v", rows[1])
	}
	if err := b.Refresh(ctx); err != nil { // B only reads; it must not rotate again
		t.Fatal(err)
	}
	if rows, _ := store.ListKeys(ctx); len(rows) != 2 {
		t.Fatalf("B rotated again: %d keys", len(rows))
	}
	for _, m := range []*keys.Manager{a, b} {
		doc, etag := m.JWKS()
		if kids := jwksKIDs(t, doc); !contains(kids, k1) || !contains(kids, k2) {
			t.Fatalf("JWKS %v lacks %s or %s", kids, k1, k2)
		}
		if etag == etag1 {
			t.Fatal("ETag did not change with the key set")
		}
		if _, kid := sign(t, m, `{}`); kid != k1 {
			t.Fatalf("signed with %s before PublishAhead passed; want %s", kid, k1)
		}
	}

	// After PublishAhead the new key signs, even before the next reload.
	c.Add(testOpts.PublishAhead)
	for _, m := range []*keys.Manager{a, b} {
		if _, kid := sign(t, m, `{}`); kid != k2 {
			t.Fatalf("signed with %s after PublishAhead; want %s", kid, k2)
		}
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ = store.ListKeys(ctx)
	retention := testOpts.TokenLifetimeMax + testOpts.ReloadEvery + 5*time.Minute
	k2At := rows[1].ActivatesAt
	if rows[0].Status != storage.KeyRetired || !rows[0].RetiredAt.Equal(k2At) ||
		!rows[0].RemoveAt.Equal(k2At.Add(retention)) || rows[1].Status != storage.KeyActive {
		t.Fatalf("after activation: %+v / %+v", rows[0], rows[1])
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}

	// Retired but still published: its tokens keep verifying until RemoveAt.
	c.Add(retention - time.Second)
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	doc, _ := a.JWKS()
	if !contains(jwksKIDs(t, doc), k1) {
		t.Fatal("retired key unpublished before RemoveAt")
	}
	verifyWithJWKS(t, doc, oldTok)
	if _, _, err := a.Verify(oldTok); err != nil {
		t.Fatalf("token of retired key: %v", err)
	}

	// Past RemoveAt: gone from the JWKS and the store; its tokens no longer verify.
	c.Add(time.Second)
	if _, _, err := a.Verify(oldTok); !errors.Is(err, keys.ErrInvalidToken) {
		t.Fatalf("Verify after RemoveAt (before reload): %v", err)
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	doc, _ = a.JWKS()
	if kids := jwksKIDs(t, doc); len(kids) != 1 || kids[0] != k2 {
		t.Fatalf("JWKS after RemoveAt: %v", kids)
	}
	if rows, _ := store.ListKeys(ctx); len(rows) != 1 || rows[0].KID != k2 {
		t.Fatalf("store after RemoveAt: %+v", rows)
	}
	if err := b.Refresh(ctx); err != nil { // the other replica finds it already deleted
		t.Fatal(err)
	}
	if _, _, err := b.Verify(oldTok); !errors.Is(err, keys.ErrInvalidToken) {
		t.Fatalf("B verified a token of a removed key: %v", err)
	}
}

func TestRotateOnDemand(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	store := openStore(t, filepath.Join(t.TempDir(), "mandate.db"))
	m := newManager(t, store, secretA, c, testOpts)
	ensure(t, m)
	k1 := m.ActiveKID()
	c.Add(time.Minute) // distinct CreatedAt, so ListKeys' oldest-first order is k1, next
	next, err := m.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next.Status != storage.KeyNext || next.KID == k1 || next.EncryptedPrivateKey != nil ||
		!next.ActivatesAt.Equal(c.Now().Add(testOpts.PublishAhead)) {
		t.Fatalf("Rotate: %+v", next)
	}
	again, err := m.Rotate(ctx)
	if err != nil || again.KID != next.KID {
		t.Fatalf("second Rotate: %+v %v; want the waiting key %s", again, err, next.KID)
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 2 || list[0].Status != storage.KeyActive || list[1].Status != storage.KeyNext {
		t.Fatalf("List: %+v %v", list, err)
	}
	// List shows a transition that is due but not yet written.
	c.Add(testOpts.PublishAhead)
	list, _ = m.List(ctx)
	if list[0].Status != storage.KeyRetired || list[1].Status != storage.KeyActive || list[0].RemoveAt.IsZero() {
		t.Fatalf("List after PublishAhead: %+v", list)
	}
}

func TestRunPicksUpAnotherReplicasRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db")
	opts := testOpts
	opts.ReloadEvery = 20 * time.Millisecond
	a := newManager(t, openStore(t, path), secretA, nil, opts)
	ensure(t, a)
	b := newManager(t, openStore(t, path), secretA, nil, opts)
	ensure(t, b)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	next, err := b.Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		doc, _ := a.JWKS()
		if contains(jwksKIDs(t, doc), next.KID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never published the key another replica created")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestPrivateKeysEncryptedAtRest(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mandate.db")
	c := newClock()
	for _, alg := range []string{keys.ES256, keys.EdDSA} {
		store := openStore(t, path)
		opts := testOpts
		opts.Alg = alg
		m := newManager(t, store, secretA, c, opts)
		ensure(t, m)
		if _, err := m.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		c.Add(testOpts.PublishAhead) // let it activate, so the next Rotate makes a new key
	}
	store := openStore(t, path)
	rows, err := store.ListKeys(ctx)
	if err != nil || len(rows) < 2 {
		t.Fatalf("rows %v %v", rows, err)
	}
	sealer := newSealer(t, secretA)
	for _, k := range rows {
		der, err := sealer.Open(k.KID, k.EncryptedPrivateKey)
		if err != nil {
			t.Fatalf("open %s: %v", k.KID, err)
		}
		priv, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			t.Fatalf("%s: stored plaintext is not PKCS#8: %v", k.KID, err)
		}
		var raw []byte
		switch p := priv.(type) {
		case *ecdsa.PrivateKey:
			raw, _ = p.Bytes()
		case ed25519.PrivateKey:
			raw = p.Seed()
		}
		if len(raw) < 32 {
			t.Fatalf("%s: no raw key", k.KID)
		}
		if bytes.Contains(k.EncryptedPrivateKey, der) || bytes.Contains(k.EncryptedPrivateKey, raw) ||
			bytes.Contains(k.EncryptedPrivateKey, raw[:16]) {
			t.Fatalf("%s: stored bytes contain the private key", k.KID)
		}
		var pub map[string]any
		if err := json.Unmarshal(k.PublicJWK, &pub); err != nil || pub["d"] != nil || pub["kid"] != k.KID {
			t.Fatalf("%s: public JWK %s", k.KID, k.PublicJWK)
		}
	}

	// Another deployment secret: Ensure fails and says why.
	wrong := newManager(t, store, secretB, c, testOpts)
	err = wrong.Ensure(ctx)
	if !errors.Is(err, keys.ErrUndecryptable) || !strings.Contains(err.Error(), "MANDATE_SECRET") {
		t.Fatalf("Ensure with another secret: %v", err)
	}
	if _, _, err := wrong.Sign([]byte(`{}`), keys.TypAccessToken); err == nil {
		t.Fatal("a manager that failed Ensure signed")
	}
}

func TestTamperedOrMovedKeysDoNotOpen(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	path := filepath.Join(t.TempDir(), "mandate.db")
	store := openStore(t, path)
	m := newManager(t, store, secretA, c, testOpts)
	ensure(t, m)
	c.Add(time.Minute) // distinct CreatedAt, so ListKeys' oldest-first order is k1, k2
	if _, err := m.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ := store.ListKeys(ctx)
	k1, k2 := rows[0], rows[1]
	if k1.KID != m.ActiveKID() {
		t.Fatalf("rows %+v, active %s", rows, m.ActiveKID())
	}

	sealer := newSealer(t, secretA)
	if _, err := sealer.Open(k2.KID, k1.EncryptedPrivateKey); !errors.Is(err, keys.ErrUndecryptable) {
		t.Fatalf("blob opened under another kid: %v", err)
	}
	for i := range k1.EncryptedPrivateKey {
		b := bytes.Clone(k1.EncryptedPrivateKey)
		b[i] ^= 0x01
		if _, err := sealer.Open(k1.KID, b); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}

	// Move k1's sealed key onto k2's row: a fresh process refuses to load.
	if _, err := store.UpdateKey(ctx, k2.KID, func(k *storage.SigningKey) error {
		k.EncryptedPrivateKey = k1.EncryptedPrivateKey
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fresh := newManager(t, openStore(t, path), secretA, c, testOpts)
	if err := fresh.Ensure(ctx); !errors.Is(err, keys.ErrUndecryptable) {
		t.Fatalf("Ensure with a moved key: %v", err)
	}

	// The running manager keeps signing with k1 but will not sign with the broken k2.
	if err := m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, kid := sign(t, m, `{}`); kid != k1.KID {
		t.Fatalf("signed with %s", kid)
	}
	c.Add(testOpts.PublishAhead)
	if _, _, err := m.Sign([]byte(`{}`), keys.TypAccessToken); !errors.Is(err, keys.ErrUndecryptable) {
		t.Fatalf("Sign with the broken active key: %v", err)
	}
}

func TestAlgorithms(t *testing.T) {
	store := openStore(t, filepath.Join(t.TempDir(), "mandate.db"))
	for _, alg := range []string{"RS256", "RS512", "PS256"} {
		_, err := keys.NewManager(store, newSealer(t, secretA), keys.Options{Alg: alg})
		if !errors.Is(err, keys.ErrRSANotAllowed) {
			t.Errorf("Alg %s: %v", alg, err)
		}
	}
	for _, alg := range []string{"none", "HS256", "ES384", "es256"} {
		if _, err := keys.NewManager(store, newSealer(t, secretA), keys.Options{Alg: alg}); err == nil {
			t.Errorf("Alg %s accepted", alg)
		}
	}

	opts := testOpts
	opts.Alg = keys.EdDSA
	m := newManager(t, store, secretA, newClock(), opts)
	ensure(t, m)
	tok, kid := sign(t, m, `{"sub":"bob"}`)
	if h := headerOf(t, tok); h["alg"] != "EdDSA" || h["kid"] != kid {
		t.Fatalf("header %v", h)
	}
	doc, _ := m.JWKS()
	if got := verifyWithJWKS(t, doc, tok); string(got) != `{"sub":"bob"}` {
		t.Fatalf("payload %q", got)
	}
	if _, _, err := m.Verify(tok); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSHasOnlyPublicMembers(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	path := filepath.Join(t.TempDir(), "mandate.db")
	m := newManager(t, openStore(t, path), secretA, c, testOpts)
	ensure(t, m)
	opts := testOpts
	opts.Alg = keys.EdDSA
	if _, err := newManager(t, openStore(t, path), secretA, c, opts).Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	doc, etag := m.JWKS()
	var d struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &d); err != nil || len(d.Keys) != 2 {
		t.Fatalf("JWKS %s: %v", doc, err)
	}
	allowed := map[string]bool{"kty": true, "crv": true, "x": true, "y": true, "kid": true, "alg": true, "use": true}
	algs := map[any]bool{}
	for _, k := range d.Keys {
		for name := range k {
			if !allowed[name] {
				t.Errorf("JWKS member %q in %v", name, k)
			}
		}
		if k["use"] != "sig" || k["kid"] == nil {
			t.Errorf("key %v lacks use/kid", k)
		}
		algs[k["alg"]] = true
	}
	if !algs["ES256"] || !algs["EdDSA"] {
		t.Errorf("algs %v", algs)
	}
	// Same key set, same document and ETag across reloads.
	if err := m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	doc2, etag2 := m.JWKS()
	if etag2 != etag || !bytes.Equal(doc, doc2) || !strings.HasPrefix(etag, `"`) {
		t.Fatalf("ETag %s → %s", etag, etag2)
	}
}

func TestVerifyRejects(t *testing.T) {
	c := newClock()
	store := openStore(t, filepath.Join(t.TempDir(), "mandate.db"))
	m := newManager(t, store, secretA, c, testOpts)
	ensure(t, m)
	// A key Mandate never published, used with our kid.
	stranger := newManager(t, openStore(t, filepath.Join(t.TempDir(), "other.db")), secretA, c, testOpts)
	ensure(t, stranger)

	good, kid := sign(t, m, `{"sub":"alice"}`)
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding.EncodeToString
	hdr := func(h string) string { return enc([]byte(h)) }
	strangerTok, _ := sign(t, stranger, `{"sub":"alice"}`)
	sp := strings.Split(strangerTok, ".")
	jwtTyp, _, _ := m.Sign([]byte(`{}`), "JWT")

	cases := map[string]string{
		"empty":             "",
		"two parts":         parts[0] + "." + parts[1],
		"four parts":        good + ".x",
		"payload changed":   parts[0] + "." + enc([]byte(`{"sub":"mallory"}`)) + "." + parts[2],
		"signature cut":     parts[0] + "." + parts[1] + "." + parts[2][:40],
		"alg none":          hdr(`{"alg":"none","kid":"`+kid+`","typ":"at+jwt"}`) + "." + parts[1] + ".",
		"alg HS256":         hdr(`{"alg":"HS256","kid":"`+kid+`","typ":"at+jwt"}`) + "." + parts[1] + "." + parts[2],
		"alg swapped":       hdr(`{"alg":"EdDSA","kid":"`+kid+`","typ":"at+jwt"}`) + "." + parts[1] + "." + parts[2],
		"unknown kid":       sp[0] + "." + sp[1] + "." + sp[2],
		"other key our kid": hdr(`{"alg":"ES256","kid":"`+kid+`","typ":"at+jwt"}`) + "." + sp[1] + "." + sp[2],
		"crit":              hdr(`{"alg":"ES256","kid":"`+kid+`","typ":"at+jwt","crit":["x"]}`) + "." + parts[1] + "." + parts[2],
		"wrong typ":         jwtTyp,
		"too large":         parts[0] + "." + strings.Repeat("A", keys.MaxTokenSize) + "." + parts[2],
		"padding":           parts[0] + "." + parts[1] + "." + parts[2] + "=",
	}
	for name, tok := range cases {
		if _, _, err := m.Verify(tok); !errors.Is(err, keys.ErrInvalidToken) {
			t.Errorf("%s: Verify = %v, want ErrInvalidToken", name, err)
		}
	}
	if _, _, err := m.Verify(jwtTyp, keys.WithType("JWT")); err != nil {
		t.Errorf("WithType(JWT): %v", err)
	}
	if _, _, err := m.Verify(good, keys.WithType("application/AT+JWT")); err != nil {
		t.Errorf("typ comparison should ignore case and application/: %v", err)
	}
	if _, _, err := m.Verify(jwtTyp, keys.WithType("")); err != nil {
		t.Errorf("WithType(\"\"): %v", err)
	}
}

func TestNewManagerChecksOptions(t *testing.T) {
	store := openStore(t, filepath.Join(t.TempDir(), "mandate.db"))
	bad := []keys.Options{
		{PublishAhead: time.Second, ReloadEvery: 10 * time.Second},
		{RotateEvery: time.Minute, PublishAhead: time.Hour},
		{TokenLifetimeMax: -time.Second},
	}
	for _, o := range bad {
		if _, err := keys.NewManager(store, newSealer(t, secretA), o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
	if _, err := keys.NewManager(nil, newSealer(t, secretA), keys.Options{}); err == nil {
		t.Error("accepted a nil store")
	}
	m, err := keys.NewManager(store, newSealer(t, secretA), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Sign([]byte(`{}`), keys.TypAccessToken); !errors.Is(err, keys.ErrNoKey) {
		t.Fatalf("Sign before Ensure: %v", err)
	}
}

// Sign, Verify and JWKS run while reloads swap the view (meaningful under -race).
func TestSignDuringReloads(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	// Keys rotate on every step, but no key is removed within the test's 4 hours of clock: a
	// token signed before a step must still verify after it.
	opts := keys.Options{RotateEvery: 30 * time.Minute, PublishAhead: 15 * time.Minute, TokenLifetimeMax: 100 * time.Hour}
	m := newManager(t, openStore(t, filepath.Join(t.TempDir(), "mandate.db")), secretA, c, opts)
	ensure(t, m)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, _, err := m.Sign([]byte(`{"x":1}`), keys.TypAccessToken)
				if err != nil {
					t.Error(err)
					return
				}
				if _, _, err := m.Verify(tok); err != nil {
					t.Error(err)
					return
				}
				m.JWKS()
			}
		})
	}
	stopAll := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopAll() // also on t.Fatal, so no worker outlives the test
	for range 5 {
		c.Add(opts.RotateEvery)
		if err := m.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		c.Add(opts.PublishAhead)
		if err := m.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	stopAll()
	if list, _ := m.List(ctx); len(list) != 6 {
		t.Fatalf("want 6 keys after 5 rotations, have %d", len(list))
	}
}
