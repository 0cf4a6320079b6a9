package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/storage"
)

// Algorithms Mandate signs with. RSA is deliberately absent (SPEC §5).
const (
	ES256 = "ES256"
	EdDSA = "EdDSA"
)

// ErrRSANotAllowed is returned for RS*/PS* algorithms: Mandate never signs with RSA.
var ErrRSANotAllowed = errors.New("keys: RSA signing is not allowed; use ES256 or EdDSA")

// checkAlg validates a configured or stored algorithm name.
func checkAlg(alg string) error {
	switch alg {
	case ES256, EdDSA:
		return nil
	}
	if strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS") {
		return ErrRSANotAllowed
	}
	return fmt.Errorf("keys: unsupported signing algorithm %q; use ES256 or EdDSA", alg)
}

// newKey generates a key pair for alg and returns its stored form (private key sealed).
func newKey(sealer *Sealer, alg string, now, activatesAt time.Time) (*storage.SigningKey, error) {
	var priv crypto.Signer
	switch alg {
	case ES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		priv = k
	case EdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		priv = k
	default:
		return nil, checkAlg(alg)
	}
	pub, err := jwk.Import(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("keys: import public key: %w", err)
	}
	// The kid is the RFC 7638 thumbprint: stable, unique per key, and meaningless to guess.
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("keys: thumbprint: %w", err)
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	pubJSON, err := publicJWKJSON(pub, kid, alg)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("keys: marshal private key: %w", err)
	}
	sealed := sealer.Seal(kid, der)
	clear(der)
	status := storage.KeyNext
	if !activatesAt.After(now) {
		status = storage.KeyActive
	}
	return &storage.SigningKey{
		KID:                 kid,
		Alg:                 alg,
		Status:              status,
		PublicJWK:           pubJSON,
		EncryptedPrivateKey: sealed,
		CreatedAt:           now,
		ActivatesAt:         activatesAt,
	}, nil
}

// publicJWKJSON marshals the public part of k with kid, alg and use "sig" set (some verifiers
// skip keys without alg).
func publicJWKJSON(k jwk.Key, kid, alg string) ([]byte, error) {
	pub, err := jwk.PublicKeyOf(k)
	if err != nil {
		return nil, fmt.Errorf("keys: public key: %w", err)
	}
	if isPriv, err := jwk.IsPrivateKey(pub); err != nil || isPriv {
		return nil, errors.New("keys: refusing to publish a private key")
	}
	for name, v := range map[string]any{jwk.KeyIDKey: kid, jwk.AlgorithmKey: alg, jwk.KeyUsageKey: "sig"} {
		if err := pub.Set(name, v); err != nil {
			return nil, fmt.Errorf("keys: set %s: %w", name, err)
		}
	}
	b, err := json.Marshal(pub)
	if err != nil {
		return nil, fmt.Errorf("keys: marshal public key: %w", err)
	}
	return b, nil
}

// publicKey is a stored key's verification half.
type publicKey struct {
	kid      string
	alg      string
	ec       *ecdsa.PublicKey
	ed       ed25519.PublicKey
	jwk      []byte    // published form
	removeAt time.Time // zero unless retired
}

// parsePublic reads a stored PublicJWK, refusing private members and algorithm mismatches.
func parsePublic(k *storage.SigningKey) (*publicKey, error) {
	if err := checkAlg(k.Alg); err != nil {
		return nil, fmt.Errorf("keys: key %s: %w", k.KID, err)
	}
	parsed, err := jwk.ParseKey(k.PublicJWK)
	if err != nil {
		return nil, fmt.Errorf("keys: key %s: parse public JWK: %w", k.KID, err)
	}
	// Re-derive the published form from the parsed key rather than trusting the stored JSON:
	// whatever sits in the row, only public members with our kid/alg/use go out.
	pubJSON, err := publicJWKJSON(parsed, k.KID, k.Alg)
	if err != nil {
		return nil, fmt.Errorf("keys: key %s: %w", k.KID, err)
	}
	pk := &publicKey{kid: k.KID, alg: k.Alg, jwk: pubJSON}
	if k.Status == storage.KeyRetired {
		pk.removeAt = k.RemoveAt
	}
	var raw any
	if err := jwk.Export(parsed, &raw); err != nil {
		return nil, fmt.Errorf("keys: key %s: export public key: %w", k.KID, err)
	}
	switch v := raw.(type) {
	case *ecdsa.PublicKey:
		if k.Alg != ES256 || v.Curve != elliptic.P256() {
			return nil, fmt.Errorf("keys: key %s: P-256 public key stored for %s", k.KID, k.Alg)
		}
		pk.ec = v
	case ed25519.PublicKey:
		if k.Alg != EdDSA {
			return nil, fmt.Errorf("keys: key %s: Ed25519 public key stored for %s", k.KID, k.Alg)
		}
		pk.ed = v
	default:
		return nil, fmt.Errorf("keys: key %s: unsupported public key type %T", k.KID, raw)
	}
	return pk, nil
}

// openPrivate decrypts and parses a stored private key and checks it belongs to pub.
func openPrivate(sealer *Sealer, k *storage.SigningKey, pub *publicKey) (crypto.Signer, error) {
	der, err := sealer.Open(k.KID, k.EncryptedPrivateKey)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("keys: key %s: parse private key: %w", k.KID, err)
	}
	switch v := parsed.(type) {
	case *ecdsa.PrivateKey:
		if pub.ec == nil || !v.PublicKey.Equal(pub.ec) {
			return nil, fmt.Errorf("keys: key %s: private key does not match its public key", k.KID)
		}
		return v, nil
	case ed25519.PrivateKey:
		if pub.ed == nil || !pub.ed.Equal(v.Public()) {
			return nil, fmt.Errorf("keys: key %s: private key does not match its public key", k.KID)
		}
		return v, nil
	}
	return nil, fmt.Errorf("keys: key %s: unsupported private key type %T", k.KID, parsed)
}
