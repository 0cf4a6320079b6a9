package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Signer builds and signs envelopes for an MCP server. It refuses to sign
// what Mandate would refuse, so mistakes show up in the MCP server's own
// tests instead of as invalid_request at the token endpoint. Safe for
// concurrent use.
type Signer struct {
	key    crypto.Signer
	kid    string
	alg    string
	header string // base64url of the fixed protected header
	// Now returns the current time for iat; nil means time.Now.
	Now func() time.Time
}

// NewSigner returns a Signer that signs with key under kid. key is a
// crypto.Signer (*ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey, or
// a KMS/HSM-backed signer whose Public() is one of those) or a private
// jwk.Key. alg is optional: by default ES256 for P-256, ES384 for P-384,
// EdDSA for Ed25519 and PS256 for RSA; pass AlgRS256 to use PKCS #1 v1.5.
// The matching public key, with the same kid, must be registered for the
// client at Mandate.
func NewSigner(key any, kid string, alg ...string) (*Signer, error) {
	if kid == "" {
		return nil, errors.New("envelope: a kid is required")
	}
	if len(alg) > 1 {
		return nil, errors.New("envelope: at most one alg")
	}
	var signer crypto.Signer
	switch k := key.(type) {
	case jwk.Key:
		var raw any
		if err := jwk.Export(k, &raw); err != nil {
			return nil, fmt.Errorf("envelope: cannot use JWK for signing: %w", err)
		}
		s, ok := raw.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("envelope: JWK is not a private signing key (%T)", raw)
		}
		signer = s
	case crypto.Signer:
		signer = k
	default:
		return nil, fmt.Errorf("envelope: unsupported signing key type %T", key)
	}
	if signer == nil {
		return nil, errors.New("envelope: nil key")
	}
	def, err := defaultAlg(signer.Public())
	if err != nil {
		return nil, err
	}
	chosen := def
	if len(alg) == 1 && alg[0] != "" {
		chosen = alg[0]
	}
	if !algAllowed(chosen) {
		return nil, fmt.Errorf("envelope: alg %q is not allowed (use ES256, ES384, EdDSA, PS256 or RS256)", chosen)
	}
	if !algFitsKey(chosen, signer.Public()) {
		return nil, fmt.Errorf("envelope: alg %s does not fit a %T key", chosen, signer.Public())
	}
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}{chosen, Type, kid})
	if err != nil {
		return nil, err
	}
	return &Signer{
		key: signer, kid: kid, alg: chosen,
		header: base64.RawURLEncoding.EncodeToString(hdr),
	}, nil
}

func defaultAlg(pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return AlgES256, nil
		case elliptic.P384():
			return AlgES384, nil
		}
		return "", errors.New("envelope: EC keys must be on P-256 or P-384")
	case ed25519.PublicKey:
		return AlgEdDSA, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return "", fmt.Errorf("envelope: RSA keys must have at least %d bits", minRSABits)
		}
		return AlgPS256, nil
	}
	return "", fmt.Errorf("envelope: unsupported public key type %T", pub)
}

// Alg is the JWS algorithm the Signer uses.
func (s *Signer) Alg() string { return s.alg }

// KID is the key id the Signer puts in the header.
func (s *Signer) KID() string { return s.kid }

// Public returns the public key, to publish in the client's JWKS.
func (s *Signer) Public() crypto.PublicKey { return s.key.Public() }

