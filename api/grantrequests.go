package api

import (
	"context"
	"errors"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// GrantRequestDecider decides grant requests (package exchange's Service): the admin's half
// of SPEC §11's access-request workflow. The grant, its consent record, the request's
// decision and the audit record commit together there.
type GrantRequestDecider interface {
	Decide(ctx context.Context, d exchange.Decision) (*storage.GrantRequest, *storage.Grant, error)
}

var (
	errNoDecider = &apiError{status: 500, typ: problemInternal, title: "Internal server error",
		detail: "grant requests cannot be decided on this server"}
	errDecided = &apiError{status: 409, typ: problemConflict, title: "Conflict", detail: "the grant request was already decided"}
	errExpired = &apiError{status: 409, typ: problemConflict, title: "Conflict", detail: "the grant request has expired"}
)

func (s *server) ListGrantRequests(ctx context.Context, req ListGrantRequestsRequestObject) (ListGrantRequestsResponseObject, error) {
	p := req.Params
	now := s.now()
	items, next, err := s.store.ListGrantRequests(ctx, storage.GrantRequestFilter{
		ClientID: string(deref(p.ClientID)), Tenant: deref(p.Tenant), Subject: deref(p.Subject),
		Status: string(deref(p.Status)), Now: now, Page: page(p.Cursor, p.Limit),
	})
	if err != nil {
		return nil, err
	}
	out := ListGrantRequests200JSONResponse{Items: make([]GrantRequest, 0, len(items)), NextCursor: nextCursor(next)}
	for i := range items {
		out.Items = append(out.Items, grantRequestOut(&items[i], now))
	}
	return out, nil
}

func (s *server) GetGrantRequest(ctx context.Context, req GetGrantRequestRequestObject) (GetGrantRequestResponseObject, error) {
	r, err := s.store.GetGrantRequest(ctx, req.GrantRequestID)
	if err != nil {
		return nil, withDetail(err, "no such grant request")
	}
	return GetGrantRequest200JSONResponse(grantRequestOut(r, s.now())), nil
}

func (s *server) ApproveGrantRequest(ctx context.Context, req ApproveGrantRequestRequestObject) (ApproveGrantRequestResponseObject, error) {
	r, g, err := s.decide(ctx, req.GrantRequestID, true)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := ApproveGrantRequest200JSONResponse{Request: grantRequestOut(r, now)}
	if g != nil {
		consents, err := s.store.GetConsents(ctx, []string{g.ID})
		if err != nil {
			return nil, err
		}
		grant := grantOut(g, now, consentOf(consents, g.ID))
		out.Grant = &grant
	}
	return out, nil
}

func (s *server) DenyGrantRequest(ctx context.Context, req DenyGrantRequestRequestObject) (DenyGrantRequestResponseObject, error) {
	r, _, err := s.decide(ctx, req.GrantRequestID, false)
	if err != nil {
		return nil, err
	}
	return DenyGrantRequest200JSONResponse{Request: grantRequestOut(r, s.now())}, nil
}

// decide hands an admin's decision to the decider and maps its refusals to problems.
func (s *server) decide(ctx context.Context, id string, approve bool) (*storage.GrantRequest, *storage.Grant, error) {
	if s.decider == nil {
		return nil, nil, errNoDecider
	}
	r, g, err := s.decider.Decide(ctx, exchange.Decision{
		RequestID: id, Approve: approve, AdminClientID: principalFrom(ctx).ClientID, RemoteAddr: remoteAddrFrom(ctx),
	})
	if e := exchange.AsError(err); e != nil {
		switch e.Reason {
		case exchange.ReasonGrantRequestNotFound:
			return nil, nil, withDetail(storage.ErrNotFound, "no such grant request")
		case exchange.ReasonGrantRequestDecided:
			return nil, nil, errDecided
		case exchange.ReasonGrantRequestExpired:
			return nil, nil, errExpired
		case exchange.ReasonGrantRequestChanged, exchange.ReasonAudienceAdminOnly:
			return nil, nil, &apiError{status: 409, typ: problemConflict, title: "Conflict", detail: e.Description}
		}
		return nil, nil, errors.Join(errors.New(e.Error()), err)
	}
	return r, g, err
}

func grantRequestOut(r *storage.GrantRequest, now time.Time) GrantRequest {
	return GrantRequest{
		ID: r.ID, ClientID: r.ClientID, Tenant: r.Tenant, Subject: r.Subject, AgentID: ptrIf(r.AgentID),
		Audiences: orEmpty(r.Audiences), Scopes: orEmpty(r.Scopes), Modes: modesOut(r.Modes),
		Duration: int(r.Duration / time.Second), Purpose: ptrIf(r.Purpose),
		Status: GrantRequestStatus(r.Status(now)), CreatedAt: r.CreatedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC(),
		DecidedAt: timeIf(r.DecidedAt), DecidedBy: ptrIf(r.DecidedBy), GrantID: ptrIf(r.GrantID),
	}
}

// consentOf finds grant id's record among records.
func consentOf(records []storage.ConsentRecord, id string) *storage.ConsentRecord {
	for i := range records {
		if records[i].GrantID == id {
			return &records[i]
		}
	}
	return nil
}

func consentOut(c *storage.ConsentRecord) *ConsentRecord {
	if c == nil {
		return nil
	}
	return &ConsentRecord{RequestID: c.RequestID, ApprovedBy: c.ApprovedBy, ApprovedAt: c.ApprovedAt.UTC(),
		RemoteAddr: ptrIf(c.RemoteAddr), Text: c.Text}
}
