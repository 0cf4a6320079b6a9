package exchange

import (
	"strconv"
	"unicode/utf8"

	"github.com/mandatehq/mandate/envelope"
)

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

	Tenant         string `json:"tenant,omitempty"`
	DelegationMode string `json:"delegation_mode,omitempty"`
	// ActorType is user or service (SPEC §5): a downstream API must never read a service
	// actor's actor_sub as a user. Absent from client_credentials tokens, which have no actor.
	ActorType string        `json:"actor_type,omitempty"`
	ActorSub  string        `json:"actor_sub,omitempty"`
	AgentID   string        `json:"agent_id,omitempty"`
	TraceID   string        `json:"trace_id,omitempty"`
	SessionID string        `json:"session_id,omitempty"`
	GrantID   string        `json:"grant_id,omitempty"`
	Act       *envelope.Act `json:"act,omitempty"`
}

// AppendJSON appends c as json.Marshal would encode it (same members, order, omissions and
// escaping, HTML characters included), without reflection: the token endpoint encodes claims
// on every request. TestTokenClaimsJSON holds it to json.Marshal.
func (c *TokenClaims) AppendJSON(b []byte) []byte {
	b = append(b, `{"iss":`...)
	b = AppendJSONString(b, c.Issuer)
	b = append(b, `,"sub":`...)
	b = AppendJSONString(b, c.Subject)
	b = append(b, `,"aud":`...)
	b = AppendJSONString(b, c.Audience)
	b = append(b, `,"exp":`...)
	b = strconv.AppendInt(b, c.ExpiresAt, 10)
	b = append(b, `,"iat":`...)
	b = strconv.AppendInt(b, c.IssuedAt, 10)
	b = append(b, `,"jti":`...)
	b = AppendJSONString(b, c.JTI)
	b = append(b, `,"client_id":`...)
	b = AppendJSONString(b, c.ClientID)
	b = append(b, `,"scope":`...)
	b = AppendJSONString(b, c.Scope)
	for _, m := range [...]struct{ name, v string }{
		{`,"tenant":`, c.Tenant}, {`,"delegation_mode":`, c.DelegationMode},
		{`,"actor_type":`, c.ActorType}, {`,"actor_sub":`, c.ActorSub},
		{`,"agent_id":`, c.AgentID}, {`,"trace_id":`, c.TraceID}, {`,"session_id":`, c.SessionID},
		{`,"grant_id":`, c.GrantID},
	} {
		if m.v != "" {
			b = append(b, m.name...)
			b = AppendJSONString(b, m.v)
		}
	}
	if c.Act != nil {
		b = append(b, `,"act":`...)
		b = appendAct(b, c.Act)
	}
	return append(b, '}')
}

func appendAct(b []byte, a *envelope.Act) []byte {
	b = append(b, `{"sub":`...)
	b = AppendJSONString(b, a.Sub)
	if a.ClientID != "" {
		b = append(b, `,"client_id":`...)
		b = AppendJSONString(b, a.ClientID)
	}
	if a.Act != nil {
		b = append(b, `,"act":`...)
		b = appendAct(b, a.Act)
	}
	return append(b, '}')
}

// AppendJSONString appends s as a JSON string exactly as encoding/json writes it with HTML
// escaping on (its default): <, > and & as \u00XX, U+2028 and U+2029 escaped, invalid UTF-8
// as \ufffd.
func AppendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
