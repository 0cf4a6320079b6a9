// Package envelope is the Execution Identity Envelope (EIE, SPEC §3): the claim
// types, the builder/signer SDK that MCP servers use to produce envelopes, and
// the strict verifier Mandate runs on every token exchange.
//
// The package is a leaf of the project: it must not import storage,
// exchange, authz, keys or fosite, and uses net/http only as a client (for a
// client's jwks_uri). MCP servers import it as an SDK, so it stays small and
// depends only on the standard library and jwx (for JWK parsing); the
// signatures themselves are made and checked with crypto/*.
package envelope

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Header and token type identifiers.
const (
	// Type is the JWS header "typ" of every envelope. It keeps an envelope
	// from being confused with an access token or an ID token signed by the
	// same key (RFC 8725 §3.11).
	Type = "eie+jwt"
	// TokenType is the subject_token_type an MCP server sends with an
	// envelope (SPEC §3).
	TokenType = "urn:mandate:params:oauth:token-type:eie"
	// JWTTokenType is accepted as a subject_token_type too, but only when the
	// header typ is Type (the verifier checks typ either way).
	JWTTokenType = "urn:ietf:params:oauth:token-type:jwt"
)

// Delegation modes (delegation.mode, SPEC §2 and §5).
const (
	ModeOnBehalfOf      = "on_behalf_of"
	ModeServiceIdentity = "service_identity"
	ModeRestrictedUser  = "restricted_user"
)

// Actor types (actor.type).
const (
	ActorUser    = "user"
	ActorService = "service"
)

// Authorization confidence values (authorization.confidence). The member is
// optional; when present it must be one of these.
const (
	ConfidenceVerified  = "verified"
	ConfidenceEstimated = "estimated"
)

// AgentTypeMCP is the agent.type the Signer fills in when none is given.
const AgentTypeMCP = "mcp_agent"

// Limits from SPEC §3.
const (
	// DefaultMaxLifetime is the longest exp-iat a client may use when its
	// registration does not say otherwise.
	DefaultMaxLifetime = 300 * time.Second
	// MaxLifetimeCeiling caps every client's configured maximum lifetime.
	MaxLifetimeCeiling = 3600 * time.Second
	// MaxTokenBytes is the largest compact envelope accepted, checked before
	// any parsing so a huge token costs nothing.
	MaxTokenBytes = 8192
	// ClockSkew is tolerated on exp, iat and nbf between the MCP server's
	// clock and Mandate's.
	ClockSkew = 60 * time.Second
	// MaxJTILength bounds jti so replay keys stay small in storage.
	MaxJTILength = 128
	// DefaultSignLifetime is the lifetime the Signer gives an envelope when
	// the caller sets no exp. Envelopes are used once, right away.
	DefaultSignLifetime = 60 * time.Second
)

// Claims is the payload of an envelope. The MCP server fills it (the Signer
// supplies defaults for jti, iat, exp, agent.type and agent.client_id);
// Mandate's Verifier checks it as described on each field.
type Claims struct {
	// Issuer (iss) is the client_id of the MCP server that signed the
	// envelope. Required. Mandate requires it to equal the authenticated
	// client's id.
	Issuer string `json:"iss"`
	// Audience (aud) names Mandate: its issuer URL. Required. Mandate
	// requires it to contain its configured issuer (exact string match).
	Audience Audience `json:"aud"`
	// IssuedAt (iat) is when the envelope was made. Required; the Signer
	// sets it to now when zero. Mandate rejects it more than ClockSkew in
	// the future.
	IssuedAt time.Time `json:"iat"`
	// ExpiresAt (exp) ends the envelope's life. Required; the Signer sets it
	// to iat+60s when zero. Mandate rejects it once past (with ClockSkew),
	// and rejects exp-iat above the client's maximum envelope lifetime.
	ExpiresAt time.Time `json:"exp"`
	// NotBefore (nbf) is optional (zero = absent). When present Mandate
	// rejects the envelope before it (with ClockSkew).
	NotBefore time.Time `json:"nbf,omitzero"`
	// JTI (jti) identifies the envelope for replay protection: Mandate
	// accepts each (client, jti, audience) once. Required, at most
	// MaxJTILength characters; the Signer generates 128 random bits when
	// empty.
	JTI string `json:"jti"`
	// Actor is the user or service on whose behalf work is done. Required
	// with all three members.
	Actor Actor `json:"actor"`
	// Agent is the AI agent runtime that executes the tool. Required.
	Agent Agent `json:"agent"`
	// Session ties the envelope to the MCP session and trace. Required
	// (session.id).
	Session Session `json:"session"`
	// Authorization carries the scopes the MCP server validated for the user.
	// Scopes may be empty; Mandate only ever narrows them.
	Authorization Authorization `json:"authorization"`
	// Delegation says how the downstream call represents the actor.
	// Required (delegation.mode).
	Delegation Delegation `json:"delegation"`
	// Act is an optional prior actor chain (RFC 8693 §4.1) when the MCP
	// server itself acts for another agent. Mandate nests it under the
	// issued token's act and bounds its depth, but cannot verify it: it is
	// this MCP server's word alone. Downstream APIs are told so (only the
	// outermost act, the agent of this envelope, is vouched for by Mandate;
	// see downstream.Principal.PriorActors).
	Act *Act `json:"act,omitempty"`
}

