package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// TypAccessToken is the JOSE typ of the access tokens Mandate issues (RFC 9068).
const TypAccessToken = "at+jwt"

// MaxTokenSize bounds what Verify reads (SPEC §10: tokens over 8 KiB are rejected).
const MaxTokenSize = 8 << 10

var (
	b64 = base64.RawURLEncoding
	// b64Strict rejects non-zero padding bits, so a token has exactly one valid encoding.
	b64Strict = base64.RawURLEncoding.Strict()
)

// signer is one key ready to sign: parsed once per key load, never per request.
type signer struct {
	kid         string
	alg         string
	activatesAt time.Time
	sealed      []byte // what it was opened from, to reuse the parse across reloads
	ec          *ecdsa.PrivateKey
	ed          ed25519.PrivateKey
	hdrAT       string // base64url protected header for typ at+jwt, the hot path's only typ
	err         error  // set when the private key could not be opened here
}

func newSigner(kid, alg string, activatesAt time.Time, sealed []byte, priv crypto.Signer) *signer {
	s := &signer{kid: kid, alg: alg, activatesAt: activatesAt, sealed: sealed}
	switch v := priv.(type) {
	case *ecdsa.PrivateKey:
		s.ec = v
	case ed25519.PrivateKey:
		s.ed = v
	}
	s.hdrAT = encodeHeader(alg, kid, TypAccessToken)
	return s
}

func encodeHeader(alg, kid, typ string) string {
	h, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ,omitempty"`
	}{alg, kid, typ}) // three strings always marshal
	return b64.EncodeToString(h)
}

// sign returns the compact JWS header.payload.signature over payload.
//
// It does not go through jwx: BenchmarkSignJWX measured jws.Sign at several times the
// allocations of this path for the same output, and the token endpoint signs on every request.
func (s *signer) sign(payload []byte, typ string) (string, error) {
	hdr := s.hdrAT
	if typ != TypAccessToken {
		hdr = encodeHeader(s.alg, s.kid, typ)
	}
	n := len(hdr) + 1 + b64.EncodedLen(len(payload))
	buf := make([]byte, 0, n+1+b64.EncodedLen(64))
	buf = append(buf, hdr...)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, payload)

	var sig [64]byte
	switch {
	case s.ec != nil:
		digest := sha256.Sum256(buf)
		// RFC 6979 deterministic ECDSA (a nil random source): the nonce is derived from the key
		// and the message, so it needs no RNG and cannot repeat for different tokens (each has
		// its own jti and iat). BenchmarkSign measured it ~15% faster than Go's hedged default,
		// which spends the difference on an HMAC-SHA512 DRBG.
		der, err := s.ec.Sign(nil, digest[:], crypto.SHA256)
		if err != nil {
			return "", fmt.Errorf("keys: sign: %w", err)
		}
		// JWS wants the fixed-width R||S form (RFC 7518 §3.4), not ASN.1.
		if !derToRS(der, sig[:]) {
			return "", errors.New("keys: sign: malformed ECDSA signature")
		}
	case s.ed != nil:
		copy(sig[:], ed25519.Sign(s.ed, buf))
	default:
		return "", fmt.Errorf("keys: key %s has no usable private key", s.kid)
	}
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, sig[:])
	// buf is never touched again, so handing its bytes to a string is safe and saves a copy of
	// the whole token (the same trick strings.Builder uses).
	return unsafe.String(unsafe.SliceData(buf), len(buf)), nil
}

// derToRS converts an ASN.1 ECDSA-Sig-Value for P-256 into 32-byte big-endian r || s.
func derToRS(der []byte, out []byte) bool {
	var inner cryptobyte.String
	in := cryptobyte.String(der)
	var r, s []byte
	if !in.ReadASN1(&inner, asn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(&r) || !inner.ReadASN1Integer(&s) || !inner.Empty() {
		return false
	}
	return putFixed(out[:32], r) && putFixed(out[32:], s)
}

// putFixed writes the big-endian integer b right-aligned into dst.
func putFixed(dst, b []byte) bool {
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	if len(b) > len(dst) {
		return false
	}
	copy(dst[len(dst)-len(b):], b)
	return true
}

// ErrInvalidToken is wrapped by every Verify failure; the wrapped text says why, for logs only.
var ErrInvalidToken = errors.New("keys: invalid token")

// errUnknownKID is the Verify failure VerifyFresh reloads for.
var errUnknownKID = fmt.Errorf("%w: unknown kid", ErrInvalidToken)

// VerifyOption adjusts Verify.
type VerifyOption func(*verifyConfig)

type verifyConfig struct{ typ string }

// WithType requires the header typ to be typ (compared as RFC 7515 §4.1.9 says: case-insensitive,
// "application/" optional). WithType("") accepts any typ. The default is TypAccessToken.
func WithType(typ string) VerifyOption { return func(c *verifyConfig) { c.typ = typ } }

type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
}

