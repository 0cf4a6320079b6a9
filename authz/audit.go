package authz

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// auditRefusal records a token endpoint refusal that exchange did not record itself (client
// authentication, grant type, parameter shape), so every denied attempt is in the audit log
// (SPEC §8). The client_id is the one claimed, clipped: unauthenticated input. Requests
// without a known grant_type are not token events and are only logged.
func (s *Server) auditRefusal(r *http.Request, form url.Values, err error) {
	if exchange.AsError(err) != nil {
		return // exchange audited it
	}
	var event string
	switch form.Get("grant_type") {
	case exchange.GrantTypeTokenExchange:
		event = exchange.EventTokenExchange
	case exchange.GrantTypeClientCredentials:
		event = exchange.EventClientCredentials
	default:
		return
	}
	s.auditDenial(r, event, form, err, nil)
}

// auditDenial records a refusal of event. rec, when not nil, carries what is known about the
// refused request (its reason included); otherwise the reason follows from err.
func (s *Server) auditDenial(r *http.Request, event string, form url.Values, err error, rec *storage.AuditRecord) {
	status, wire := toWire(err)
	if errors.Is(err, errUnavailable) || status >= 500 {
		return // the store is what failed; the log has it
	}
	if rec == nil {
		// The reason the client was told is the one recorded.
		reason := wire.Reason
		clientID := form.Get("client_id")
		if id, _, ok := r.BasicAuth(); ok {
			if dec, err := url.QueryUnescape(id); err == nil {
				clientID = dec
			}
		}
		rec = &storage.AuditRecord{Reason: reason, ClientID: exchange.AuditText(clientID, 256)}
	}
	rec.ID, rec.Time, rec.Event, rec.Outcome = storage.NewID("evt"), s.now(), event, storage.OutcomeDenied
	rec.RemoteAddr = hostOf(r.RemoteAddr)
	if aerr := s.store.AppendAudit(r.Context(), rec); aerr != nil {
		s.log.ErrorContext(r.Context(), "audit write failed", "event", event, "reason", rec.Reason, "err", aerr)
	}
}