// Sign fills defaults and signs c. Defaults: jti 128 random bits
// (base64url), iat now, exp iat+60s, agent.type "mcp_agent",
// agent.client_id = iss. It refuses, with an *Error carrying the reason
// Mandate would give, any envelope Mandate would reject on its content:
// missing members, unknown mode or actor type, exp not after iat, a
// lifetime over MaxLifetimeCeiling, a jti over 128 characters, a service
// actor not in service_identity mode, or a token over MaxTokenBytes.
// (The client's own maximum lifetime, 300 s by default, is Mandate's to
// check; keep exp-iat within it.)
func (s *Signer) Sign(c Claims) (string, error) {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	if c.JTI == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("envelope: generating jti: %w", err)
		}
		c.JTI = base64.RawURLEncoding.EncodeToString(b[:])
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = now
	}
	// NumericDates travel as whole seconds; truncate now so the checks
	// below see what Mandate will see.
	c.IssuedAt = c.IssuedAt.Truncate(time.Second)
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.IssuedAt.Add(DefaultSignLifetime)
	}
	c.ExpiresAt = c.ExpiresAt.Truncate(time.Second)
	if !c.NotBefore.IsZero() {
		c.NotBefore = c.NotBefore.Truncate(time.Second)
	}
	if c.Agent.Type == "" {
		c.Agent.Type = AgentTypeMCP
	}
	if c.Agent.ClientID == "" {
		c.Agent.ClientID = c.Issuer
	}
	if err := checkForSigning(&c); err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("envelope: encoding claims: %w", err)
	}
	input := s.header + "." + base64.RawURLEncoding.EncodeToString(payload)
	// Refuse before signing when even the signature cannot fit.
	if len(input)+1+base64.RawURLEncoding.EncodedLen(s.sigSize()) > MaxTokenBytes {
		return "", refuse(ReasonTooLarge, "the envelope would be larger than 8 KiB")
	}
	sig, err := s.sign(input)
	if err != nil {
		return "", fmt.Errorf("envelope: signing: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func checkForSigning(c *Claims) error {
	switch {
	case c.Issuer == "":
		return refuse(ReasonMissingMember, "iss is required")
	case len(c.Audience) == 0:
		return refuse(ReasonMissingMember, "aud is required (Mandate's issuer URL)")
	case c.Agent.ClientID != c.Issuer:
		return refuse(ReasonClientMismatch, "agent.client_id must equal iss")
	}
	for _, a := range c.Audience {
		if a == "" {
			return refuse(ReasonBadValue, "aud holds an empty value")
		}
	}
	if !c.ExpiresAt.After(c.IssuedAt) {
		return refuse(ReasonBadValue, "exp must be after iat")
	}
	if c.ExpiresAt.Sub(c.IssuedAt) > MaxLifetimeCeiling {
		return refuse(ReasonLifetimeTooLong, "exp - iat must be at most 3600 seconds")
	}
	return checkMembers(c)
}

// sigSize is the length of a signature, known before signing.
func (s *Signer) sigSize() int {
	switch k := s.key.Public().(type) {
	case *ecdsa.PublicKey:
		return 2 * ((k.Curve.Params().BitSize + 7) / 8)
	case *rsa.PublicKey:
		return k.Size()
	}
	return ed25519.SignatureSize
}

func (s *Signer) sign(input string) ([]byte, error) {
	switch s.alg {
	case AlgEdDSA:
		return s.key.Sign(rand.Reader, []byte(input), crypto.Hash(0))
	case AlgES256, AlgES384:
		var digest []byte
		h := crypto.SHA256
		if s.alg == AlgES256 {
			d := sha256.Sum256([]byte(input))
			digest = d[:]
		} else {
			d := sha512.Sum384([]byte(input))
			digest, h = d[:], crypto.SHA384
		}
		der, err := s.key.Sign(rand.Reader, digest, h)
		if err != nil {
			return nil, err
		}
		// crypto.Signer returns ASN.1 DER; JWS wants fixed-width R || S.
		var rs struct{ R, S *big.Int }
		if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
			return nil, errors.New("ECDSA signer returned a malformed signature")
		}
		size := s.sigSize() / 2
		if rs.R == nil || rs.S == nil || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 ||
			rs.R.BitLen() > 8*size || rs.S.BitLen() > 8*size {
			return nil, errors.New("ECDSA signer returned an out-of-range signature")
		}
		out := make([]byte, 2*size)
		rs.R.FillBytes(out[:size])
		rs.S.FillBytes(out[size:])
		return out, nil
	case AlgRS256:
		d := sha256.Sum256([]byte(input))
		return s.key.Sign(rand.Reader, d[:], crypto.SHA256)
	case AlgPS256:
		d := sha256.Sum256([]byte(input))
		return s.key.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	}
	return nil, fmt.Errorf("alg %s not supported", s.alg)
}
