package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

const (
	testIssuer = "https://mandate.example.com"
	testClient = "webapp-prod"
)

// testNow is a fixed clock so time edges are exact.
var testNow = time.Unix(1_800_000_000, 0).UTC()

var (
	keysOnce sync.Once
	keyCache map[string]crypto.Signer
)

// testKey returns a private key per algorithm family, generated once per
// test binary (RSA generation is slow).
func testKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	keysOnce.Do(func() {
		keyCache = map[string]crypto.Signer{}
		gen := func(name string, f func() (crypto.Signer, error)) {
			k, err := f()
			if err != nil {
				panic(err)
			}
			keyCache[name] = k
		}
		ec := func(c elliptic.Curve) func() (crypto.Signer, error) {
			return func() (crypto.Signer, error) { return ecdsa.GenerateKey(c, rand.Reader) }
		}
		gen(AlgES256, ec(elliptic.P256()))
		gen("ES256-attacker", ec(elliptic.P256()))
		gen(AlgES384, ec(elliptic.P384()))
		gen(AlgEdDSA, func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err })
		gen("RSA", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) })
		gen("RSA1024", func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 1024) })
	})
	k, ok := keyCache[name]
	if !ok {
		t.Fatalf("no test key %q", name)
	}
	return k
}

// publicJWK converts a key's public half to a JWK with kid and, when alg is
// not empty, alg.
func publicJWK(t testing.TB, k crypto.Signer, kid, alg string) jwk.Key {
	t.Helper()
	jk, err := jwk.Import(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := jk.Set(jwk.KeyIDKey, kid); err != nil {
		t.Fatal(err)
	}
	if alg != "" {
		if err := jk.Set(jwk.AlgorithmKey, alg); err != nil {
			t.Fatal(err)
		}
	}
	return jk
}

func jwksJSON(t testing.TB, keys ...jwk.Key) []byte {
	t.Helper()
	set := jwk.NewSet()
	for _, k := range keys {
		if err := set.AddKey(k); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// baseClaims is a realistic, valid envelope payload as a generic map, so
// tests can delete members or give them wrong types.
func baseClaims() map[string]any {
	return map[string]any{
		"iss": testClient,
		"aud": testIssuer,
		"iat": testNow.Unix(),
		"exp": testNow.Add(60 * time.Second).Unix(),
		"jti": "0f5d3c2b9a8e4f71b6c5d4e3f2a1b0c9",
		"actor": map[string]any{
			"type": "user", "sub": "user_123", "tenant": "acme",
		},
		"agent": map[string]any{
			"type": "mcp_agent", "id": "agent_456", "client_id": testClient,
		},
		"session": map[string]any{
			"id": "sess_789", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
		},
		"authorization": map[string]any{
			"scopes": []any{"orders:read", "balance:read"}, "confidence": "verified",
		},
		"delegation": map[string]any{
			"mode": "on_behalf_of", "allowed": []any{"orders_api", "billing_api"},
		},
	}
}

func baseHeader(alg, kid string) map[string]any {
	return map[string]any{"alg": alg, "typ": Type, "kid": kid}
}

// rawToken signs any header and payload with key under alg, bypassing the
// Signer's checks, to build envelopes Mandate must refuse.
func rawToken(t testing.TB, key crypto.Signer, alg string, hdr map[string]any, payload any) string {
	t.Helper()
	hb, err := json.Marshal(hdr)
	if err != nil {
		t.Fatal(err)
	}
	var pb []byte
	if b, ok := payload.([]byte); ok {
		pb = b
	} else if pb, err = json.Marshal(payload); err != nil {
		t.Fatal(err)
	}
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(pb)
	s := &Signer{key: key, alg: alg}
	sig, err := s.sign(input)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func sub(m map[string]any, key string) map[string]any { return m[key].(map[string]any) }