// Actor is the envelope's actor member.
type Actor struct {
	// Type is ActorUser or ActorService. Required. A service actor must use
	// ModeServiceIdentity.
	Type string `json:"type"`
	// Sub is the actor's subject identifier within its tenant; it becomes
	// the issued token's sub (user modes) or actor_sub. Required.
	Sub string `json:"sub"`
	// Tenant is the actor's tenant. Required; Mandate checks it against the
	// client's allowed tenants and the grant.
	Tenant string `json:"tenant"`
}

// Agent is the envelope's agent member.
type Agent struct {
	// Type describes the runtime; the Signer sets AgentTypeMCP when empty.
	// Optional and not interpreted by Mandate.
	Type string `json:"type,omitempty"`
	// ID identifies the agent; it becomes the issued token's act.sub and
	// agent_id, and may be pinned by a grant. Required.
	ID string `json:"id"`
	// ClientID is the MCP server's client_id. Required; the Signer copies
	// Issuer when empty. Mandate requires it to equal iss and the
	// authenticated client.
	ClientID string `json:"client_id"`
}

// Session is the envelope's session member.
type Session struct {
	// ID is the MCP session id; copied to the token's session_id. Required.
	ID string `json:"id"`
	// TraceID is a W3C trace id or any opaque id; copied to the token's
	// trace_id and the audit record. Optional.
	TraceID string `json:"trace_id,omitempty"`
}

// Authorization is the envelope's authorization member.
type Authorization struct {
	// Scopes the MCP server validated for the user. May be empty. Mandate
	// intersects them with the grant's, audience's and client's scopes.
	Scopes []string `json:"scopes"`
	// Confidence is ConfidenceVerified or ConfidenceEstimated; optional.
	Confidence string `json:"confidence,omitempty"`
}

// Delegation is the envelope's delegation member.
type Delegation struct {
	// Mode is one of ModeOnBehalfOf, ModeServiceIdentity, ModeRestrictedUser.
	// Required. Mandate checks it against the audience, client and grant.
	Mode string `json:"mode"`
	// Allowed lists audience ids the envelope may be exchanged for; empty
	// or absent means any audience the grant covers.
	Allowed []string `json:"allowed,omitempty"`
}

// Act is one link of an RFC 8693 §4.1 actor chain: the newest actor is
// outermost, each Act holding the one it acts for.
type Act struct {
	Sub      string `json:"sub"`
	ClientID string `json:"client_id,omitempty"`
	Act      *Act   `json:"act,omitempty"`
}

// Depth is the number of links in the chain starting at a (0 for nil).
func (a *Act) Depth() int {
	n := 0
	for ; a != nil; a = a.Act {
		n++
	}
	return n
}

// maxActDepth bounds how deep an act chain may nest while decoding, so a
// hostile envelope cannot make the decoder recurse without limit. Mandate's
// own, smaller limit (SPEC §5, default 4) is applied by the exchange.
const maxActDepth = 32

