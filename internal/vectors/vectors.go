// Package vectors reads the shared test vectors in testdata/vectors: signed envelopes with
// the keys and the verdict Mandate must give, and access tokens with the principal a
// downstream verifier must produce. The server's tests and every SDK's tests judge the same
// files, so the three languages cannot drift apart (docs/vectors.md describes the format).
//
// Only tests and the cross-language check command import it.
package vectors

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// EnvelopeFile is testdata/vectors/envelopes.json.
type EnvelopeFile struct {
	Description string `json:"description"`
	// Issuer is Mandate's issuer the envelopes are judged against.
	Issuer string `json:"issuer"`
	// ClientID is the authenticated client presenting every envelope.
	ClientID string `json:"client_id"`
	// Now is the instant (Unix seconds) every vector is judged at.
	Now int64 `json:"now"`
	// MaxEnvelopeLifetime is the client's maximum exp - iat, in seconds.
	MaxEnvelopeLifetime int64 `json:"max_envelope_lifetime"`
	// JWKS is the client's registered public key set; PrivateJWKS the same keys with their
	// private members, for SDKs to sign with.
	JWKS        json.RawMessage  `json:"jwks"`
	PrivateJWKS json.RawMessage  `json:"private_jwks"`
	Vectors     []EnvelopeVector `json:"vectors"`
}

// Signer verdicts: what a conforming SDK signer does with a vector's claims.
const (
	SignerAccept = "accept" // must sign them
	SignerRefuse = "refuse" // must refuse them, with the vector's Reason
	SignerNA     = "n/a"    // the verdict depends on the header, signature or context
)

// EnvelopeVector is one envelope and its verdict.
type EnvelopeVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Token       string `json:"token"`
	Valid       bool   `json:"valid"`
	// Reason is the envelope package's reason code; WireReason what the token endpoint
	// answers as "reason" (and records in the audit log).
	Reason     string          `json:"reason"`
	WireReason string          `json:"wire_reason"`
	Signer     string          `json:"signer"`
	Claims     json.RawMessage `json:"claims,omitempty"`
}

// AccessTokenFile is testdata/vectors/access_tokens.json.
type AccessTokenFile struct {
	Description string              `json:"description"`
	Issuer      string              `json:"issuer"`
	Audience    string              `json:"audience"`
	Now         int64               `json:"now"`
	Leeway      int64               `json:"leeway"`
	Algorithms  []string            `json:"algorithms"`
	JWKS        json.RawMessage     `json:"jwks"`
	Vectors     []AccessTokenVector `json:"vectors"`
}

// AccessTokenVector is one token as a downstream API receives it.
type AccessTokenVector struct {
	Name           string     `json:"name"`
	Description    string     `json:"description"`
	Token          string     `json:"token"`
	RequiredScopes []string   `json:"required_scopes"`
	Valid          bool       `json:"valid"`
	Error          string     `json:"error,omitempty"` // invalid_token | insufficient_scope
	Principal      *Principal `json:"principal,omitempty"`
}

// Principal is what a verifier must report for a valid token; "" means absent.
type Principal struct {
	ActorType   string   `json:"actor_type"`
	User        string   `json:"user"`
	Service     string   `json:"service"`
	Tenant      string   `json:"tenant"`
	Subject     string   `json:"subject"`
	Mode        string   `json:"mode"`
	Agent       Actor    `json:"agent"`
	PriorActors []Actor  `json:"prior_actors"`
	ClientID    string   `json:"client_id"`
	Scopes      []string `json:"scopes"`
	TraceID     string   `json:"trace_id"`
	SessionID   string   `json:"session_id"`
	GrantID     string   `json:"grant_id"`
	JTI         string   `json:"jti"`
	IssuedAt    int64    `json:"iat"`
	ExpiresAt   int64    `json:"exp"`
}

// Actor is one link of an act chain.
type Actor struct {
	Sub      string `json:"sub"`
	ClientID string `json:"client_id"`
}

// Dir is testdata/vectors in this checkout.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "vectors")
}

// Envelopes reads envelopes.json.
func Envelopes() (*EnvelopeFile, error) {
	var f EnvelopeFile
	return &f, read("envelopes.json", &f)
}

// AccessTokens reads access_tokens.json.
func AccessTokens() (*AccessTokenFile, error) {
	var f AccessTokenFile
	return &f, read("access_tokens.json", &f)
}

func read(name string, dst any) error {
	b, err := os.ReadFile(filepath.Join(Dir(), name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return fmt.Errorf("vectors: %s: %w", name, err)
	}
	return nil
}

// Time is f.Now as a time.
func (f *EnvelopeFile) Time() time.Time { return time.Unix(f.Now, 0).UTC() }

// Time is f.Now as a time.
func (f *AccessTokenFile) Time() time.Time { return time.Unix(f.Now, 0).UTC() }
