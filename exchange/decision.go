package exchange

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// Step names: the rows of SPEC §4's decision table, as Explain reports them.
const (
	StepClient     = "client"             // the client exists and is enabled (authenticate the client)
	StepGrantType  = "grant_type"         // the client may use this grant type
	StepParameters = "parameters"         // parameters well formed
	StepSignature  = "envelope_signature" // envelope valid (§3): the JWS, its key and its signature
	StepEnvelope   = "envelope_claims"    // envelope valid (§3): its claims, tenant and act chain
	StepTarget     = "target"             // target resolves, is in delegation.allowed and the client's audiences
	StepMode       = "mode"               // mode allowed by the audience and the client
	StepGrant      = "grant"              // an active grant covers audience and mode; or the service actor's permission
	StepScopes     = "scopes"             // effective scopes (and, among covering grants, the one that yields them)
	StepLifetime   = "lifetime"           // the token's lifetime, which a grant about to expire can leave empty
	StepIssuance   = "issuance"           // envelope not used before for this audience; the token and its record
)

// step is one row of the decision table: its name and its check. A check reads what earlier
// steps found in the evaluation, adds what it finds, and returns nil or the refusal (an
// *Error, the one the token endpoint answers).
type step struct {
	name  string
	check func(e *evaluation, ctx context.Context) error
}

// decisionTable is SPEC §4's table, in its order. The token endpoint (Service.Exchange) runs
// the checks and stops at the first refusal; Explain runs the same checks, in the same order,
// and reports each one. Only the last step does something different when explaining: it
// writes nothing (see issue).
var decisionTable = [...]step{
	{StepClient, (*evaluation).checkClient},
	{StepGrantType, (*evaluation).checkGrantType},
	{StepParameters, (*evaluation).checkParameters},
	{StepSignature, (*evaluation).checkSignature},
	{StepEnvelope, (*evaluation).checkEnvelope},
	{StepTarget, (*evaluation).checkTarget},
	{StepMode, (*evaluation).checkMode},
	{StepGrant, (*evaluation).checkGrant},
	{StepScopes, (*evaluation).checkScopes},
	{StepLifetime, (*evaluation).checkLifetime},
	{StepIssuance, (*evaluation).issue},
}

// evaluation is one exchange on its way through the table: the request, and what each step
// found, in the order the steps find it.
//
// It is the one allocation the decision adds over the checks themselves (the steps are
// called through the table, so it lives on the heap), and it holds the audit record the
// exchange allocated anyway. Keep it in the 768-byte size class (TestEvaluationSize): what
// only Explain needs is behind pointers.
type evaluation struct {
	svc      *Service
	catalog  *Catalog           // the cached one for the endpoint; an uncached one for Explain
	verifier *envelope.Verifier // Explain's clock may differ from the service's
	now      time.Time
	req      Request
	rec      storage.AuditRecord // the decision's audit record, filled as the steps go
	// unsigned are an envelope's claims (JSON) given to Explain instead of a signed envelope:
	// the signature step is skipped and the claims step checks these.
	unsigned []byte
	// explaining: a report, not an exchange. The issuance step writes nothing.
	explaining bool
	service    bool // actor.type = service: no grant, the client's own limits
	replayed   bool // Explain: the envelope was used before for this audience

	issuedType string
	verified   *envelope.Claims // claims read: their signature verified (or, explaining, given unsigned)
	claimsErr  error            // the verifier's refusal of them, made after the signature
	env        *envelope.Claims // the accepted envelope
	mode       string
	aud        *storage.Audience
	grants     []storage.Grant // the grants in force for the envelope's actor and agent
	grant      *storage.Grant  // the one the token is issued under
	scopes     []string        // the scopes issued
	ttl        time.Duration
	result     *Result      // the issued token
	explained  *TokenClaims // Explain: the claims the token would carry (no jti, unsigned)
}