// verify checks token against the published keys in ks at now and returns its payload. It
// checks the signature and header only: exp, aud and the other claims are the caller's.
func (ks *keySet) verify(token string, now time.Time, opts []VerifyOption) ([]byte, string, error) {
	cfg := verifyConfig{typ: TypAccessToken}
	for _, o := range opts {
		o(&cfg)
	}
	if len(token) > MaxTokenSize {
		return nil, "", fmt.Errorf("%w: larger than %d bytes", ErrInvalidToken, MaxTokenSize)
	}
	h64, rest, ok := strings.Cut(token, ".")
	if !ok {
		return nil, "", fmt.Errorf("%w: not a compact JWS", ErrInvalidToken)
	}
	p64, s64, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(s64, ".") {
		return nil, "", fmt.Errorf("%w: not a compact JWS", ErrInvalidToken)
	}
	hb, err := b64Strict.DecodeString(h64)
	if err != nil {
		return nil, "", fmt.Errorf("%w: header encoding", ErrInvalidToken)
	}
	var h header
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, "", fmt.Errorf("%w: header JSON", ErrInvalidToken)
	}
	// We never emit crit, so any critical extension is one we do not understand (RFC 7515 §4.1.11).
	if h.Crit != nil {
		return nil, "", fmt.Errorf("%w: crit header not supported", ErrInvalidToken)
	}
	if h.Alg != ES256 && h.Alg != EdDSA {
		return nil, "", fmt.Errorf("%w: alg %q not allowed", ErrInvalidToken, h.Alg)
	}
	if cfg.typ != "" && !typEqual(h.Typ, cfg.typ) {
		return nil, "", fmt.Errorf("%w: typ %q, want %q", ErrInvalidToken, h.Typ, cfg.typ)
	}
	// The key comes only from our published set, by kid; never from the token (jwk, jku, x5c...).
	pk := ks.public[h.Kid]
	if pk == nil {
		return nil, "", errUnknownKID
	}
	if !pk.removeAt.IsZero() && !now.Before(pk.removeAt) {
		return nil, "", fmt.Errorf("%w: kid no longer published", ErrInvalidToken)
	}
	if pk.alg != h.Alg {
		return nil, "", fmt.Errorf("%w: alg %s does not match key %s", ErrInvalidToken, h.Alg, pk.kid)
	}
	sig, err := b64Strict.DecodeString(s64)
	if err != nil || len(sig) != 64 {
		return nil, "", fmt.Errorf("%w: signature encoding", ErrInvalidToken)
	}
	input := token[:len(h64)+1+len(p64)]
	switch {
	case pk.ec != nil:
		digest := sha256.Sum256([]byte(input))
		r := new(big.Int).SetBytes(sig[:32])
		s := new(big.Int).SetBytes(sig[32:])
		if !ecdsa.Verify(pk.ec, digest[:], r, s) {
			return nil, "", fmt.Errorf("%w: bad signature", ErrInvalidToken)
		}
	case pk.ed != nil:
		if !ed25519.Verify(pk.ed, []byte(input), sig) {
			return nil, "", fmt.Errorf("%w: bad signature", ErrInvalidToken)
		}
	default:
		return nil, "", fmt.Errorf("%w: key %s unusable", ErrInvalidToken, pk.kid)
	}
	payload, err := b64Strict.DecodeString(p64)
	if err != nil {
		return nil, "", fmt.Errorf("%w: payload encoding", ErrInvalidToken)
	}
	return payload, pk.kid, nil
}

func typEqual(got, want string) bool {
	const app = "application/"
	trim := func(s string) string {
		if len(s) > len(app) && strings.EqualFold(s[:len(app)], app) {
			return s[len(app):]
		}
		return s
	}
	return strings.EqualFold(trim(got), trim(want))
}
