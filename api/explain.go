package api

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// Explainer answers what the token endpoint would decide on an exchange, changing nothing
// (package exchange's Service).
type Explainer interface {
	Explain(ctx context.Context, req exchange.ExplainRequest) (*exchange.Explanation, error)
}

// EventExplain is the audit event of an explain call.
const EventExplain = "admin.explain"

// readOnlyPosts are the calls other than GET that change nothing: a mandate:admin:read token
// may make them.
var readOnlyPosts = []string{BasePath + "/explain"}

func (s *server) ExplainExchange(ctx context.Context, req ExplainExchangeRequestObject) (ExplainExchangeResponseObject, error) {
	b := req.Body
	if b.SubjectToken != nil && b.Claims != nil {
		return nil, invalidField("claims", "give subject_token or claims, not both")
	}
	xr := exchange.ExplainRequest{ClientID: b.ClientID, SubjectToken: deref(b.SubjectToken),
		Audience: deref(b.Audience), Resource: deref(b.Resource)}
	if b.Claims != nil {
		xr.Claims = []byte(*b.Claims)
	}
	if b.Scope != nil {
		xr.Scopes = strings.Fields(*b.Scope)
	}
	if b.At != nil {
		xr.At = b.At.UTC()
	}
	x, err := s.explain.Explain(ctx, xr)
	if err != nil {
		return nil, err
	}
	// The record names the client, the target and the decision; never the subject token.
	rec := storage.AuditRecord{Audience: auditText(firstOf(x.Audience, xr.Audience, xr.Resource)), Reason: exchange.ReasonGranted}
	if x.Refusal != nil {
		rec.Reason = x.Refusal.Reason
	}
	if env := x.Envelope; env != nil {
		rec.Tenant, rec.ActorSub, rec.AgentID = auditText(env.Actor.Tenant), auditText(env.Actor.Sub), auditText(env.Agent.ID)
	}
	detail := map[string]any{"client_id": xr.ClientID, "decision": x.Decision, "reason": rec.Reason,
		"what_if": x.WhatIf, "at": x.At.UTC().Format(time.RFC3339Nano)}
	for k, v := range map[string]string{"audience": xr.Audience, "resource": xr.Resource, "grant_id": x.GrantID} {
		if v != "" {
			detail[k] = v
		}
	}
	if err := s.audit(ctx, s.store, EventExplain, rec, detail); err != nil {
		return nil, err
	}
	return ExplainExchange200JSONResponse(explanationOut(x)), nil
}

func explanationOut(x *exchange.Explanation) Explanation {
	out := Explanation{
		Decision: ExplanationDecision(x.Decision), Error: refusalOut(x.Refusal), At: x.At.UTC(),
		ClientID: x.ClientID, WhatIf: x.WhatIf, Audience: ptrIf(x.Audience), GrantID: ptrIf(x.GrantID),
		Steps: make([]ExplainStep, 0, len(x.Steps)), Grants: make([]ExplainGrant, 0, len(x.Grants)),
	}
	if x.Envelope != nil {
		out.Envelope = rawJSON(x.Envelope, "")
	}
	for _, st := range x.Steps {
		out.Steps = append(out.Steps, ExplainStep{Name: ExplainStepName(st.Name), Outcome: ExplainStepOutcome(st.Outcome),
			Detail: st.Detail, Error: refusalOut(st.Refusal)})
	}
	for i := range x.Grants {
		g := &x.Grants[i]
		eg := ExplainGrant{Grant: grantOut(&g.Grant, x.At, nil), InForce: g.InForce, Matched: g.Matched, Chosen: g.Chosen,
			Why: orEmpty(g.Why)}
		if g.Scopes != nil {
			eg.EffectiveScopes = &g.Scopes
		}
		out.Grants = append(out.Grants, eg)
	}
	if x.EffectiveScopes != nil {
		out.EffectiveScopes = &x.EffectiveScopes
	}
	if x.Scopes != nil {
		out.Scopes = &x.Scopes
	}
	if x.Decision == exchange.DecisionGranted {
		out.ExpiresIn = secondsIf(x.Lifetime)
		out.IssuedTokenType = ptrIf(x.IssuedTokenType)
		// The token's jti is made at issuance; an explanation has none to show.
		out.Claims = rawJSON(x.Claims, "jti")
	}
	return out
}

func refusalOut(e *exchange.Error) *ExplainRefusal {
	if e == nil {
		return nil
	}
	out := &ExplainRefusal{Error: e.Code, ErrorDescription: e.Description, Reason: e.Reason}
	if e.UserMayConsent {
		out.UserMayConsent = &e.UserMayConsent
	}
	return out
}

// rawJSON encodes v as a JSON object without member drop ("" for none).
func rawJSON(v any, drop string) *json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	if drop != "" {
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			return nil
		}
		delete(m, drop)
		if b, err = json.Marshal(m); err != nil {
			return nil
		}
	}
	raw := json.RawMessage(b)
	return &raw
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// auditText makes text from an envelope fit for an audit column.
func auditText(s string) string { return exchange.AuditText(s, 256) }
