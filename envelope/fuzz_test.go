package envelope

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzVerify feeds arbitrary strings to Verify. The seeds are envelopes
// signed with the package's test keys (key A) under kids the verifier
// knows, but the verifier's key set holds only fresh keys (key B) whose
// private halves are thrown away. No input can carry a valid signature by
// B, so any acceptance is a bug, and so is any panic.
func FuzzVerify(f *testing.F) {
	gen := func(g func() (crypto.Signer, error)) crypto.Signer {
		k, err := g()
		if err != nil {
			f.Fatal(err)
		}
		return k
	}
	b256 := gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) })
	b384 := gen(func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P384(), rand.Reader) })
	bed := gen(func() (crypto.Signer, error) { _, k, err := ed25519.GenerateKey(rand.Reader); return k, err })
	brsa := gen(func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) })
	ks, err := NewStaticKeySet(jwksJSON(f,
		publicJWK(f, b256, "es256", AlgES256),
		publicJWK(f, b384, "es384", ""),
		publicJWK(f, bed, "eddsa", ""),
		publicJWK(f, brsa, "rsa", ""),
	))
	if err != nil {
		f.Fatal(err)
	}

	seeds := []string{
		rawToken(f, testKey(f, AlgES256), AlgES256, baseHeader(AlgES256, "es256"), baseClaims()),
		rawToken(f, testKey(f, AlgES384), AlgES384, baseHeader(AlgES384, "es384"), baseClaims()),
		rawToken(f, testKey(f, AlgEdDSA), AlgEdDSA, baseHeader(AlgEdDSA, "eddsa"), baseClaims()),
		rawToken(f, testKey(f, "RSA"), AlgPS256, baseHeader(AlgPS256, "rsa"), baseClaims()),
		rawToken(f, testKey(f, "RSA"), AlgRS256, baseHeader(AlgRS256, "rsa"), baseClaims()),
	}
	h := baseHeader(AlgES256, "es256")
	h["jwk"] = json.RawMessage(mustJSON(f, publicJWK(f, testKey(f, AlgES256), "es256", "")))
	seeds = append(seeds,
		rawToken(f, testKey(f, AlgES256), AlgES256, h, baseClaims()),
		b64(`{"alg":"none","typ":"eie+jwt","kid":"es256"}`)+"."+b64(mustJSON(f, baseClaims()))+".",
		b64(`{"alg":"HS256","typ":"eie+jwt","kid":"rsa"}`)+"."+b64(mustJSON(f, baseClaims()))+".c2ln",
		"", ".", "..", "a.b.c", "!!!.e30.AAAA", strings.Repeat("A", MaxTokenBytes+1),
	)
	for _, s := range seeds {
		f.Add(s)
		// Mutated variants: flipped characters in each segment.
		for _, i := range []int{5, len(s) / 2, len(s) - 3} {
			if i > 0 && i < len(s) {
				b := []byte(s)
				b[i] ^= 1
				f.Add(string(b))
			}
		}
	}

	v := &Verifier{Issuer: testIssuer, Now: func() time.Time { return testNow }}
	client := Client{ID: testClient, Keys: ks, MaxLifetime: MaxLifetimeCeiling}
	f.Fuzz(func(t *testing.T, raw string) {
		claims, err := v.Verify(context.Background(), raw, client)
		if err == nil {
			t.Fatalf("accepted an envelope not signed by any registered key: %q -> %+v", raw, claims)
		}
		if ReasonOf(err) == "" {
			t.Fatalf("refusal without a reason: %v", err)
		}
		if claims != nil {
			t.Fatal("claims returned with an error")
		}
	})
}