func (e *evaluation) checkClient(context.Context) error {
	// The token endpoint authenticated the client before this (authz refuses a disabled one
	// like an unknown one, with 401), so there this never refuses; Explain, given a client
	// id, starts here.
	if c := e.req.Client; c == nil || c.Disabled {
		return deny(CodeInvalidClient, ReasonClientAuthFailed, "client authentication failed")
	}
	return nil
}

func (e *evaluation) checkGrantType(context.Context) error {
	// authz checks it too, before parsing parameters; this keeps the rule true for any caller.
	if !slices.Contains(e.req.Client.GrantTypes, GrantTypeTokenExchange) {
		return deny(CodeUnauthorizedClient, ReasonGrantTypeNotAllowed,
			"the client is not allowed to use the token exchange grant")
	}
	return nil
}

func (e *evaluation) checkParameters(context.Context) error {
	req := &e.req
	switch {
	case req.SubjectToken == "" && e.unsigned == nil:
		return deny(CodeInvalidRequest, ReasonMissingSubjectToken, "subject_token is required")
	case req.SubjectTokenType == "":
		return deny(CodeInvalidRequest, ReasonBadSubjectTokenType, "subject_token_type is required")
	case req.SubjectTokenType != envelope.TokenType && req.SubjectTokenType != envelope.JWTTokenType:
		return deny(CodeInvalidRequest, ReasonBadSubjectTokenType,
			"subject_token_type must be "+envelope.TokenType+" or "+envelope.JWTTokenType)
	case len(req.SubjectToken) > envelope.MaxTokenBytes:
		return deny(CodeInvalidRequest, ReasonSubjectTokenTooLarge, "subject_token is larger than 8 KiB")
	case len(req.Audiences) == 0 && len(req.Resources) == 0:
		return deny(CodeInvalidRequest, ReasonMissingTarget, "audience or resource is required")
	}
	switch req.RequestedTokenType {
	case "", TokenTypeAccessToken:
		e.issuedType = TokenTypeAccessToken
	case TokenTypeJWT:
		e.issuedType = TokenTypeJWT
	default:
		return deny(CodeInvalidRequest, ReasonBadRequestedTokenType,
			"requested_token_type must be "+TokenTypeAccessToken+" or "+TokenTypeJWT)
	}
	return nil
}

// checkSignature verifies the subject token. Verify checks the JWS and then, in the same
// pass, the claims; a refusal of the claims (the signature verified) is kept for the next
// step, so each refusal is reported where it belongs and the endpoint still verifies once.
// The identities of claims whose signature verified go into the audit record even when a
// later check refuses them (SPEC §8): those claims are the client's own.
func (e *evaluation) checkSignature(ctx context.Context) error {
	c := e.req.Client
	ks, err := e.svc.keySets.For(c)
	if err != nil {
		return fail(CodeInvalidRequest, ReasonClientKeysInvalid,
			"the client has no usable keys registered to verify the envelope", err)
	}
	env, err := e.verifier.Verify(ctx, e.req.SubjectToken, envelope.Client{
		ID: c.ID, Keys: ks, MaxLifetime: c.MaxEnvelopeLifetime,
	})
	if err != nil {
		ee, refusal := envelopeRefusal(err)
		if ee == nil || ee.Claims == nil {
			return refusal
		}
		env, e.claimsErr = ee.Claims, refusal
	}
	recordEnvelope(&e.rec, env)
	e.verified = env
	return nil
}

// checkEnvelope accepts the envelope's claims: SPEC §3's checks (made by the verifier), then
// the client's tenants and the act chain's depth, which are policy.
func (e *evaluation) checkEnvelope(context.Context) error {
	if e.unsigned != nil {
		e.verified, e.claimsErr = e.checkUnsigned()
	}
	if e.claimsErr != nil {
		return e.claimsErr
	}
	env, c := e.verified, e.req.Client
	if len(c.AllowedTenants) > 0 && !slices.Contains(c.AllowedTenants, env.Actor.Tenant) {
		return deny(CodeInvalidRequest, ReasonTenantNotAllowed,
			"the envelope's tenant is not allowed for this client")
	}
	if env.Delegation.Mode == envelope.ModeOnBehalfOf && env.Act.Depth()+1 > e.svc.cfg.MaxActDepth {
		return deny(CodeInvalidRequest, ReasonActChainTooDeep,
			fmt.Sprintf("the actor chain would be deeper than %d", e.svc.cfg.MaxActDepth))
	}
	e.env, e.mode = env, env.Delegation.Mode
	e.service = env.Actor.Type == envelope.ActorService
	return nil
}

