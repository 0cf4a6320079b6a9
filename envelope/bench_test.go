package envelope

import (
	"context"
	"testing"
	"time"
)

// BenchmarkVerify is the per-exchange cost of checking a realistic ES256
// envelope against an inline key set (the hot path of POST /oauth2/token).
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []struct{ name, key, kid string }{
		{AlgES256, AlgES256, "es256"},
		{AlgEdDSA, AlgEdDSA, "eddsa"},
	} {
		b.Run(alg.name, func(b *testing.B) {
			ks := testKeySet(b)
			s, err := NewSigner(testKey(b, alg.key), alg.kid)
			if err != nil {
				b.Fatal(err)
			}
			s.Now = func() time.Time { return testNow }
			c := validClaims()
			c.Authorization.Scopes = []string{"orders:read", "balance:read", "orders:write"}
			c.Delegation.Allowed = []string{"orders_api", "billing_api"}
			c.Act = &Act{Sub: "planner_agent", ClientID: "orchestrator"}
			tok, err := s.Sign(c)
			if err != nil {
				b.Fatal(err)
			}
			v := testVerifier()
			client := Client{ID: testClient, Keys: ks}
			ctx := context.Background()
			b.SetBytes(int64(len(tok)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, tok, client); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSign is the MCP server's cost to build and sign one envelope.
func BenchmarkSign(b *testing.B) {
	s, err := NewSigner(testKey(b, AlgES256), "es256")
	if err != nil {
		b.Fatal(err)
	}
	c := validClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewStaticKeySet is the cost of parsing a client's inline JWKS
// (one ES256 key), which callers should pay once per client registration
// rather than once per exchange.
func BenchmarkNewStaticKeySet(b *testing.B) {
	data := jwksJSON(b, publicJWK(b, testKey(b, AlgES256), "es256", AlgES256))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewStaticKeySet(data); err != nil {
			b.Fatal(err)
		}
	}
}
