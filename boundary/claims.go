package boundary

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mandatehq/mandate/envelope"
)

// ClaimMapping says which inbound claims become which identity members. A name may be a
// dotted path into nested objects ("ext.tenant_id"). Empty names take the defaults.
type ClaimMapping struct {
	// Subject is the user id; default "sub".
	Subject string
	// Tenant is the user's tenant; default "tenant".
	Tenant string
	// DefaultTenant is used when the token has no tenant claim. When both are empty the
	// token is refused: an identity without a tenant cannot be authorized.
	DefaultTenant string
	// Scopes holds the granted scopes, as a space-separated string (RFC 9068 "scope") or
	// an array ("scp"); default "scope".
	Scopes string
	// Session is the session id claim; default "sid". When absent the Mcp-Session-Id
	// header, or a generated id, is used.
	Session string
	// AgentID, when set, names the claim identifying the agent (for example "azp" or
	// "client_id": the MCP client the user authorized). Config.AgentID is the fallback.
	AgentID string
}

func (m ClaimMapping) withDefaults() ClaimMapping {
	if m.Subject == "" {
		m.Subject = "sub"
	}
	if m.Tenant == "" {
		m.Tenant = "tenant"
	}
	if m.Scopes == "" {
		m.Scopes = "scope"
	}
	if m.Session == "" {
		m.Session = "sid"
	}
	return m
}

// lookup finds a dotted path in the claims.
func lookup(claims map[string]any, path string) (any, bool) {
	var cur any = claims
	for _, part := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// stringClaim returns a string claim; numbers are accepted for ids (some IdPs send
// numeric user ids), anything else is an error.
func stringClaim(claims map[string]any, path string) (string, bool, error) {
	v, ok := lookup(claims, path)
	if !ok || v == nil {
		return "", false, nil
	}
	switch t := v.(type) {
	case string:
		return t, t != "", nil
	case json.Number:
		return t.String(), true, nil
	}
	return "", false, fmt.Errorf("claim %s is not a string", path)
}

// identity maps the claims onto a fresh Identity (actor, agent id, session id, scopes).
func (m ClaimMapping) identity(claims map[string]any) (*Identity, error) {
	sub, ok, err := stringClaim(claims, m.Subject)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("claim %s (the user) missing", m.Subject)
	}
	tenant, ok, err := stringClaim(claims, m.Tenant)
	if err != nil {
		return nil, err
	}
	if !ok {
		if m.DefaultTenant == "" {
			return nil, fmt.Errorf("claim %s (the tenant) missing", m.Tenant)
		}
		tenant = m.DefaultTenant
	}
	id := &Identity{Actor: envelope.Actor{Type: envelope.ActorUser, Sub: sub, Tenant: tenant}}
	if id.Session.ID, _, err = stringClaim(claims, m.Session); err != nil {
		return nil, err
	}
	if m.AgentID != "" {
		if id.Agent.ID, _, err = stringClaim(claims, m.AgentID); err != nil {
			return nil, err
		}
	}
	if v, ok := lookup(claims, m.Scopes); ok && v != nil {
		switch t := v.(type) {
		case string:
			id.Scopes = strings.Fields(t)
		case []any:
			for _, e := range t {
				s, ok := e.(string)
				if !ok {
					return nil, fmt.Errorf("claim %s holds a non-string scope", m.Scopes)
				}
				id.Scopes = append(id.Scopes, s)
			}
		default:
			return nil, fmt.Errorf("claim %s is neither a string nor an array", m.Scopes)
		}
	}
	return id, nil
}

func decodeClaims(payload []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil || claims == nil || dec.More() {
		return nil, errors.New("malformed claims")
	}
	return claims, nil
}

func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || f < 0 || f > 1<<37 {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

// checkRegistered checks iss (exact), aud (string or array containing audience), exp
// (required), iat and nbf (when present) with leeway.
func checkRegistered(claims map[string]any, issuer, audience string, now time.Time, leeway time.Duration) error {
	if iss, _ := claims["iss"].(string); iss != issuer {
		return errors.New("wrong issuer")
	}
	audOK := false
	switch a := claims["aud"].(type) {
	case string:
		audOK = a == audience
	case []any:
		for _, e := range a {
			if s, _ := e.(string); s == audience {
				audOK = true
			}
		}
	}
	if !audOK {
		return errors.New("token is not for this MCP server (audience)")
	}
	exp, ok := numericDate(claims["exp"])
	if !ok {
		return errors.New("exp missing or malformed")
	}
	if !now.Before(exp.Add(leeway)) {
		return errors.New("token expired")
	}
	if v, present := claims["iat"]; present {
		iat, ok := numericDate(v)
		if !ok || iat.After(now.Add(leeway)) {
			return errors.New("iat malformed or in the future")
		}
	}
	if v, present := claims["nbf"]; present {
		nbf, ok := numericDate(v)
		if !ok || nbf.After(now.Add(leeway)) {
			return errors.New("token not yet valid")
		}
	}
	return nil
}