func (e *evaluation) checkTarget(ctx context.Context) error {
	aud, err := e.resolveTarget(ctx)
	if err != nil {
		return err
	}
	e.aud, e.rec.Audience = aud, aud.ID
	if allowed := e.env.Delegation.Allowed; len(allowed) > 0 && !slices.Contains(allowed, aud.ID) {
		return deny(CodeInvalidTarget, ReasonAudienceNotInEnvelope,
			"the audience is not in the envelope's delegation.allowed")
	}
	// For service actors the client's lists are the whole permission: empty allows nothing.
	if c := e.req.Client; (e.service || len(c.AllowedAudiences) > 0) && !slices.Contains(c.AllowedAudiences, aud.ID) {
		return deny(CodeInvalidTarget, ReasonAudienceNotForClient, "the audience is not allowed for this client")
	}
	return nil
}

// checkMode applies the audience's and the client's modes; the grant's part comes with the
// grant.
func (e *evaluation) checkMode(context.Context) error {
	if !modeListed(e.aud.AllowedModes, e.mode) {
		return deny(CodeInvalidRequest, ReasonModeNotForAudience, "the delegation mode is not allowed by the audience")
	}
	if c := e.req.Client; len(c.AllowedModes) > 0 && !slices.Contains(c.AllowedModes, e.mode) {
		return deny(CodeInvalidRequest, ReasonModeNotForClient, "the delegation mode is not allowed for this client")
	}
	return nil
}

// checkGrant finds what lets the client act for the actor: for a user, an active grant that
// covers the audience and mode; for a service actor, the client's explicit permission.
func (e *evaluation) checkGrant(ctx context.Context) error {
	if e.service {
		env, c := e.env, e.req.Client
		if e.mode != envelope.ModeServiceIdentity {
			return deny(CodeInvalidRequest, ReasonServiceActorMode,
				"a service actor must use the service_identity delegation mode")
		}
		// A service actor needs no grant, so it must be an explicit permission of the client:
		// narrowing lists (allowed_audiences, allowed_scopes) alone must never let a client
		// name any actor it likes in any tenant (SPEC §4, §7).
		if !slices.Contains(c.ServiceActors, env.Actor.Sub) || !slices.Contains(c.AllowedTenants, env.Actor.Tenant) {
			return deny(CodeInvalidRequest, ReasonServiceActorNotAllowed,
				"the client may not present this service actor in this tenant")
		}
		return nil
	}
	grants, err := e.catalog.Grants(ctx, e.grantQuery())
	if err != nil {
		return unavailable(err)
	}
	e.grants = grants
	var refusal *Error
	if len(grants) == 0 {
		refusal = deny(CodeInvalidRequest, ReasonNoActiveGrant,
			"no active delegation grant lets this client act for this user")
	} else {
		for i := range grants {
			if covers(&grants[i], e.aud.ID, e.mode) {
				return nil
			}
		}
		refusal = deny(CodeInvalidTarget, ReasonGrantNotCovering,
			"no active delegation grant covers this audience and delegation mode")
	}
	// The user could lift either refusal by granting access, where the audience lets them
	// (SPEC §11): the answer then names the grant request endpoint.
	refusal.UserMayConsent = e.aud.AllowsUserConsent()
	return refusal
}

// grantQuery asks for the grants in force for the envelope's actor and agent, now.
func (e *evaluation) grantQuery() storage.GrantQuery {
	env := e.env
	return storage.GrantQuery{
		Tenant: env.Actor.Tenant, Subject: env.Actor.Sub, ClientID: e.req.Client.ID, AgentID: env.Agent.ID, Now: e.now,
	}
}

