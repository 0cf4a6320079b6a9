package envelope

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

func TestNewStaticKeySet(t *testing.T) {
	es256 := testKey(t, AlgES256)
	priv, err := jwk.Import(es256)
	if err != nil {
		t.Fatal(err)
	}
	_ = priv.Set(jwk.KeyIDKey, "priv")
	oct, err := jwk.Import([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	_ = oct.Set(jwk.KeyIDKey, "oct")
	enc := publicJWK(t, es256, "enc", "")
	_ = enc.Set(jwk.KeyUsageKey, "enc")
	hsAlg := publicJWK(t, es256, "hs", "")
	_ = hsAlg.Set(jwk.AlgorithmKey, "HS256")
	wrongAlg := publicJWK(t, es256, "wrong", AlgES384)
	noKid, err := jwk.Import(es256.Public())
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		json []byte
		ok   bool
	}{
		{"valid", jwksJSON(t, publicJWK(t, es256, "a", AlgES256), publicJWK(t, testKey(t, AlgEdDSA), "b", "")), true},
		{"empty set", []byte(`{"keys":[]}`), true},
		{"private key", jwksJSON(t, priv), false},
		{"symmetric key", jwksJSON(t, oct), false},
		{"missing kid", jwksJSON(t, noKid), false},
		{"duplicate kid", jwksJSON(t, publicJWK(t, es256, "a", ""), publicJWK(t, testKey(t, AlgES384), "a", "")), false},
		{"use enc", jwksJSON(t, enc), false},
		{"alg HS256", jwksJSON(t, hsAlg), false},
		{"alg not fitting key", jwksJSON(t, wrongAlg), false},
		{"RSA 1024", []byte(`{"keys":[{"kty":"RSA","kid":"r","e":"AQAB","n":"` +
			base64.RawURLEncoding.EncodeToString(testKey(t, "RSA1024").Public().(*rsa.PublicKey).N.Bytes()) + `"}]}`), false},
		{"single key, not a set", []byte(mustJSON(t, publicJWK(t, es256, "a", ""))), false},
		{"not JSON", []byte("keys"), false},
		{"keys not an array", []byte(`{"keys":{}}`), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := NewStaticKeySet(tc.json)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && tc.name == "valid" {
				if _, err := ks.Key(context.Background(), "a"); err != nil {
					t.Error(err)
				}
				if _, err := ks.Key(context.Background(), "zz"); !errors.Is(err, ErrUnknownKID) {
					t.Errorf("unknown kid: %v", err)
				}
			}
		})
	}
}

func TestRemoteURLRules(t *testing.T) {
	cases := []struct {
		uri      string
		loopback bool
		ok       bool
	}{
		{"https://keys.example.com/jwks.json", false, true},
		{"https://127.0.0.1/jwks", false, true},
		{"http://keys.example.com/jwks.json", true, false},
		{"http://127.0.0.1:8080/jwks", false, false},
		{"http://127.0.0.1:8080/jwks", true, true},
		{"http://127.9.9.9/jwks", true, true},
		{"http://[::1]:8080/jwks", true, true},
		{"http://localhost:8080/jwks", true, true},
		{"http://LOCALHOST/jwks", true, true},
		{"http://127.0.0.1.evil.example/jwks", true, false},
		{"http://10.0.0.1/jwks", true, false},
		{"http://[::ffff:127.0.0.1]/jwks", true, true},
		{"ftp://keys.example.com/jwks", true, false},
		{"file:///etc/passwd", true, false},
		{"/jwks.json", true, false},
		{"https://user:pw@keys.example.com/jwks", false, false},
		{"://bad", false, false},
	}
	for _, tc := range cases {
		_, err := NewRemoteKeySet(tc.uri, RemoteOptions{AllowLoopback: tc.loopback})
		if (err == nil) != tc.ok {
			t.Errorf("%s (loopback %v): err = %v, want ok=%v", tc.uri, tc.loopback, err, tc.ok)
		}
	}
}

