package exchange

import "github.com/mandatehq/mandate/envelope"

// Token types (RFC 8693 §3) a client may ask for; both name the same JWT access token.
const (
	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
)

// Grant types a client registers in storage.Client.GrantTypes.
const (
	GrantTypeTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	GrantTypeClientCredentials = "client_credentials"
)

// Audit events written by this package.
const (
	EventTokenExchange     = "token_exchange"
	EventClientCredentials = "client_credentials"
)

// TypAccessToken is the JOSE typ of every token Mandate issues (RFC 9068 §2.1).
const TypAccessToken = "at+jwt"

// TokenClaims is the payload of a token Mandate issues (SPEC §5). authz decodes it again for
// introspection and admin bearer authentication.
type TokenClaims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Audience  string `json:"aud"` // always exactly one audience
	ExpiresAt int64  `json:"exp"`
	IssuedAt  int64  `json:"iat"`
	JTI       string `json:"jti"`
	ClientID  string `json:"client_id"`
	Scope     string `json:"scope"`

	Tenant         string        `json:"tenant,omitempty"`
	DelegationMode string        `json:"delegation_mode,omitempty"`
	ActorSub       string        `json:"actor_sub,omitempty"`
	AgentID        string        `json:"agent_id,omitempty"`
	TraceID        string        `json:"trace_id,omitempty"`
	SessionID      string        `json:"session_id,omitempty"`
	GrantID        string        `json:"grant_id,omitempty"`
	Act            *envelope.Act `json:"act,omitempty"`
}
