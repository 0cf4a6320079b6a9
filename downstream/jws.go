package downstream

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// MaxTokenBytes bounds a compact JWS before any decoding, so a huge header costs nothing.
const MaxTokenBytes = 8192

// VerifyOptions says what a compact JWS must look like to be verified.
type VerifyOptions struct {
	// Algorithms is the allow-list for the header alg. Never "none", never HS*: those are
	// refused whatever the list says.
	Algorithms []string
	// Type checks the header typ (nil accepts any typ, including none).
	Type func(typ string) bool
}

// header is the part of a JOSE header a verifier reads. Members that would point at a key
// (jku, x5u, jwk, x5c) are decoded only to be refused: the key always comes from the
// issuer's JWKS, never from the token.
type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
	JKU  json.RawMessage `json:"jku"`
	X5U  json.RawMessage `json:"x5u"`
	JWK  json.RawMessage `json:"jwk"`
	X5C  json.RawMessage `json:"x5c"`
}

// Verify checks the compact JWS token against the key set and returns its payload. It
// refuses oversize tokens, disallowed algorithms, headers that carry or point at keys,
// crit, a wrong typ, a missing kid, and a key whose type or JWK alg does not fit the
// header alg.
func (k *JWKS) Verify(ctx context.Context, token string, opts VerifyOptions) ([]byte, error) {
	if len(token) > MaxTokenBytes {
		return nil, errors.New("token too large")
	}
	h64, rest, ok := strings.Cut(token, ".")
	p64, s64, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || strings.Contains(s64, ".") {
		return nil, errors.New("not a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(h64)
	if err != nil {
		return nil, errors.New("malformed header")
	}
	var h header
	if err := decodeJSON(hb, &h); err != nil {
		return nil, errors.New("malformed header")
	}
	if h.JKU != nil || h.X5U != nil || h.JWK != nil || h.X5C != nil {
		return nil, errors.New("header must not carry or point at a key")
	}
	if h.Crit != nil {
		return nil, errors.New("unsupported crit header")
	}
	if h.Alg == "" || h.Alg == "none" || strings.HasPrefix(strings.ToUpper(h.Alg), "HS") || !slices.Contains(opts.Algorithms, h.Alg) {
		return nil, fmt.Errorf("algorithm %q not allowed", h.Alg)
	}
	if opts.Type != nil && !opts.Type(h.Typ) {
		return nil, fmt.Errorf("wrong token type %q", h.Typ)
	}
	if h.Kid == "" {
		return nil, errors.New("header has no kid")
	}
	sig, err := base64.RawURLEncoding.DecodeString(s64)
	if err != nil {
		return nil, errors.New("malformed signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(p64)
	if err != nil {
		return nil, errors.New("malformed payload")
	}
	pk, err := k.key(ctx, h.Kid)
	if err != nil {
		return nil, err
	}
	if pk.alg != "" && pk.alg != h.Alg {
		return nil, errors.New("key is registered for another algorithm")
	}
	if !fitsKey(h.Alg, pk.key) {
		return nil, errors.New("key type does not fit the algorithm")
	}
	if !verifySignature(h.Alg, pk.key, token[:len(h64)+1+len(p64)], sig) {
		return nil, errors.New("bad signature")
	}
	return payload, nil
}

func verifySignature(alg string, key crypto.PublicKey, input string, sig []byte) bool {
	switch alg {
	case "ES256", "ES384":
		pub := key.(*ecdsa.PublicKey)
		n := (pub.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*n {
			return false
		}
		r := new(big.Int).SetBytes(sig[:n])
		s := new(big.Int).SetBytes(sig[n:])
		if alg == "ES256" {
			d := sha256.Sum256([]byte(input))
			return ecdsa.Verify(pub, d[:], r, s)
		}
		d := sha512.Sum384([]byte(input))
		return ecdsa.Verify(pub, d[:], r, s)
	case "EdDSA", "Ed25519":
		return ed25519.Verify(key.(ed25519.PublicKey), []byte(input), sig)
	case "RS256":
		d := sha256.Sum256([]byte(input))
		return rsa.VerifyPKCS1v15(key.(*rsa.PublicKey), crypto.SHA256, d[:], sig) == nil
	case "PS256":
		d := sha256.Sum256([]byte(input))
		return rsa.VerifyPSS(key.(*rsa.PublicKey), crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	}
	return false
}

// decodeJSON decodes one JSON object and nothing after it.
func decodeJSON(b []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(dst); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}
