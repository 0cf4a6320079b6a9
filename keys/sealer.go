package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/mandatehq/mandate/secret"
)

// sealVersion prefixes every sealed blob so the format can change later without guessing.
const sealVersion byte = 1

const nonceSize = 12 // the 96-bit GCM nonce

// ErrUndecryptable is returned when a stored private key does not open with this deployment's
// key. GCM cannot tell a different key from altered bytes, so the message names both; in
// practice it is almost always a changed MANDATE_SECRET.
var ErrUndecryptable = errors.New("keys: a stored signing key cannot be decrypted: " +
	"MANDATE_SECRET is not the secret the key was encrypted with (it was changed or is " +
	"missing), or the stored key was altered")

// Sealer encrypts private signing keys at rest with AES-256-GCM under a key derived from the
// deployment secret. The kid is bound in as additional data, so a sealed blob copied onto
// another key's row does not open there.
type Sealer struct{ aead cipher.AEAD }

// NewSealer derives the key-encryption key from m.
func NewSealer(m *secret.Master) (*Sealer, error) {
	if m == nil {
		return nil, errors.New("keys: NewSealer: nil master secret")
	}
	block, err := aes.NewCipher(m.Derive(secret.PurposeKeyEncryption))
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal returns version || nonce || ciphertext+tag for plaintext, bound to kid.
func (s *Sealer) Seal(kid string, plaintext []byte) []byte {
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(plaintext)+s.aead.Overhead())
	out[0] = sealVersion
	_, _ = rand.Read(out[1 : 1+nonceSize]) // crypto/rand.Read never fails on supported platforms
	return s.aead.Seal(out, out[1:1+nonceSize], plaintext, aad(kid))
}

// Open reverses Seal. Every failure other than a malformed blob is ErrUndecryptable.
func (s *Sealer) Open(kid string, sealed []byte) ([]byte, error) {
	if len(sealed) < 1+nonceSize+s.aead.Overhead() {
		return nil, fmt.Errorf("keys: sealed key %s is truncated: %w", kid, ErrUndecryptable)
	}
	if sealed[0] != sealVersion {
		return nil, fmt.Errorf("keys: sealed key %s has unknown format version %d", kid, sealed[0])
	}
	plain, err := s.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], aad(kid))
	if err != nil {
		return nil, fmt.Errorf("keys: key %s: %w", kid, ErrUndecryptable)
	}
	return plain, nil
}

// aad binds the format version and the kid; the version is authenticated too so a future
// format cannot be downgraded by flipping the first byte.
func aad(kid string) []byte {
	b := make([]byte, 0, 1+len(kid))
	b = append(b, sealVersion)
	return append(b, kid...)
}