// Audience is the aud claim: a string or an array of strings on the wire
// (RFC 7519 §4.1.3). A single value marshals as a plain string.
type Audience []string

// Contains reports whether s is one of the audience values (exact match).
func (a Audience) Contains(s string) bool {
	for _, v := range a {
		if v == s {
			return true
		}
	}
	return false
}

// MarshalJSON writes one value as a string and several as an array.
func (a Audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

// UnmarshalJSON accepts a string or an array of strings and nothing else.
func (a *Audience) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		// Treated as absent, like encoding/json does for other types; the
		// verifier then reports aud as missing.
		*a = nil
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = Audience{s}
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var l []string
		if err := json.Unmarshal(b, &l); err != nil {
			return err
		}
		*a = Audience(l)
		return nil
	}
	return fmt.Errorf("aud must be a string or an array of strings")
}

// wireClaims is Claims with NumericDate members as JSON numbers. Pointers
// tell "absent" from zero; json.Number keeps strings out (strict types).
type wireClaims struct {
	Issuer        string        `json:"iss"`
	Audience      Audience      `json:"aud"`
	IssuedAt      *numericDate  `json:"iat,omitempty"`
	ExpiresAt     *numericDate  `json:"exp,omitempty"`
	NotBefore     *numericDate  `json:"nbf,omitempty"`
	JTI           string        `json:"jti"`
	Actor         Actor         `json:"actor"`
	Agent         Agent         `json:"agent"`
	Session       Session       `json:"session"`
	Authorization Authorization `json:"authorization"`
	Delegation    Delegation    `json:"delegation"`
	Act           *Act          `json:"act,omitempty"`
}

// MarshalJSON writes NumericDates as integer seconds and leaves out a zero nbf.
func (c Claims) MarshalJSON() ([]byte, error) {
	w := wireClaims{
		Issuer: c.Issuer, Audience: c.Audience, JTI: c.JTI,
		Actor: c.Actor, Agent: c.Agent, Session: c.Session,
		Authorization: c.Authorization, Delegation: c.Delegation, Act: c.Act,
		IssuedAt: toNumericDate(c.IssuedAt), ExpiresAt: toNumericDate(c.ExpiresAt),
		NotBefore: toNumericDate(c.NotBefore),
	}
	if w.Authorization.Scopes == nil {
		w.Authorization.Scopes = []string{}
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes the wire form; a wrongly typed member is an error.
// Absent NumericDates stay zero so the verifier can report them missing.
func (c *Claims) UnmarshalJSON(b []byte) error {
	var w wireClaims
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	return w.into(c)
}

// into converts decoded wire claims. The verifier decodes into wireClaims
// directly, which saves json.Unmarshal a second scan of the payload.
func (w *wireClaims) into(c *Claims) error {
	if w.Act.Depth() > maxActDepth {
		return fmt.Errorf("act nests deeper than %d", maxActDepth)
	}
	*c = Claims{
		Issuer: w.Issuer, Audience: w.Audience, JTI: w.JTI,
		Actor: w.Actor, Agent: w.Agent, Session: w.Session,
		Authorization: w.Authorization, Delegation: w.Delegation, Act: w.Act,
		IssuedAt: w.IssuedAt.time(), ExpiresAt: w.ExpiresAt.time(),
		NotBefore: w.NotBefore.time(),
	}
	return nil
}

// numericDate is an RFC 7519 NumericDate: seconds since the epoch, possibly
// with a fraction. Strings, booleans and out-of-range numbers are rejected.
type numericDate struct{ t time.Time }

func toNumericDate(t time.Time) *numericDate {
	if t.IsZero() {
		return nil
	}
	return &numericDate{t}
}

func (d *numericDate) time() time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.t
}

func (d numericDate) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%d", d.t.Unix())), nil
}

// maxNumericDate keeps decoded times far inside time.Time's range (year
// ~5138), so arithmetic on them never overflows.
const maxNumericDate = 1 << 37

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if len(b) == 0 || (b[0] != '-' && (b[0] < '0' || b[0] > '9')) {
		return fmt.Errorf("NumericDate must be a number")
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	if math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return fmt.Errorf("NumericDate out of range")
	}
	sec, frac := math.Modf(f)
	d.t = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return nil
}
