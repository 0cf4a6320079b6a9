package envelope

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// BenchmarkES256Alternatives measures the signature step alone, to show
// where Verify's time goes and why it calls crypto/ecdsa itself: every
// option ends in the same crypto/ecdsa P-256 code, and the jwx paths add
// parsing and key conversion on top.
func BenchmarkES256Alternatives(b *testing.B) {
	key := testKey(b, AlgES256)
	s, err := NewSigner(key, "es256")
	if err != nil {
		b.Fatal(err)
	}
	s.Now = func() time.Time { return testNow }
	tok, err := s.Sign(validClaims())
	if err != nil {
		b.Fatal(err)
	}
	pub := key.Public().(*ecdsa.PublicKey)
	jk := publicJWK(b, key, "es256", AlgES256)
	dot := strings.LastIndexByte(tok, '.')
	sig, _ := base64.RawURLEncoding.DecodeString(tok[dot+1:])

	b.Run("crypto/ecdsa only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := sha256.Sum256([]byte(tok[:dot]))
			if !ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
				b.Fatal("verify")
			}
		}
	})
	b.Run("jws.VerifyCompactFast raw key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jws.VerifyCompactFast(pub, []byte(tok), jwa.ES256()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jws.Verify WithKey jwk", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jws.Verify([]byte(tok), jws.WithKey(jwa.ES256(), jk)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jws.Verify WithKey raw key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jws.Verify([]byte(tok), jws.WithKey(jwa.ES256(), pub)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("export jwk per call", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var raw any
			if err := jwk.Export(jk, &raw); err != nil {
				b.Fatal(err)
			}
		}
	})
}
