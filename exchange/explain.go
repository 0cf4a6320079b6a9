package exchange

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// ExplainRequest is a token exchange as a client would present it, asked about by an admin
// (SPEC §12). Client authentication is not part of it: the admin names the client.
type ExplainRequest struct {
	ClientID string
	// SubjectToken is a signed envelope: its key, algorithm and signature are checked for
	// real. Or Claims are an envelope's claims (JSON), for "what if" questions: the signature
	// step is skipped and every other check runs on them.
	SubjectToken string
	Claims       []byte
	// Audience and Resource are the target (either or both, as at the token endpoint).
	Audience string
	Resource string
	// Scopes are the requested scopes; empty asks for the effective set.
	Scopes []string
	// At is the evaluation time, for the envelope's times and the grants' validity; zero
	// means now. Revocations are as stored now: a revoked grant is never in force.
	At time.Time
}

// Decisions and step outcomes of an Explanation.
const (
	DecisionGranted = "granted"
	DecisionRefused = "refused"

	OutcomePassed  = "passed"
	OutcomeRefused = "refused"
	OutcomeSkipped = "skipped"
)

// Explanation is what the token endpoint would decide on an ExplainRequest, and why.
type Explanation struct {
	Decision string // DecisionGranted or DecisionRefused
	// Refusal is what the token endpoint would answer (error, reason, description), when refused.
	Refusal *Error
	At      time.Time
	// WhatIf: claims were given, not a signed envelope.
	WhatIf   bool
	ClientID string
	// Audience is the audience the target resolved to ("" when it did not).
	Audience string
	// Envelope is what the envelope said, once its claims were read (nil before).
	Envelope *envelope.Claims
	// Steps are SPEC §4's, in order, each with its outcome.
	Steps []StepReport
	// Grants are every grant considered for a user actor: those in force for (tenant, subject
	// or "*", client, agent) at At, and those that name the tenant, subject and client but are
	// not (revoked, expired, not yet valid, pinned to another agent), each with why it was or
	// was not used.
	Grants []GrantReport
	// GrantID is the grant the token would be issued under ("" for none).
	GrantID string
	// EffectiveScopes are envelope ∩ grant ∩ audience ∩ client; Scopes those issued.
	EffectiveScopes []string
	Scopes          []string
	// Lifetime is the token's; IssuedTokenType its type.
	Lifetime        time.Duration
	IssuedTokenType string
	// Claims are those the token would carry: no jti (made at issuance), not signed.
	Claims *TokenClaims
	// Replayed: an issuance already used the envelope for this audience.
	Replayed bool
}

// StepReport is one step's outcome and what it saw.
type StepReport struct {
	Name    string
	Outcome string // OutcomePassed, OutcomeRefused or OutcomeSkipped
	Detail  string
	Refusal *Error // when refused
}

// GrantReport is one grant that was considered.
type GrantReport struct {
	Grant storage.Grant
	// InForce: not revoked, valid at At, and for this agent (or any).
	InForce bool
	// Matched: in force, covers the audience and mode, and yields the scopes.
	Matched bool
	// Chosen: the token would be issued under it.
	Chosen bool
	// Scopes are the effective scopes under it (when it covers audience and mode).
	Scopes []string
	// Why says, in plain words, why it was or was not used.
	Why []string
}