func TestCacheTTL(t *testing.T) {
	now := testNow
	cases := []struct {
		name string
		h    http.Header
		want time.Duration
	}{
		{"none", http.Header{}, remoteDefaultTTL},
		{"max-age", http.Header{"Cache-Control": {"public, max-age=600"}}, 10 * time.Minute},
		{"max-age below floor", http.Header{"Cache-Control": {"max-age=5"}}, time.Minute},
		{"max-age above ceiling", http.Header{"Cache-Control": {"max-age=9999999"}}, 24 * time.Hour},
		{"huge max-age", http.Header{"Cache-Control": {"max-age=99999999999999999999"}}, remoteDefaultTTL},
		{"no-store", http.Header{"Cache-Control": {"no-store"}}, time.Minute},
		{"no-cache wins over max-age", http.Header{"Cache-Control": {"max-age=600, no-cache"}}, time.Minute},
		{"expires", http.Header{"Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 2 * time.Hour},
		{"max-age beats expires", http.Header{"Cache-Control": {"max-age=120"}, "Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 2 * time.Minute},
		{"expires in the past", http.Header{"Expires": {now.Add(-time.Hour).Format(http.TimeFormat)}}, time.Minute},
		{"invalid expires", http.Header{"Expires": {"0"}}, time.Minute},
	}
	for _, tc := range cases {
		if got := cacheTTL(tc.h, now); got != tc.want {
			t.Errorf("%s: ttl = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// jwksServer serves a JWKS that tests can change, counting requests.
type jwksServer struct {
	mu       sync.Mutex
	body     []byte
	status   int
	header   http.Header
	delay    chan struct{} // when set, requests block until it is closed
	requests atomic.Int64
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.mu.Lock()
	body, status, header, delay := s.body, s.status, s.header, s.delay
	s.mu.Unlock()
	if delay != nil {
		select {
		case <-delay:
		case <-r.Context().Done():
			return
		}
	}
	for k, v := range header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	if status != 0 {
		w.WriteHeader(status)
	}
	_, _ = w.Write(body)
}

func (s *jwksServer) set(f func(s *jwksServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newRemote(t *testing.T, srv *jwksServer, opts RemoteOptions) (*RemoteKeySet, *fakeClock) {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	opts.AllowLoopback = true
	ks, err := NewRemoteKeySet(hs.URL+"/jwks.json", opts)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: testNow}
	ks.now = clock.Now
	return ks, clock
}

func TestRemoteKeySetCaching(t *testing.T) {
	es256, ed := testKey(t, AlgES256), testKey(t, AlgEdDSA)
	srv := &jwksServer{
		body:   jwksJSON(t, publicJWK(t, es256, "k1", AlgES256)),
		header: http.Header{"Cache-Control": {"max-age=300"}},
	}
	ks, clock := newRemote(t, srv, RemoteOptions{})
	ctx := context.Background()
	mustKey := func(kid string) {
		t.Helper()
		if _, err := ks.Key(ctx, kid); err != nil {
			t.Fatalf("kid %s: %v", kid, err)
		}
	}
	wantRequests := func(n int64) {
		t.Helper()
		if got := srv.requests.Load(); got != n {
			t.Fatalf("requests = %d, want %d", got, n)
		}
	}

	mustKey("k1")
	mustKey("k1")
	wantRequests(1)

	// An unknown kid right after a fetch does not fetch again, however
	// many times it is asked for.
	for range 20 {
		if _, err := ks.Key(ctx, "k2"); !errors.Is(err, ErrUnknownKID) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	wantRequests(1)

	// The client rotates in k2; after MinRefreshInterval one lookup of the
	// unknown kid fetches and finds it.
	srv.set(func(s *jwksServer) {
		s.body = jwksJSON(t, publicJWK(t, es256, "k1", AlgES256), publicJWK(t, ed, "k2", ""))
	})
	clock.Advance(61 * time.Second)
	mustKey("k2")
	wantRequests(2)
	for range 5 {
		_, _ = ks.Key(ctx, "k3")
	}
	wantRequests(2)

	// Still fresh at 299 s after the last fetch (max-age=300): no request.
	clock.Advance(299 * time.Second)
	mustKey("k1")
	wantRequests(2)
	// Past max-age: refetched.
	clock.Advance(2 * time.Second)
	mustKey("k1")
	wantRequests(3)
}

func TestRemoteKeySetStaleOnFailure(t *testing.T) {
	srv := &jwksServer{body: jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", ""))}
	ks, clock := newRemote(t, srv, RemoteOptions{})
	ctx := context.Background()
	if _, err := ks.Key(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	srv.set(func(s *jwksServer) { s.status = http.StatusInternalServerError; s.body = []byte("down") })
	clock.Advance(remoteDefaultTTL + time.Second)
	if _, err := ks.Key(ctx, "k1"); err != nil {
		t.Fatalf("stale key should be served while the key server fails: %v", err)
	}
	if srv.requests.Load() != 2 {
		t.Fatalf("requests = %d, want 2", srv.requests.Load())
	}
	// An unknown kid during the outage is "unavailable", not "unknown".
	clock.Advance(time.Minute)
	if _, err := ks.Key(ctx, "k9"); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err = %v, want ErrKeysUnavailable", err)
	}
	// Far past expiry the stale set is no longer trusted.
	clock.Advance(remoteMaxStale)
	if _, err := ks.Key(ctx, "k1"); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err = %v, want ErrKeysUnavailable", err)
	}
}

func TestRemoteKeySetFailures(t *testing.T) {
	good := jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", ""))
	priv, _ := jwk.Import(testKey(t, AlgES256))
	_ = priv.Set(jwk.KeyIDKey, "k1")
	cases := []struct {
		name string
		srv  *jwksServer
		opts RemoteOptions
	}{
		{"status 404", &jwksServer{status: http.StatusNotFound, body: good}, RemoteOptions{}},
		{"body too large", &jwksServer{body: append(good, []byte(strings.Repeat(" ", 2048))...)}, RemoteOptions{MaxBytes: 1024}},
		{"not a JWKS", &jwksServer{body: []byte(`<html>`)}, RemoteOptions{}},
		{"private key published", &jwksServer{body: jwksJSON(t, priv)}, RemoteOptions{}},
		{"timeout", &jwksServer{body: good, delay: make(chan struct{})}, RemoteOptions{Timeout: 100 * time.Millisecond}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ks, _ := newRemote(t, tc.srv, tc.opts)
			if tc.srv.delay != nil {
				t.Cleanup(func() { close(tc.srv.delay) })
			}
			_, err := ks.Key(context.Background(), "k1")
			if !errors.Is(err, ErrKeysUnavailable) {
				t.Fatalf("err = %v, want ErrKeysUnavailable", err)
			}
			// Through the verifier this is keys_unavailable.
			tok := rawToken(t, testKey(t, AlgES256), AlgES256, baseHeader(AlgES256, "k1"), baseClaims())
			_, err = testVerifier().Verify(context.Background(), tok, Client{ID: testClient, Keys: ks})
			if ReasonOf(err) != ReasonKeysUnavailable {
				t.Fatalf("reason = %q (%v)", ReasonOf(err), err)
			}
		})
	}
	t.Run("body at the limit", func(t *testing.T) {
		ks, _ := newRemote(t, &jwksServer{body: good}, RemoteOptions{MaxBytes: int64(len(good))})
		if _, err := ks.Key(context.Background(), "k1"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRemoteKeySetRedirectToHTTP(t *testing.T) {
	hs := httptest.NewServer(http.RedirectHandler("http://keys.example.com/jwks.json", http.StatusFound))
	t.Cleanup(hs.Close)
	ks, err := NewRemoteKeySet(hs.URL, RemoteOptions{AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Key(context.Background(), "k1"); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestRemoteKeySetHTTPS(t *testing.T) {
	srv := &jwksServer{body: jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", ""))}
	hs := httptest.NewTLSServer(srv)
	t.Cleanup(hs.Close)
	ks, err := NewRemoteKeySet(hs.URL+"/jwks.json", RemoteOptions{HTTPClient: hs.Client(), AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	tok := rawToken(t, testKey(t, AlgES256), AlgES256, baseHeader(AlgES256, "k1"), baseClaims())
	if _, err := testVerifier().Verify(context.Background(), tok, Client{ID: testClient, Keys: ks}); err != nil {
		t.Fatal(err)
	}
}

// Many concurrent lookups on a cold cache share one fetch.
func TestRemoteKeySetSingleFlight(t *testing.T) {
	srv := &jwksServer{body: jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", "")), delay: make(chan struct{})}
	ks, _ := newRemote(t, srv, RemoteOptions{})
	const n = 32
	errs := make(chan error, n)
	var started sync.WaitGroup
	started.Add(n)
	for range n {
		go func() {
			started.Done()
			_, err := ks.Key(context.Background(), "k1")
			errs <- err
		}()
	}
	started.Wait()
	// Let the goroutines reach the wait; the fetch is blocked until then.
	deadline := time.Now().Add(5 * time.Second)
	for srv.requests.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(srv.delay)
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := srv.requests.Load(); got != 1 {
		t.Fatalf("requests = %d, want 1", got)
	}
}

// A caller that gives up does not cancel the shared fetch for others.
func TestRemoteKeySetCallerCancel(t *testing.T) {
	srv := &jwksServer{body: jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", "")), delay: make(chan struct{})}
	ks, _ := newRemote(t, srv, RemoteOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := ks.Key(ctx, "k1"); done <- err }()
	for srv.requests.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := ks.Key(context.Background(), "k1"); second <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(srv.delay)
	if err := <-second; err != nil {
		t.Fatalf("waiting caller: %v", err)
	}
	if got := srv.requests.Load(); got != 1 {
		t.Fatalf("requests = %d, want 1", got)
	}
}

func ExampleNewRemoteKeySet() {
	ks, err := NewRemoteKeySet("https://mcp.example.com/.well-known/jwks.json", RemoteOptions{})
	fmt.Println(ks != nil, err)
	// Output: true <nil>
}
