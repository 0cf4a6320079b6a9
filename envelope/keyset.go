package envelope

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// KeySet holds the public keys of one client (its registered jwks or
// jwks_uri). The verifier looks up the header kid here and nowhere else.
type KeySet interface {
	// Key returns the key named kid. It returns an error wrapping
	// ErrUnknownKID when there is no such key, and one wrapping
	// ErrKeysUnavailable when the keys cannot be obtained.
	Key(ctx context.Context, kid string) (jwk.Key, error)
}

// verificationKey is a key checked once, at load time, with its raw form
// exported so verification does not convert the JWK on every request.
type verificationKey struct {
	jwk    jwk.Key
	public any    // *ecdsa.PublicKey, ed25519.PublicKey or *rsa.PublicKey
	alg    string // the JWK's alg, "" when it names none
}

// verificationKeySource is implemented by this package's key sets so the
// verifier can skip exporting the JWK per request. Other KeySet
// implementations go through prepareKey on each call.
type verificationKeySource interface {
	verificationKey(ctx context.Context, kid string) (*verificationKey, error)
}

// minRSABits refuses RSA keys too short to be safe (RFC 7518 §3.3 requires
// 2048 bits).
const minRSABits = 2048

// prepareKey checks that k is a public signing key of a kind the allow-list
// can use and exports its raw form.
func prepareKey(k jwk.Key) (*verificationKey, error) {
	if k == nil {
		return nil, errors.New("nil key")
	}
	if use, ok := k.KeyUsage(); ok && use != "sig" {
		return nil, fmt.Errorf("key use is %q, not \"sig\"", use)
	}
	if ops, ok := k.KeyOps(); ok {
		verify := false
		for _, op := range ops {
			if op == jwk.KeyOpVerify {
				verify = true
			}
		}
		if !verify {
			return nil, errors.New("key_ops does not include \"verify\"")
		}
	}
	var raw any
	if err := jwk.Export(k, &raw); err != nil {
		return nil, fmt.Errorf("unsupported key: %w", err)
	}
	vk := &verificationKey{jwk: k}
	switch pub := raw.(type) {
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384() {
			return nil, errors.New("EC keys must be on P-256 or P-384")
		}
		vk.public = pub
	case ed25519.PublicKey:
		vk.public = pub
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA keys must have at least %d bits", minRSABits)
		}
		vk.public = pub
	case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey, []byte:
		// []byte is a symmetric ("oct") key: a shared secret has no place
		// in a set of public keys.
		return nil, errors.New("key set contains private or symmetric key material")
	default:
		return nil, fmt.Errorf("unsupported key type %T", raw)
	}
	if alg, ok := k.Algorithm(); ok {
		vk.alg = alg.String()
		if !algAllowed(vk.alg) || !algFitsKey(vk.alg, vk.public) {
			return nil, fmt.Errorf("key alg %q is not allowed for this key", vk.alg)
		}
	}
	return vk, nil
}

// isPrivateMaterial tells a refused private key apart from an unusable one:
// a set that publishes private keys is refused as a whole.
func isPrivateMaterial(k jwk.Key) bool {
	if k.KeyType().String() == "oct" {
		return true
	}
	priv, err := jwk.IsPrivateKey(k)
	return err == nil && priv
}

// parsedSet is a key set indexed by kid.
type parsedSet map[string]*verificationKey

// parseJWKS reads a JWK Set object. strict (admin-registered inline keys)
// refuses any key that cannot be used; lenient (remote sets, which may
// publish encryption keys too) skips those. Private key material and
// duplicate kids are refused either way.
func parseJWKS(data []byte, strict bool) (parsedSet, error) {
	var probe struct {
		Keys json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("JWKS is not a JSON object: %w", err)
	}
	if len(probe.Keys) == 0 || probe.Keys[0] != '[' {
		return nil, errors.New(`JWKS must be an object with a "keys" array`)
	}
	set, err := jwk.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("JWKS does not parse: %w", err)
	}
	out := make(parsedSet, set.Len())
	for i := range set.Len() {
		k, _ := set.Key(i)
		if isPrivateMaterial(k) {
			return nil, fmt.Errorf("key %d: JWKS contains private or symmetric key material", i)
		}
		kid, _ := k.KeyID()
		if kid == "" {
			if strict {
				return nil, fmt.Errorf("key %d has no kid", i)
			}
			continue
		}
		if _, dup := out[kid]; dup {
			return nil, fmt.Errorf("kid %q appears twice", kid)
		}
		vk, err := prepareKey(k)
		if err != nil {
			if strict {
				return nil, fmt.Errorf("key %q: %w", kid, err)
			}
			continue
		}
		out[kid] = vk
	}
	return out, nil
}

func (s parsedSet) lookup(kid string) (*verificationKey, error) {
	if vk, ok := s[kid]; ok {
		return vk, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownKID, kid)
}

// StaticKeySet is a client's inline JWKS, checked once when built.
type StaticKeySet struct {
	keys parsedSet
}

// NewStaticKeySet parses an inline JWK Set ({"keys": [...]}) for a client.
// Every key must be a public signing key (EC P-256/P-384, Ed25519, RSA of at
// least 2048 bits) with a unique kid; use, key_ops and alg, when present,
// must allow verification with an allowed algorithm. Anything else is an
// error, so an admin learns about a bad key when registering it rather than
// when the first envelope fails.
func NewStaticKeySet(jwksJSON []byte) (*StaticKeySet, error) {
	keys, err := parseJWKS(jwksJSON, true)
	if err != nil {
		return nil, err
	}
	return &StaticKeySet{keys: keys}, nil
}

// Key implements KeySet.
func (s *StaticKeySet) Key(_ context.Context, kid string) (jwk.Key, error) {
	vk, err := s.keys.lookup(kid)
	if err != nil {
		return nil, err
	}
	return vk.jwk, nil
}

// Len is the number of keys in the set.
func (s *StaticKeySet) Len() int { return len(s.keys) }

func (s *StaticKeySet) verificationKey(_ context.Context, kid string) (*verificationKey, error) {
	return s.keys.lookup(kid)
}