// Explain answers what Exchange would decide on req, running the same decision table, and
// changes nothing: no replay mark, no token, no audit record (the admin API audits the call).
//
// It reads clients, audiences and grants from the store rather than through the cache the
// token endpoint uses: the admin API drops this replica's cache on every change, so both see
// the same records here; another replica may answer from records up to the cache TTL old.
// Faults (storage down) are returned as errors, not explained as decisions.
func (s *Service) Explain(ctx context.Context, xr ExplainRequest) (*Explanation, error) {
	at := xr.At
	if at.IsZero() {
		at = s.now()
	}
	client, err := s.uncached.Client(ctx, xr.ClientID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	verifier := *s.verifier
	verifier.Now = func() time.Time { return at }
	req := Request{Client: client, SubjectToken: xr.SubjectToken, SubjectTokenType: envelope.TokenType,
		Scopes: xr.Scopes, ScopeGiven: len(xr.Scopes) > 0}
	if xr.Audience != "" {
		req.Audiences = []string{xr.Audience}
	}
	if xr.Resource != "" {
		req.Resources = []string{xr.Resource}
	}
	e := &evaluation{svc: s, catalog: s.uncached, verifier: &verifier, now: at, req: req, explaining: true}
	if xr.Claims != nil {
		e.unsigned = xr.Claims
		e.req.SubjectToken = ""
	}

	x := &Explanation{At: at, WhatIf: e.unsigned != nil, ClientID: xr.ClientID}
	refusedAt := ""
	for _, st := range decisionTable {
		r := StepReport{Name: st.name}
		switch {
		case refusedAt != "":
			r.Outcome, r.Detail = OutcomeSkipped, "not reached: the exchange is refused at step "+refusedAt
		case st.name == StepSignature && e.unsigned != nil:
			r.Outcome = OutcomeSkipped
			r.Detail = "not checked: claims were given instead of a signed envelope, so there is no header, key, " +
				"algorithm or signature to check (ask with subject_token to check them)"
			if _, err := s.keySets.For(client); err != nil {
				r.Detail += "; note that the client has no usable keys registered, so no envelope of it can verify " +
					"(the endpoint refuses every one: client_keys_invalid)"
			}
		default:
			err := st.check(e, ctx)
			if err != nil {
				xe := AsError(err)
				if xe == nil || xe.Code == CodeServerError || xe.Reason == ReasonStorageUnavailable {
					return nil, err
				}
				refusedAt, x.Refusal = st.name, xe
				r.Outcome, r.Refusal = OutcomeRefused, xe
			} else {
				r.Outcome = OutcomePassed
			}
			r.Detail = e.describe(st.name, err)
		}
		x.Steps = append(x.Steps, r)
	}

	x.Decision = DecisionGranted
	if x.Refusal != nil {
		x.Decision = DecisionRefused
	}
	if e.aud != nil {
		x.Audience = e.aud.ID
	}
	x.Envelope = e.env
	if x.Envelope == nil {
		x.Envelope = e.verified
	}
	if e.env != nil && !e.service && e.reached(x, StepGrant) {
		if x.Grants, err = e.explainGrants(ctx); err != nil {
			return nil, err
		}
	}
	if e.grant != nil {
		x.GrantID = e.grant.ID
	}
	x.EffectiveScopes = e.effectiveScopes()
	x.Scopes = e.scopes
	if x.Decision == DecisionGranted {
		x.Lifetime, x.IssuedTokenType, x.Claims = e.ttl, e.issuedType, e.explained
	}
	x.Replayed = e.replayed
	return x, nil
}

// reached reports whether the step ran (passed or refused).
func (e *evaluation) reached(x *Explanation, name string) bool {
	for _, r := range x.Steps {
		if r.Name == name {
			return r.Outcome != OutcomeSkipped
		}
	}
	return false
}

// effectiveScopes is envelope ∩ grant ∩ audience ∩ client for the grant the token would be
// issued under (or the service actor's), nil when there is none.
func (e *evaluation) effectiveScopes() []string {
	switch {
	case e.env == nil || e.aud == nil:
		return nil
	case e.service:
		return serviceScopes(e.env, e.aud, e.req.Client)
	case e.grant != nil:
		return grantScopes(e.grant, e.aud, e.env.Authorization.Scopes, e.req.Client.AllowedScopes)
	}
	return nil
}

// explainGrants reports the grants in force (e.grants, what the decision saw) with whether
// each covers the audience and mode and yields the scopes, and the grants for the same
// tenant, subject (or "*") and client that are not in force, with why not.
func (e *evaluation) explainGrants(ctx context.Context) ([]GrantReport, error) {
	env, c := e.env, e.req.Client
	var out []GrantReport
	inForce := map[string]bool{}
	for i := range e.grants {
		g := &e.grants[i]
		inForce[g.ID] = true
		out = append(out, e.grantInForce(g))
	}
	for _, subject := range []string{env.Actor.Sub, storage.AnySubject} {
		page := storage.Page{Limit: storage.MaxPageLimit}
		for {
			items, next, err := e.svc.store.ListGrants(ctx, storage.GrantFilter{
				Tenant: env.Actor.Tenant, Subject: subject, ClientID: c.ID, Now: e.now, Page: page,
			})
			if err != nil {
				return nil, err
			}
			for i := range items {
				if g := &items[i]; !inForce[g.ID] {
					out = append(out, GrantReport{Grant: *g, Why: notInForce(g, env.Agent.ID, e.now)})
				}
			}
			if next == "" {
				break
			}
			page.Cursor = next
		}
	}
	slices.SortStableFunc(out, func(a, b GrantReport) int { return cmp.Compare(a.Grant.ID, b.Grant.ID) })
	return out, nil
}

// grantInForce says why a grant in force was or was not used.
func (e *evaluation) grantInForce(g *storage.Grant) GrantReport {
	r := GrantReport{Grant: *g, InForce: true}
	if !slices.Contains(g.Audiences, e.aud.ID) {
		r.Why = append(r.Why, fmt.Sprintf("audience: %s is not among the grant's audiences %s", e.aud.ID, list(g.Audiences)))
	}
	if !modeListed(g.Modes, e.mode) {
		r.Why = append(r.Why, fmt.Sprintf("mode: %s is not among the grant's modes %s", e.mode, modes(g.Modes)))
	}
	if len(r.Why) > 0 {
		return r
	}
	r.Scopes = grantScopes(g, e.aud, e.env.Authorization.Scopes, e.req.Client.AllowedScopes)
	if _, err := pickScopes(r.Scopes, &e.req); err != nil {
		r.Why = append(r.Why, "scopes: "+scopeShortfall(r.Scopes, &e.req))
		return r
	}
	r.Matched = true
	switch chosen := e.grant; {
	case chosen == nil:
		r.Why = append(r.Why, "covers the audience and mode and yields scopes "+list(r.Scopes))
	case chosen.ID == g.ID:
		r.Chosen = true
		r.Why = append(r.Why, "chosen: covers the audience and mode and yields scopes "+list(e.scopes))
	case e.req.ScopeGiven:
		r.Why = append(r.Why, "matches too; with scopes requested the first matching grant by id is used: "+chosen.ID)
	default:
		r.Why = append(r.Why, "matches too; "+chosen.ID+" was preferred: the most scopes, then the latest expiry, then the first by id")
	}
	return r
}

// notInForce says why a grant for the tenant, subject and client is not in force at now.
func notInForce(g *storage.Grant, agent string, now time.Time) []string {
	var why []string
	if !g.RevokedAt.IsZero() {
		w := "revoked at " + stamp(g.RevokedAt)
		if g.RevokedBy != "" {
			w += " by " + g.RevokedBy
		}
		if g.RevokeReason != "" {
			w += ": " + g.RevokeReason
		}
		why = append(why, w)
	}
	if now.Before(g.NotBefore) {
		why = append(why, "not valid before "+stamp(g.NotBefore))
	}
	if !now.Before(g.ExpiresAt) {
		why = append(why, "expired at "+stamp(g.ExpiresAt))
	}
	if g.AgentID != "" && g.AgentID != agent {
		why = append(why, fmt.Sprintf("agent: only for agent %s, not %s", g.AgentID, agent))
	}
	if len(why) == 0 {
		// The store did not return it as in force, yet nothing here says why: it changed
		// between the two reads.
		why = append(why, "not in force when the decision read the grants (changed since)")
	}
	return why
}

// scopeShortfall says why scopes fail the request.
func scopeShortfall(effective []string, req *Request) string {
	if !req.ScopeGiven || len(req.Scopes) == 0 {
		return "no effective scope (envelope ∩ grant ∩ audience ∩ client is empty)"
	}
	var missing []string
	for _, s := range req.Scopes {
		if !slices.Contains(effective, s) && !slices.Contains(missing, s) {
			missing = append(missing, s)
		}
	}
	return fmt.Sprintf("requested %s not in the effective scopes %s", list(missing), list(effective))
}

// describe says what step name saw: the facts behind its outcome (the refusal itself is in
// the report's Refusal).
func (e *evaluation) describe(name string, err error) string {
	c := e.req.Client
	switch name {
	case StepClient:
		switch {
		case c == nil:
			return "no client is registered with this client_id: the token endpoint fails its authentication"
		case c.Disabled:
			return "client " + c.ID + " is disabled: the token endpoint fails its authentication"
		}
		return "client " + c.ID + " is registered and enabled (explain does not check credentials)"
	case StepGrantType:
		return "grant_types " + list(c.GrantTypes)
	case StepParameters:
		return e.describeParameters()
	case StepSignature:
		return describeJWS(e.req.SubjectToken, err)
	case StepEnvelope:
		return e.describeEnvelope(err)
	case StepTarget:
		return e.describeTarget()
	case StepMode:
		return fmt.Sprintf("mode %s; audience allowed_modes %s; client allowed_modes %s",
			e.mode, modes(e.aud.AllowedModes), orAny(c.AllowedModes))
	case StepGrant:
		d := e.describeGrant()
		if r := AsError(err); r != nil && r.UserMayConsent {
			d += "; audience " + e.aud.ID + " lets users grant access themselves, so the answer names the grant request endpoint"
		}
		return d
	case StepScopes:
		return e.describeScopes(err)
	case StepLifetime:
		return e.describeLifetime()
	case StepIssuance:
		return e.describeIssuance()
	}
	return ""
}

func (e *evaluation) describeParameters() string {
	var b strings.Builder
	if e.unsigned != nil {
		b.WriteString("claims given instead of subject_token (a what-if question)")
	} else {
		fmt.Fprintf(&b, "subject_token of %d bytes as %s", len(e.req.SubjectToken), e.req.SubjectTokenType)
	}
	for _, a := range e.req.Audiences {
		b.WriteString("; audience=" + a)
	}
	for _, r := range e.req.Resources {
		b.WriteString("; resource=" + r)
	}
	if e.req.ScopeGiven {
		b.WriteString("; scope=" + strings.Join(e.req.Scopes, " "))
	} else {
		b.WriteString("; no scope requested: the effective scopes are asked for")
	}
	return b.String()
}

// describeJWS names the envelope's header members, which the verifier does not return.
func describeJWS(token string, err error) string {
	var h struct{ Alg, Kid, Typ string }
	head, _, _ := strings.Cut(token, ".")
	raw, derr := base64.RawURLEncoding.DecodeString(head)
	if derr != nil || json.Unmarshal(raw, &h) != nil {
		return "the header could not be read"
	}
	if err != nil {
		return fmt.Sprintf("header alg=%q kid=%q typ=%q", h.Alg, h.Kid, h.Typ)
	}
	return fmt.Sprintf("signed with alg %s by key %q, one of the client's registered keys; the signature verifies", h.Alg, h.Kid)
}

func (e *evaluation) describeEnvelope(err error) string {
	env := e.verified
	if env == nil {
		if r := AsError(err); r != nil && r.Reason == "envelope_"+envelope.ReasonBadFormat {
			return "the claims could not be read"
		}
		return fmt.Sprintf("checked at %s", stamp(e.now))
	}
	c := e.req.Client
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s in tenant %s; agent %s; mode %s; scopes %s; delegation.allowed %s",
		env.Actor.Type, env.Actor.Sub, env.Actor.Tenant, env.Agent.ID, env.Delegation.Mode,
		list(env.Authorization.Scopes), orAny(env.Delegation.Allowed))
	fmt.Fprintf(&b, "; iat %s, exp %s, checked at %s", stamp(env.IssuedAt), stamp(env.ExpiresAt), stamp(e.now))
	fmt.Fprintf(&b, "; client allowed_tenants %s", orAny(c.AllowedTenants))
	if env.Act != nil {
		fmt.Fprintf(&b, "; act chain %d deep (at most %d with the agent)", env.Act.Depth(), e.svc.cfg.MaxActDepth)
	}
	return b.String()
}

