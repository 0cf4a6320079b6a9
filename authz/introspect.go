package authz

import (
	"net/http"

	"github.com/mandatehq/mandate/envelope"
)

// introspection is an RFC 7662 §2.2 answer. Inactive tokens get {"active": false} only.
type introspection struct {
	Active         bool          `json:"active"`
	Scope          string        `json:"scope,omitempty"`
	ClientID       string        `json:"client_id,omitempty"`
	TokenType      string        `json:"token_type,omitempty"`
	Exp            int64         `json:"exp,omitempty"`
	Iat            int64         `json:"iat,omitempty"`
	Sub            string        `json:"sub,omitempty"`
	Aud            string        `json:"aud,omitempty"`
	Iss            string        `json:"iss,omitempty"`
	JTI            string        `json:"jti,omitempty"`
	Act            *envelope.Act `json:"act,omitempty"`
	DelegationMode string        `json:"delegation_mode,omitempty"`
	GrantID        string        `json:"grant_id,omitempty"`
	TraceID        string        `json:"trace_id,omitempty"`
	SessionID      string        `json:"session_id,omitempty"`
	Tenant         string        `json:"tenant,omitempty"`
	ActorType      string        `json:"actor_type,omitempty"`
	ActorSub       string        `json:"actor_sub,omitempty"`
	AgentID        string        `json:"agent_id,omitempty"`
}

// handleIntrospect is RFC 7662. Any registered, enabled client may introspect (downstream
// APIs register as clients for this); the answer depends only on the token.
func (s *Server) handleIntrospect() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, st, ok := s.tokenRequest(w, r, "")
		if !ok {
			return
		}
		if !st.active {
			writeJSON(w, http.StatusOK, introspection{Active: false})
			return
		}
		c := st.claims
		writeJSON(w, http.StatusOK, introspection{
			Active: true, Scope: c.Scope, ClientID: c.ClientID, TokenType: "Bearer",
			Exp: c.ExpiresAt, Iat: c.IssuedAt, Sub: c.Subject, Aud: c.Audience, Iss: c.Issuer, JTI: c.JTI,
			Act: c.Act, DelegationMode: c.DelegationMode, GrantID: c.GrantID, TraceID: c.TraceID,
			SessionID: c.SessionID, Tenant: c.Tenant, ActorType: c.ActorType, ActorSub: c.ActorSub, AgentID: c.AgentID,
		})
	})
}