// checkScopes narrows the scopes (SPEC §4) and, for a user, picks the covering grant the
// token is issued under.
func (e *evaluation) checkScopes(context.Context) error {
	env, c := e.env, e.req.Client
	var err error
	if e.service {
		e.scopes, err = pickScopes(serviceScopes(env, e.aud, c), &e.req)
	} else {
		e.grant, e.scopes, err = chooseGrant(e.grants, e.aud, e.mode, env.Authorization.Scopes, c.AllowedScopes, &e.req)
	}
	if err != nil {
		return err
	}
	if e.grant != nil {
		e.rec.GrantID = e.grant.ID
	}
	e.rec.GrantedScopes = e.scopes
	return nil
}

// checkLifetime is min(audience TTL, client maximum, time left on the grant), and at most 60 s
// for restricted_user (SPEC §4).
func (e *evaluation) checkLifetime(context.Context) error {
	ttl := e.svc.cfg.DefaultTokenTTL
	if e.aud.TokenTTL > 0 {
		ttl = e.aud.TokenTTL
	}
	if c := e.req.Client; c.MaxTokenTTL > 0 {
		ttl = min(ttl, c.MaxTokenTTL)
	}
	if e.mode == envelope.ModeRestrictedUser {
		ttl = min(ttl, RestrictedUserMaxTTL)
	}
	if e.grant != nil {
		ttl = min(ttl, e.grant.ExpiresAt.Sub(e.issuedAt()))
	}
	e.ttl = ttl.Truncate(time.Second)
	if e.ttl < time.Second {
		return deny(CodeInvalidTarget, ReasonGrantExpiring, "the delegation grant expires too soon to issue a token")
	}
	return nil
}

// issue is the last step: the token, then everything it needs committed at once. The replay
// mark is the last check (SPEC §4) and is made atomically with the issuance.
//
// Explaining, it builds the claims without a jti and signs and writes nothing; the replay
// check becomes a read of whether an issuance used this envelope for this audience.
func (e *evaluation) issue(ctx context.Context) error {
	c, env := e.req.Client, e.env
	key := replayKey(c.ID, env.JTI, e.aud.ID)
	if e.explaining {
		claims := e.tokenClaims("")
		e.explained = &claims
		used, err := e.svc.store.ReplayKeyUsed(ctx, key)
		if err != nil {
			return unavailable(err)
		}
		if e.replayed = used; used {
			return errReplayed()
		}
		return nil
	}

	claims := e.tokenClaims(storage.NewID("at"))
	token, err := e.svc.sign(&claims)
	if err != nil {
		return err
	}
	rec := &e.rec
	rec.TokenJTI = claims.JTI
	rec.Outcome, rec.Reason = storage.OutcomeGranted, ReasonGranted
	rec.ID, rec.Time = storage.NewID("evt"), e.now
	exp := e.issuedAt().Add(e.ttl)
	// The envelope is accepted until ClockSkew past its exp (envelope.Verify): its key must
	// stay used that long.
	err = e.svc.store.RecordIssuance(ctx, storage.Issuance{Audit: *rec, TokenExpiresAt: exp,
		ReplayKey: key, ReplayExpiresAt: env.ExpiresAt.Add(envelope.ClockSkew)})
	if err != nil {
		rec.TokenJTI, rec.GrantedScopes, rec.ID = "", nil, "" // nothing was issued
		if errors.Is(err, storage.ErrConflict) {
			if e.grant != nil {
				e.catalog.ForgetGrants(e.grantQuery()) // the cached list may hold the revoked grant
			}
			return e.svc.conflict(ctx, e.grant)
		}
		return unavailable(err)
	}
	e.result = &Result{AccessToken: token, IssuedTokenType: e.issuedType,
		ExpiresIn: int64(e.ttl / time.Second), Scope: claims.Scope}
	return nil
}

// issuedAt is the token's iat: whole seconds, as JWTs carry it.
func (e *evaluation) issuedAt() time.Time { return storage.IssuedAt(e.now) }

