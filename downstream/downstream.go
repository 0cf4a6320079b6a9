// Package downstream is the resource-server side of Mandate, for APIs written in Go: net/http
// middleware that verifies the RFC 9068 access tokens Mandate issues (offline through
// Mandate's JWKS, or online through RFC 7662 introspection for routes that must see a
// revocation at once), checks the scopes each route needs, answers with RFC 6750 errors,
// and hands the handler a Principal: a user or a service (never one read as the other), the
// tenant, the agent Mandate vouched for and the earlier actors it did not, the delegation
// mode and the trace id.
//
// It is an SDK that downstream APIs import, so it depends on the standard library and jwx
// (JWK parsing) only, and must not import any other Mandate package. Tokens are never
// logged, and never put into errors.
package downstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Actor types (the token's actor_type).
const (
	ActorUser    = "user"
	ActorService = "service"
)

// Principal is who a verified token says is calling.
//
// Authorize on ActorType with User or Service, Tenant, Agent, ClientID and Scopes: Mandate
// verified them. PriorActors are only what the MCP server said about earlier hops.
type Principal struct {
	// ActorType says whom the work is for: ActorUser (a person, in User) or ActorService
	// (a service of the MCP server's, in Service). Always one of the two.
	ActorType string
	// User is the person the call is for, in every mode: actor_sub when the token has it,
	// else sub. Empty for a service actor: a service is never read as a user.
	User string
	// Service is the service actor the call is for (actor_sub); empty for a user.
	Service string
	// Subject is the token's sub: the user in on_behalf_of and restricted_user mode, the
	// MCP server's client_id in service_identity mode.
	Subject string
	// Tenant is the actor's tenant.
	Tenant string
	// Mode is the delegation mode: on_behalf_of, service_identity or restricted_user.
	Mode string
	// Agent is the agent Mandate vouched for: the one named by the envelope it verified,
	// signed by ClientID. It is the outermost act (act.sub, act.client_id) when the token
	// has act, else agent_id and client_id.
	Agent Actor
	// PriorActors is the rest of the act chain, newest first. The MCP server asserted it in
	// its envelope and Mandate did not verify it: show or log it, never authorize on it.
	// Empty for service_identity and restricted_user tokens.
	PriorActors []Actor
	// ClientID is the MCP server the token was issued to.
	ClientID string
	// Scopes are the granted scopes.
	Scopes []string
	// TraceID and SessionID come from the envelope the token was exchanged for.
	TraceID   string
	SessionID string
	// GrantID is the delegation grant that allowed the token, when one did.
	GrantID string
	// Audience is the token's aud (always this API's audience id once verified).
	Audience string
	// JTI identifies the token.
	JTI string
	// IssuedAt and ExpiresAt bound the token's life.
	IssuedAt, ExpiresAt time.Time
}

// Actor is one link of the act chain (RFC 8693 §4.1).
type Actor struct {
	Sub      string `json:"sub"`
	ClientID string `json:"client_id,omitempty"`
}

// HasScope reports whether the token grants scope s.
func (p *Principal) HasScope(s string) bool {
	for _, v := range p.Scopes {
		if v == s {
			return true
		}
	}
	return false
}

type principalKey struct{}

// FromContext returns the Principal the middleware verified for this request.
func FromContext(ctx context.Context) (*Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(*Principal)
	return p, ok && p != nil
}

// WithPrincipal returns ctx carrying p. Middleware uses it; tests of handlers may too.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// wireClaims are the RFC 9068 claims Mandate puts in an access token (SPEC §5), and the
// members of an introspection answer (RFC 7662), which use the same names.
type wireClaims struct {
	Active         *bool       `json:"active,omitempty"` // introspection only
	Issuer         string      `json:"iss"`
	Subject        string      `json:"sub"`
	Audience       audience    `json:"aud"`
	ExpiresAt      json.Number `json:"exp"`
	IssuedAt       json.Number `json:"iat"`
	NotBefore      json.Number `json:"nbf"`
	JTI            string      `json:"jti"`
	ClientID       string      `json:"client_id"`
	Scope          string      `json:"scope"`
	Tenant         string      `json:"tenant"`
	DelegationMode string      `json:"delegation_mode"`
	ActorType      string      `json:"actor_type"`
	ActorSub       string      `json:"actor_sub"`
	AgentID        string      `json:"agent_id"`
	TraceID        string      `json:"trace_id"`
	SessionID      string      `json:"session_id"`
	GrantID        string      `json:"grant_id"`
	Act            *act        `json:"act"`
}

type act struct {
	Sub      string `json:"sub"`
	ClientID string `json:"client_id"`
	Act      *act   `json:"act"`
}

// maxActDepth bounds the act chain a token may carry; Mandate's own default is 4.
const maxActDepth = 16

// audience is aud: one string, or an array (accepted for the generality of RFC 7519;
// Mandate always sends one string).
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = l
	return nil
}

