package authz

import (
	"fmt"
	"net/http"

	"github.com/mandatehq/mandate/storage"
)

// EventRevoke is the audit event of a token revocation.
const EventRevoke = "revoke"

// handleRevoke is RFC 7009. Only the client a token was issued to may revoke it; a token
// Mandate does not know (or cannot verify) is answered 200 like a revoked one (§2.2), so the
// endpoint tells nothing about tokens to those who do not hold them.
func (s *Server) handleRevoke() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clientID, st, ok := s.tokenRequest(w, r, EventRevoke)
		if !ok {
			return
		}
		if st.record == nil || !st.record.RevokedAt.IsZero() {
			revoked(w)
			return
		}
		if st.record.ClientID != clientID {
			// Audited with what identifies the token, but none of its owner's user context:
			// the refused client is not the one acting for that user.
			err := unauthorizedClient("the token was not issued to this client")
			s.auditDenial(r, EventRevoke, clientID, err, &storage.AuditRecord{
				Reason: ReasonNotTokenOwner, Audience: st.record.Audience,
				TokenJTI: st.record.JTI, GrantID: st.record.GrantID,
			})
			writeError(w, r, s.log, err)
			return
		}
		now := s.now()
		rec := &storage.AuditRecord{
			ID: storage.NewID("evt"), Time: now, Event: EventRevoke, Outcome: storage.OutcomeGranted,
			Reason: "revoked", ClientID: clientID, Audience: st.record.Audience, TokenJTI: st.record.JTI,
			GrantID: st.record.GrantID, RemoteAddr: hostOf(r.RemoteAddr),
		}
		if c := st.claims; c != nil {
			rec.ActorType, rec.ActorSub, rec.AgentID, rec.Tenant = c.ActorType, c.ActorSub, c.AgentID, c.Tenant
			rec.DelegationMode, rec.TraceID, rec.SessionID = c.DelegationMode, c.TraceID, c.SessionID
		}
		// The revocation and its audit record commit together, like an issuance.
		ctx := r.Context()
		err := s.store.InTx(ctx, func(tx storage.Store) error {
			if err := tx.RevokeToken(ctx, st.record.JTI, storage.IssuedAt(st.record.IssuedAt), now); err != nil {
				return err
			}
			return tx.AppendAudit(ctx, rec)
		})
		if err != nil {
			writeError(w, r, s.log, fmt.Errorf("%w: %w", errUnavailable, err))
			return
		}
		revoked(w)
	})
}

// revoked is RFC 7009 §2.2's answer: 200 with an empty body.
func revoked(w http.ResponseWriter) {
	noStore(w.Header())
	w.WriteHeader(http.StatusOK)
}