func (e *evaluation) describeTarget() string {
	var b strings.Builder
	if e.aud != nil {
		fmt.Fprintf(&b, "audience %s", e.aud.ID)
	} else {
		b.WriteString("no single registered audience")
	}
	if e.env != nil {
		fmt.Fprintf(&b, "; envelope delegation.allowed %s", orAny(e.env.Delegation.Allowed))
		c := e.req.Client
		if e.service {
			fmt.Fprintf(&b, "; client allowed_audiences %s (for a service actor, the whole permission)", list(c.AllowedAudiences))
		} else {
			fmt.Fprintf(&b, "; client allowed_audiences %s", orAny(c.AllowedAudiences))
		}
	}
	return b.String()
}

func (e *evaluation) describeGrant() string {
	env, c := e.env, e.req.Client
	if e.service {
		return fmt.Sprintf("service actor %s in tenant %s; client service_actors %s, allowed_tenants %s; no grant is needed",
			env.Actor.Sub, env.Actor.Tenant, list(c.ServiceActors), list(c.AllowedTenants))
	}
	covering := 0
	for i := range e.grants {
		if covers(&e.grants[i], e.aud.ID, e.mode) {
			covering++
		}
	}
	return fmt.Sprintf("%d grant(s) in force at %s for tenant %s, subject %s or *, client %s, agent %s or any; %d cover audience %s in mode %s (see grants)",
		len(e.grants), stamp(e.now), env.Actor.Tenant, env.Actor.Sub, c.ID, env.Agent.ID, covering, e.aud.ID, e.mode)
}

