package authz

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/throttle"
)

// EventClientAuthFailed is the event of the aggregated audit records of requests refused
// before their client was authenticated (SPEC §8). Such a request is nobody's, so it gets
// no record of its own: they are counted per remote address and window, whatever endpoint
// and grant type they tried, and never recorded under the client id they claimed.
const EventClientAuthFailed = "client_authentication_failed"

// Endpoint names, for metrics and the aggregated records.
const (
	endpointToken      = "token"
	endpointIntrospect = "introspect"
	endpointRevoke     = "revoke"
	// The grant request endpoints (SPEC §11), creating and polling alike.
	endpointGrantRequests = "grant_requests"
)

// Samples of claimed client ids are clipped to this many bytes: enough to recognise one.
const maxSampleBytes = 64

// auditRefusal records a token endpoint refusal of an authenticated client that exchange did
// not record itself (grant type, parameter shape), so every denied attempt is in the audit
// log (SPEC §8). Requests without a known grant_type are not token events and are only
// logged.
func (s *Server) auditRefusal(r *http.Request, form url.Values, clientID string, err error) {
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
	s.auditDenial(r, event, clientID, err, nil)
}

// auditDenial records a refusal of event for the authenticated client clientID. rec, when
// not nil, carries what is known about the refused request (its reason included); otherwise
// the reason follows from err.
func (s *Server) auditDenial(r *http.Request, event, clientID string, err error, rec *storage.AuditRecord) {
	status, wire := toWire(err)
	if errors.Is(err, errUnavailable) || status >= 500 {
		return // the store is what failed; the log has it
	}
	if rec == nil {
		rec = &storage.AuditRecord{Reason: wire.Reason} // the reason the client was told
	}
	rec.ClientID = clientID
	rec.ID, rec.Time, rec.Event, rec.Outcome = storage.NewID("evt"), s.now(), event, storage.OutcomeDenied
	rec.RemoteAddr = hostOf(r.RemoteAddr)
	if aerr := s.store.AppendAudit(r.Context(), rec); aerr != nil {
		s.log.ErrorContext(r.Context(), "audit write failed", "event", event, "reason", rec.Reason, "err", aerr)
	}
}

// refuseUnauthenticated accounts for a request refused before its client was authenticated:
// counted (metrics; the address's aggregate and throttle), not recorded on its own.
func (s *Server) refuseUnauthenticated(att *throttle.Attempt, r *http.Request, endpoint string, form url.Values, err error) {
	status, wire := toWire(err)
	if errors.Is(err, errUnavailable) || status >= 500 {
		return // a fault of ours, not the caller's
	}
	s.onUnauthenticated(endpoint, wire.Reason)
	att.Fail(endpoint, wire.Reason, exchange.AuditText(claimedClientID(r, form), maxSampleBytes))
}

// admit lets a request in unless its address is throttled, which it answers 429. The
// attempt it returns must end with Fail (refuseUnauthenticated) or Done.
func (s *Server) admit(w http.ResponseWriter, r *http.Request, endpoint string) (throttle.Attempt, bool) {
	att, ok, retry := s.failures.Allow(throttle.Key(hostOf(r.RemoteAddr)))
	if ok {
		return att, true
	}
	s.onUnauthenticated(endpoint, ReasonRateLimited)
	writeError(w, r, s.log, &oauthError{code: "temporarily_unavailable", reason: ReasonRateLimited,
		description: "too many failed client authentications from this address; retry later",
		status:      http.StatusTooManyRequests, retryAfter: retry})
	return att, false
}

// claimedClientID is the client id a request claimed, unverified: Basic's user, else the
// client_id parameter.
func claimedClientID(r *http.Request, form url.Values) string {
	if id, _, ok := r.BasicAuth(); ok {
		if dec, err := url.QueryUnescape(id); err == nil {
			return dec
		}
		return id
	}
	return form.Get("client_id")
}

// authFailureDetail is the detail of an aggregated record.
type authFailureDetail struct {
	Failures        int            `json:"count"`
	Throttled       int            `json:"throttled"`
	WindowStart     time.Time      `json:"window_start"`
	WindowEnd       time.Time      `json:"window_end"`
	Reasons         map[string]int `json:"reasons,omitempty"`
	Endpoints       map[string]int `json:"endpoints,omitempty"`
	SampleClientIDs []string       `json:"sample_client_ids"`
	// Addresses, on the record of addresses forgotten while the tracker was full.
	Addresses int `json:"addresses,omitempty"`
}

// RecordAuthFailures writes one audit record per remote address whose window of failed
// client authentications has closed, or of every open window when final (at shutdown).
// Nothing is attributed to a client: the ids claimed are a sample in the detail.
func (s *Server) RecordAuthFailures(ctx context.Context, final bool) error {
	var errs []error
	for _, a := range s.failures.Due(final) {
		detail, err := json.Marshal(authFailureDetail{
			Failures: a.Failures, Throttled: a.Throttled, WindowStart: a.Start.UTC(), WindowEnd: a.End.UTC(),
			Reasons: a.Reasons, Endpoints: a.Endpoints, SampleClientIDs: orNone(a.SampleClientIDs),
			Addresses: a.Addresses,
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = s.store.AppendAudit(ctx, &storage.AuditRecord{
			ID: storage.NewID("evt"), Time: a.End, Event: EventClientAuthFailed, Outcome: storage.OutcomeDenied,
			Reason: ReasonClientAuthFailed, RemoteAddr: a.Addr, Detail: detail,
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RunAuthFailureLog calls RecordAuthFailures every interval until ctx ends, then once more
// for every open window.
func (s *Server) RunAuthFailureLog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := s.RecordAuthFailures(fctx, true); err != nil {
				s.log.Error("recording failed client authentications", "err", err)
			}
			return
		case <-t.C:
			if err := s.RecordAuthFailures(ctx, false); err != nil && ctx.Err() == nil {
				s.log.Error("recording failed client authentications", "err", err)
			}
		}
	}
}

func orNone(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