// tokenClaims are the claims of the token the evaluation issues (SPEC §5).
func (e *evaluation) tokenClaims(jti string) TokenClaims {
	c, env, iat := e.req.Client, e.env, e.issuedAt()
	claims := TokenClaims{
		Issuer: e.svc.cfg.Issuer, Audience: e.aud.ID, IssuedAt: iat.Unix(), ExpiresAt: iat.Add(e.ttl).Unix(),
		JTI: jti, ClientID: c.ID, Scope: strings.Join(e.scopes, " "),
		Tenant: env.Actor.Tenant, DelegationMode: e.mode, ActorType: env.Actor.Type, ActorSub: env.Actor.Sub,
		AgentID: env.Agent.ID, TraceID: env.Session.TraceID, SessionID: env.Session.ID,
	}
	if e.grant != nil {
		claims.GrantID = e.grant.ID
	}
	switch e.mode {
	case envelope.ModeOnBehalfOf:
		claims.Subject = env.Actor.Sub
		claims.Act = &envelope.Act{Sub: env.Agent.ID, ClientID: c.ID, Act: env.Act}
	case envelope.ModeServiceIdentity:
		claims.Subject = c.ID
	case envelope.ModeRestrictedUser:
		claims.Subject = env.Actor.Sub
	}
	return claims
}

// envelopeRefusal maps a verifier error to the exchange's refusal; ee is nil when err is not
// an envelope refusal at all.
func envelopeRefusal(err error) (ee *envelope.Error, refusal *Error) {
	if !errors.As(err, &ee) {
		return nil, fail(CodeServerError, ReasonInternalError, "the envelope could not be verified", err)
	}
	if ee.Reason == envelope.ReasonKeysUnavailable {
		return ee, fail(CodeTemporarilyUnavailable, ReasonKeysUnavailable,
			"the client's keys could not be fetched; retry later", err)
	}
	return ee, fail(CodeInvalidRequest, "envelope_"+ee.Reason, "invalid subject_token: "+ee.Description, err)
}

// checkUnsigned checks claims given to Explain instead of an envelope, as the verifier checks
// a signed envelope's after its signature.
// The claims are returned with the refusal when they could be read, as Verify's are.
func (e *evaluation) checkUnsigned() (*envelope.Claims, error) {
	c := e.req.Client
	env, err := e.verifier.CheckUnsignedClaims(e.unsigned, envelope.Client{ID: c.ID, MaxLifetime: c.MaxEnvelopeLifetime})
	var refusal error
	if err != nil {
		var ee *envelope.Error
		if ee, refusal = envelopeRefusal(err); ee == nil || ee.Claims == nil {
			return nil, refusal
		}
		env = ee.Claims
	}
	recordEnvelope(&e.rec, env)
	return env, refusal
}

// resolveTarget maps every audience and resource value to one registered audience.
func (e *evaluation) resolveTarget(ctx context.Context) (*storage.Audience, error) {
	var found *storage.Audience
	add := func(a *storage.Audience) error {
		if found != nil && found.ID != a.ID {
			return deny(CodeInvalidTarget, ReasonConflictingTargets, "audience and resource name different audiences")
		}
		found = a
		return nil
	}
	for _, id := range e.req.Audiences {
		a, err := e.catalog.Audience(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, deny(CodeInvalidTarget, ReasonUnknownAudience, "the audience is not registered")
		} else if err != nil {
			return nil, unavailable(err)
		}
		if err := add(a); err != nil {
			return nil, err
		}
	}
	for _, uri := range e.req.Resources {
		a, err := e.catalog.AudienceByResource(ctx, uri)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, deny(CodeInvalidTarget, ReasonUnknownResource, "the resource is not registered on any audience")
		} else if err != nil {
			return nil, unavailable(err)
		}
		if err := add(a); err != nil {
			return nil, err
		}
	}
	return found, nil
}

func errReplayed() *Error {
	return deny(CodeInvalidRequest, ReasonReplay, "envelope already used for this audience")
}