func (e *evaluation) describeScopes(err error) string {
	env, c := e.env, e.req.Client
	requested := "none requested: all effective scopes are issued"
	if e.req.ScopeGiven {
		requested = "requested " + list(e.req.Scopes)
	}
	clientScopes := orAny(c.AllowedScopes)
	if e.service {
		clientScopes = list(c.AllowedScopes) + " (for a service actor, the whole permission)"
	}
	if e.service || e.grant != nil {
		grant := ""
		if e.grant != nil {
			grant = fmt.Sprintf(" ∩ grant %s %s", e.grant.ID, list(e.grant.Scopes))
		}
		out := fmt.Sprintf("envelope %s%s ∩ audience %s ∩ client %s = %s; %s",
			list(env.Authorization.Scopes), grant, list(e.aud.Scopes), clientScopes, list(e.effectiveScopes()), requested)
		if err == nil {
			out += "; issued " + list(e.scopes)
		}
		return out
	}
	return fmt.Sprintf("no covering grant yields the scopes (see grants): envelope %s ∩ grant ∩ audience %s ∩ client %s; %s",
		list(env.Authorization.Scopes), list(e.aud.Scopes), clientScopes, requested)
}

func (e *evaluation) describeLifetime() string {
	parts := []string{}
	if e.aud.TokenTTL > 0 {
		parts = append(parts, fmt.Sprintf("audience token_ttl %s", secs(e.aud.TokenTTL)))
	} else {
		parts = append(parts, fmt.Sprintf("default token TTL %s", secs(e.svc.cfg.DefaultTokenTTL)))
	}
	if c := e.req.Client; c.MaxTokenTTL > 0 {
		parts = append(parts, fmt.Sprintf("client max_token_ttl %s", secs(c.MaxTokenTTL)))
	}
	if e.mode == envelope.ModeRestrictedUser {
		parts = append(parts, fmt.Sprintf("restricted_user at most %s", secs(RestrictedUserMaxTTL)))
	}
	if e.grant != nil {
		parts = append(parts, fmt.Sprintf("grant %s ends in %s", e.grant.ID, secs(e.grant.ExpiresAt.Sub(e.issuedAt()))))
	}
	return fmt.Sprintf("min(%s) = %s", strings.Join(parts, ", "), secs(e.ttl))
}

func (e *evaluation) describeIssuance() string {
	if e.replayed {
		return fmt.Sprintf("a token was already issued for envelope jti %q of client %s for audience %s (checked read-only)",
			e.env.JTI, e.req.Client.ID, e.aud.ID)
	}
	return fmt.Sprintf("envelope jti %q of client %s has not been used for audience %s (checked read-only); "+
		"the endpoint would sign the token and commit its replay mark and audit record together; explain signs and writes nothing",
		e.env.JTI, e.req.Client.ID, e.aud.ID)
}

func list(s []string) string { return "[" + strings.Join(s, " ") + "]" }

// orAny words a narrowing list, where empty means no narrowing.
func orAny(s []string) string {
	if len(s) == 0 {
		return "[] (any)"
	}
	return list(s)
}

// modes words a mode list as modeListed reads it.
func modes(s []string) string {
	if len(s) == 0 {
		return "[] (on_behalf_of and service_identity)"
	}
	return list(s)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func secs(d time.Duration) string { return fmt.Sprintf("%d s", int64(d/time.Second)) }
