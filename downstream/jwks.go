package downstream

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// maxJWKSBytes bounds a fetched key set: a JWKS is a few keys, never megabytes.
const maxJWKSBytes = 256 << 10

// ErrUnknownKey means the key set (even after a permitted refresh) has no usable key with
// the token's kid.
var ErrUnknownKey = errors.New("no key with this kid in the issuer's JWKS")

// ErrUnavailable means the key set or the introspection endpoint could not be reached;
// the token was neither accepted nor found bad. Middleware answers 503, not 401.
var ErrUnavailable = errors.New("token verification temporarily unavailable")

// JWKSOptions tunes a JWKS cache. Zero values pick the defaults.
type JWKSOptions struct {
	// HTTPClient fetches the set; default a client with a 10 s timeout.
	HTTPClient *http.Client
	// MinRefreshInterval is the least time between two fetches caused by unknown kids, so
	// a stream of tokens with made-up kids cannot turn into a stream of requests to the
	// issuer. Default 30 s.
	MinRefreshInterval time.Duration
	// MaxAge refetches a set this old on the next lookup, so removed (compromised,
	// retired) keys stop verifying. Default 1 h.
	MaxAge time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// JWKS is a cached remote JWK Set: keys are looked up by kid, the set is fetched lazily,
// refetched when older than MaxAge, and refetched at most once per MinRefreshInterval when
// a token names a kid the set does not hold (the issuer rotated its key).
type JWKS struct {
	url  string
	opts JWKSOptions

	mu        sync.Mutex
	keys      map[string]publicKey
	fetchedAt time.Time // last successful fetch
	triedAt   time.Time // last attempt, successful or not
	lastErr   error     // the last attempt's error, nil when it succeeded
	fetches   int       // number of attempts, for tests and metrics
	inflight  chan struct{}
}

// publicKey is a verification key with the one algorithm it may be used with, when the
// JWK names one.
type publicKey struct {
	key crypto.PublicKey
	alg string
}

// NewJWKS returns a cache for the JWK Set at url. Nothing is fetched until the first
// lookup.
func NewJWKS(url string, opts JWKSOptions) *JWKS {
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.MinRefreshInterval <= 0 {
		opts.MinRefreshInterval = 30 * time.Second
	}
	if opts.MaxAge <= 0 {
		opts.MaxAge = time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &JWKS{url: url, opts: opts}
}

// Fetches reports how many times the set was requested from the issuer.
func (k *JWKS) Fetches() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.fetches
}

// key returns the key named kid. It fetches when there is no set yet, when the set is
// older than MaxAge, or when kid is unknown and the last attempt is older than
// MinRefreshInterval. Concurrent callers share one fetch.
func (k *JWKS) key(ctx context.Context, kid string) (publicKey, error) {
	k.mu.Lock()
	now := k.opts.Now()
	pk, found := k.keys[kid]
	stale := k.keys == nil || now.Sub(k.fetchedAt) > k.opts.MaxAge
	if found && !stale {
		k.mu.Unlock()
		return pk, nil
	}
	if wait := k.inflight; wait != nil {
		k.mu.Unlock()
		return k.await(ctx, kid, wait)
	}
	// Without any keys, retry a failed first fetch after a second rather than the whole
	// refresh interval; either way the issuer sees at most one request per interval.
	interval := k.opts.MinRefreshInterval
	if k.keys == nil {
		interval = min(interval, time.Second)
	}
	if !k.triedAt.IsZero() && now.Sub(k.triedAt) < interval {
		lastErr := k.lastErr
		k.mu.Unlock()
		if found { // stale, but a refetch is not allowed yet: keep using it
			return pk, nil
		}
		if lastErr != nil {
			return publicKey{}, fmt.Errorf("%w: %v", ErrUnavailable, lastErr)
		}
		return publicKey{}, ErrUnknownKey
	}
	done := make(chan struct{})
	k.inflight = done
	k.triedAt = now
	k.fetches++
	k.mu.Unlock()
	go k.refresh(ctx, done)
	return k.await(ctx, kid, done)
}

// fetchTimeout bounds one fetch, whatever the HTTP client's own timeout.
const fetchTimeout = 10 * time.Second

// refresh fetches the set detached from the caller's cancellation: other callers wait for
// it too, and a caller that hangs up must not leave a failed attempt behind that blocks
// refreshes (and so the issuer's new kid) for a whole MinRefreshInterval.
func (k *JWKS) refresh(ctx context.Context, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	keys, err := k.fetch(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastErr = err
	if err == nil {
		k.keys = keys
		k.fetchedAt = k.opts.Now()
	}
	k.inflight = nil
	close(done)
}

// await waits for the fetch signalled by done, then looks kid up without fetching again.
// When the fetch failed, a key already held still verifies (the issuer is down).
func (k *JWKS) await(ctx context.Context, kid string, done <-chan struct{}) (publicKey, error) {
	select {
	case <-done:
	case <-ctx.Done():
		return publicKey{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
	k.mu.Lock()
	pk, found := k.keys[kid]
	lastErr := k.lastErr
	k.mu.Unlock()
	if found {
		return pk, nil
	}
	if lastErr != nil {
		return publicKey{}, fmt.Errorf("%w: %v", ErrUnavailable, lastErr)
	}
	return publicKey{}, ErrUnknownKey
}

func (k *JWKS) fetch(ctx context.Context) (map[string]publicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	if len(body) > maxJWKSBytes {
		return nil, errors.New("fetch JWKS: document too large")
	}
	return parseJWKS(body)
}

// parseJWKS keeps the public signature keys that have a kid. Keys for encryption, private
// keys and symmetric keys are skipped: a verifier must never accept an HMAC "key" an
// issuer happened to publish.
func parseJWKS(body []byte) (map[string]publicKey, error) {
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parse JWKS: %w", err)
	}
	out := make(map[string]publicKey, set.Len())
	for i := 0; i < set.Len(); i++ {
		jk, _ := set.Key(i)
		kid, ok := jk.KeyID()
		if !ok || kid == "" {
			continue
		}
		if use, ok := jk.KeyUsage(); ok && use != "" && use != "sig" {
			continue
		}
		var raw any
		if err := jwk.Export(jk, &raw); err != nil {
			continue
		}
		var pub crypto.PublicKey
		switch r := raw.(type) {
		case *ecdsa.PublicKey:
			pub = r
		case ed25519.PublicKey:
			pub = r
		case *rsa.PublicKey:
			if r.N.BitLen() < 2048 {
				continue
			}
			pub = r
		default: // private keys, symmetric keys, unknown types
			continue
		}
		alg := ""
		if a, ok := jk.Algorithm(); ok {
			alg = a.String()
		}
		out[kid] = publicKey{key: pub, alg: alg}
	}
	return out, nil
}

// fitsKey reports whether alg is the algorithm of key's type (and curve).
func fitsKey(alg string, key crypto.PublicKey) bool {
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		return (alg == "ES256" && k.Curve == elliptic.P256()) || (alg == "ES384" && k.Curve == elliptic.P384())
	case ed25519.PublicKey:
		return alg == "EdDSA" || alg == "Ed25519"
	case *rsa.PublicKey:
		return alg == "RS256" || alg == "PS256"
	}
	return false
}
