package downstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// issuer is a test token issuer: P-256 keys served as a JWKS by a real HTTP server.
type issuer struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	keys map[string]*ecdsa.PrivateKey
	hits atomic.Int32
	down atomic.Bool
	url  string
	kid  string
}

func newIssuer(t *testing.T) *issuer {
	is := &issuer{t: t, keys: map[string]*ecdsa.PrivateKey{}}
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.hits.Add(1)
		if is.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		is.mu.Lock()
		defer is.mu.Unlock()
		var keys []map[string]string
		for kid, k := range is.keys {
			pub, _ := k.PublicKey.ECDH()
			b := pub.Bytes()
			keys = append(keys, map[string]string{"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
				"x": base64.RawURLEncoding.EncodeToString(b[1:33]), "y": base64.RawURLEncoding.EncodeToString(b[33:65])})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	t.Cleanup(is.srv.Close)
	is.url = is.srv.URL
	is.addKey("k1")
	return is
}

func (is *issuer) addKey(kid string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		is.t.Fatal(err)
	}
	is.mu.Lock()
	is.keys[kid] = k
	is.mu.Unlock()
	is.kid = kid
}

// mint signs claims with the current key under header h (alg ES256 and kid added when
// absent).
func (is *issuer) mint(h map[string]any, claims map[string]any) string {
	if h == nil {
		h = map[string]any{"typ": "at+jwt"}
	}
	if _, ok := h["alg"]; !ok {
		h["alg"] = "ES256"
	}
	if _, ok := h["kid"]; !ok {
		h["kid"] = is.kid
	}
	is.mu.Lock()
	key := is.keys[h["kid"].(string)]
	is.mu.Unlock()
	if key == nil {
		key = is.keys[is.kid]
	}
	hb, _ := json.Marshal(h)
	cb, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	d := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		is.t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

const testIssuer = "https://mandate.test"

func goodClaims(now time.Time) map[string]any {
	return map[string]any{
		"iss": testIssuer, "sub": "alice", "aud": "orders_api", "exp": now.Add(5 * time.Minute).Unix(),
		"iat": now.Unix(), "jti": "t1", "client_id": "webapp", "scope": "orders:read orders:write",
		"tenant": "acme", "delegation_mode": "on_behalf_of", "actor_type": "user", "actor_sub": "alice", "agent_id": "agent_1",
		"trace_id": "trace-1", "session_id": "sess-1", "grant_id": "grt_1",
		"act": map[string]any{"sub": "agent_1", "client_id": "webapp", "act": map[string]any{"sub": "planner"}},
	}
}

// clock is a controllable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