func numericDate(n json.Number) (time.Time, bool, error) {
	if n == "" {
		return time.Time{}, false, nil
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f > 1<<37 {
		return time.Time{}, false, errors.New("bad NumericDate")
	}
	return time.Unix(int64(f), 0), true, nil
}

// principal checks the registered claims (iss, aud, exp, iat, nbf) with leeway and turns
// the rest into a Principal.
func (v *Verifier) principal(c *wireClaims) (*Principal, error) {
	now := v.cfg.Now()
	if c.Issuer != v.cfg.Issuer {
		return nil, errors.New("wrong issuer")
	}
	found := false
	for _, a := range c.Audience {
		if a == v.cfg.Audience {
			found = true
		}
	}
	if !found {
		return nil, errors.New("token is for another audience")
	}
	exp, ok, err := numericDate(c.ExpiresAt)
	if err != nil || !ok {
		return nil, errors.New("exp missing or malformed")
	}
	if !now.Before(exp.Add(v.cfg.Leeway)) {
		return nil, errors.New("token expired")
	}
	iat, ok, err := numericDate(c.IssuedAt)
	if err != nil || (!ok && c.Active == nil) {
		return nil, errors.New("iat missing or malformed")
	}
	if ok && iat.After(now.Add(v.cfg.Leeway)) {
		return nil, errors.New("token issued in the future")
	}
	if nbf, ok, err := numericDate(c.NotBefore); err != nil || (ok && nbf.After(now.Add(v.cfg.Leeway))) {
		return nil, errors.New("token not yet valid")
	}
	if c.Subject == "" {
		return nil, errors.New("sub missing")
	}
	p := &Principal{
		ActorType: c.ActorType, Subject: c.Subject, Tenant: c.Tenant, Mode: c.DelegationMode,
		Agent: Actor{Sub: c.AgentID, ClientID: c.ClientID}, ClientID: c.ClientID,
		Scopes: strings.Fields(c.Scope), TraceID: c.TraceID, SessionID: c.SessionID, GrantID: c.GrantID,
		Audience: v.cfg.Audience, JTI: c.JTI, IssuedAt: iat, ExpiresAt: exp,
	}
	// Fail closed on anything that would make the principal a guess (sdk-contract §2):
	// every token Mandate issues to a downstream API comes from a token exchange and says
	// which kind of actor it is for.
	switch c.ActorType {
	case "":
		return nil, errors.New("token has no actor_type")
	case ActorService:
		if c.DelegationMode != modeServiceIdentity || c.ActorSub == "" {
			return nil, errors.New("a service actor needs service_identity mode and actor_sub")
		}
		p.Service = c.ActorSub
	case ActorUser:
		switch {
		case c.ActorSub != "":
			p.User = c.ActorSub
		case c.DelegationMode == modeServiceIdentity:
			return nil, errors.New("a user actor in service_identity mode needs actor_sub")
		default:
			p.User = c.Subject
		}
	default:
		return nil, errors.New("unknown actor_type")
	}
	for a, n := c.Act, 0; a != nil; a, n = a.Act, n+1 {
		if n == maxActDepth {
			return nil, errors.New("act chain too deep")
		}
		if n == 0 {
			p.Agent = Actor{Sub: a.Sub, ClientID: a.ClientID}
			continue
		}
		p.PriorActors = append(p.PriorActors, Actor{Sub: a.Sub, ClientID: a.ClientID})
	}
	return p, nil
}

const modeServiceIdentity = "service_identity"

// tokenTypeOK accepts the RFC 9068 typ, case-insensitively, with or without the
// "application/" prefix (RFC 7515 §4.1.9).
func tokenTypeOK(typ string) bool {
	t := strings.ToLower(typ)
	return t == "at+jwt" || t == "application/at+jwt"
}

// Verify checks a Mandate access token offline: signature with a key from the JWKS, typ
// at+jwt, alg in the allow-list, issuer, audience, exp/iat/nbf with leeway. The error
// says which check failed, never what the token held.
func (v *Verifier) Verify(ctx context.Context, token string) (*Principal, error) {
	payload, err := v.jwks.Verify(ctx, token, VerifyOptions{Algorithms: v.cfg.Algorithms, Type: tokenTypeOK})
	if err != nil {
		return nil, err
	}
	var c wireClaims
	if err := decodeJSON(payload, &c); err != nil {
		return nil, errors.New("malformed claims")
	}
	c.Active = nil // a JWT cannot claim to be an introspection answer
	return v.principal(&c)
}

// String keeps a Verifier's configuration (which holds an introspection secret) out of
// logs.
func (v *Verifier) String() string {
	return fmt.Sprintf("downstream.Verifier{issuer=%q audience=%q}", v.cfg.Issuer, v.cfg.Audience)
}
