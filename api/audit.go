package api

import (
	"context"
	"encoding/json"

	"github.com/mandatehq/mandate/storage"
)

func (s *server) ListAudit(ctx context.Context, req ListAuditRequestObject) (ListAuditResponseObject, error) {
	p := req.Params
	f := storage.AuditFilter{
		Event:    deref(p.Event),
		Outcome:  string(deref(p.Outcome)),
		ClientID: deref(p.ClientID),
		ActorSub: deref(p.ActorSub),
		AgentID:  deref(p.AgentID),
		Tenant:   deref(p.Tenant),
		Audience: deref(p.Audience),
		TraceID:  deref(p.TraceID),
		Page:     page(p.Cursor, p.Limit),
	}
	if p.Since != nil {
		f.Since = p.Since.UTC()
	}
	if p.Until != nil {
		f.Until = p.Until.UTC()
	}
	items, next, err := s.store.ListAudit(ctx, f)
	if err != nil {
		return nil, err
	}
	out := ListAudit200JSONResponse{Items: make([]AuditRecord, 0, len(items)), NextCursor: nextCursor(next)}
	for i := range items {
		out.Items = append(out.Items, auditOut(&items[i]))
	}
	return out, nil
}

func auditOut(r *storage.AuditRecord) AuditRecord {
	out := AuditRecord{
		ID:             r.ID,
		Time:           r.Time.UTC(),
		Event:          r.Event,
		Outcome:        Outcome(r.Outcome),
		Reason:         ptrIf(r.Reason),
		ClientID:       ptrIf(r.ClientID),
		AgentID:        ptrIf(r.AgentID),
		ActorType:      ptrIf(r.ActorType),
		ActorSub:       ptrIf(r.ActorSub),
		Tenant:         ptrIf(r.Tenant),
		DelegationMode: ptrIf(r.DelegationMode),
		TraceID:        ptrIf(r.TraceID),
		SessionID:      ptrIf(r.SessionID),
		Audience:       ptrIf(r.Audience),
		EnvelopeJti:    ptrIf(r.EnvelopeJTI),
		TokenJti:       ptrIf(r.TokenJTI),
		GrantID:        ptrIf(r.GrantID),
		RemoteAddr:     ptrIf(r.RemoteAddr),
	}
	if len(r.RequestedScopes) > 0 {
		out.RequestedScopes = &r.RequestedScopes
	}
	if len(r.GrantedScopes) > 0 {
		out.GrantedScopes = &r.GrantedScopes
	}
	if len(r.Detail) > 0 {
		var d map[string]any
		if json.Unmarshal(r.Detail, &d) == nil {
			out.Detail = &d
		}
	}
	return out
}
