package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// Signer signs the issued tokens with Mandate's active key (package keys implements it).
type Signer interface {
	// Sign returns the compact JWS of payload with header typ, and the kid that signed it.
	// It must not keep payload: the caller reuses the buffer.
	Sign(payload []byte, typ string) (token, kid string, err error)
}

// Defaults of Config.
const (
	DefaultMaxActDepth = 4
	DefaultTokenTTL    = 300 * time.Second
	DefaultCacheTTL    = 5 * time.Second
	// RestrictedUserMaxTTL caps restricted_user tokens (SPEC §4): a downstream API that cannot
	// read act sees only the user, so such tokens live briefly.
	RestrictedUserMaxTTL = 60 * time.Second
)

// Config tunes a Service. Zero values take the defaults.
type Config struct {
	// Issuer is Mandate's issuer URL (no trailing slash): the iss of every token and the aud of
	// client_credentials tokens.
	Issuer string
	// MaxActDepth bounds the issued act chain (the agent plus the envelope's chain).
	MaxActDepth int
	// DefaultTokenTTL applies when an audience sets no token TTL (and to client_credentials).
	DefaultTokenTTL time.Duration
	// CacheTTL is how long clients and audiences are cached; negative disables the cache.
	CacheTTL time.Duration
	// GrantRequestLifetime is how long a grant request can be decided (SPEC §11).
	GrantRequestLifetime time.Duration
}

// Deps are the Service's collaborators.
type Deps struct {
	Store    storage.Store
	Verifier *envelope.Verifier
	// KeySets resolves client keys; nil builds one with envelope's default remote-set options.
	KeySets *KeySets
	// Catalog caches clients and audiences; nil builds one over Store with Config.CacheTTL.
	Catalog *Catalog
	Signer  Signer
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Service decides token exchanges and issues tokens. It is safe for concurrent use.
type Service struct {
	store    storage.Store
	verifier *envelope.Verifier
	keySets  *KeySets
	catalog  *Catalog
	signer   Signer
	now      func() time.Time
	log      *slog.Logger
	cfg      Config
}

// New returns a Service.
func New(d Deps, cfg Config) (*Service, error) {
	if d.Store == nil || d.Verifier == nil || d.Signer == nil {
		return nil, errors.New("exchange: Store, Verifier and Signer are required")
	}
	if cfg.Issuer == "" || strings.HasSuffix(cfg.Issuer, "/") {
		return nil, errors.New("exchange: Issuer is required, without a trailing slash")
	}
	if cfg.MaxActDepth <= 0 {
		cfg.MaxActDepth = DefaultMaxActDepth
	}
	if cfg.DefaultTokenTTL <= 0 {
		cfg.DefaultTokenTTL = DefaultTokenTTL
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.GrantRequestLifetime <= 0 {
		cfg.GrantRequestLifetime = DefaultGrantRequestLifetime
	}
	s := &Service{store: d.Store, verifier: d.Verifier, keySets: d.KeySets, catalog: d.Catalog,
		signer: d.Signer, now: d.Now, log: d.Logger, cfg: cfg}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.keySets == nil {
		s.keySets = NewKeySets(RemoteKeySets(envelope.RemoteOptions{}))
	}
	if s.catalog == nil {
		s.catalog = NewCatalog(d.Store, cfg.CacheTTL, s.now)
	}
	return s, nil
}

// Catalog is the client/audience cache, shared with authz's client authentication so both
// see one view (and one Invalidate).
func (s *Service) Catalog() *Catalog { return s.catalog }

// KeySets is the client key resolver, shared with private_key_jwt authentication.
func (s *Service) KeySets() *KeySets { return s.keySets }

// InvalidateClient forgets what is cached about client id; the admin API calls it after a
// change so this replica applies the change at once.
func (s *Service) InvalidateClient(id string) {
	s.catalog.InvalidateClient(id)
	s.keySets.Forget(id)
}

// InvalidateAudiences forgets every cached audience.
func (s *Service) InvalidateAudiences() { s.catalog.InvalidateAudiences() }

// Request is one token exchange by an already authenticated client.
type Request struct {
	Client           *storage.Client
	SubjectToken     string
	SubjectTokenType string
	// Audiences and Resources are the audience and resource parameters (each may repeat; all
	// must name the same registered audience).
	Audiences []string
	Resources []string
	// Scopes are the requested scopes; ScopeGiven says whether scope was sent at all.
	Scopes             []string
	ScopeGiven         bool
	RequestedTokenType string
	RemoteAddr         string
}

// Result is a granted exchange.
type Result struct {
	AccessToken     string
	IssuedTokenType string
	ExpiresIn       int64 // seconds
	Scope           string
}

// Exchange decides req under SPEC §4 and, when granted, issues the token. A refusal is an
// *Error; every refusal and every grant is audited.
func (s *Service) Exchange(ctx context.Context, req Request) (*Result, error) {
	now := s.now()
	c := req.Client
	rec := &storage.AuditRecord{
		Event: EventTokenExchange, ClientID: c.ID, RemoteAddr: req.RemoteAddr,
		RequestedScopes: req.Scopes,
	}
	if len(req.Audiences) > 0 {
		rec.Audience = clip(req.Audiences[0])
	} else if len(req.Resources) > 0 {
		rec.Audience = clip(req.Resources[0])
	}
	res, err := s.exchange(ctx, now, req, rec)
	if err != nil {
		s.audit(ctx, now, rec, err)
		return nil, err
	}
	return res, nil
}

func (s *Service) exchange(ctx context.Context, now time.Time, req Request, rec *storage.AuditRecord) (*Result, error) {
	c := req.Client
	// 1. The client may use this grant type (authz checks it too, before parsing parameters;
	// this keeps the rule true for any other caller).
	if !slices.Contains(c.GrantTypes, GrantTypeTokenExchange) {
		return nil, deny(CodeUnauthorizedClient, ReasonGrantTypeNotAllowed,
			"the client is not allowed to use the token exchange grant")
	}

	// 2. Parameters well formed.
	switch {
	case req.SubjectToken == "":
		return nil, deny(CodeInvalidRequest, ReasonMissingSubjectToken, "subject_token is required")
	case req.SubjectTokenType == "":
		return nil, deny(CodeInvalidRequest, ReasonBadSubjectTokenType, "subject_token_type is required")
	case req.SubjectTokenType != envelope.TokenType && req.SubjectTokenType != envelope.JWTTokenType:
		return nil, deny(CodeInvalidRequest, ReasonBadSubjectTokenType,
			"subject_token_type must be "+envelope.TokenType+" or "+envelope.JWTTokenType)
	case len(req.SubjectToken) > envelope.MaxTokenBytes:
		return nil, deny(CodeInvalidRequest, ReasonSubjectTokenTooLarge, "subject_token is larger than 8 KiB")
	case len(req.Audiences) == 0 && len(req.Resources) == 0:
		return nil, deny(CodeInvalidRequest, ReasonMissingTarget, "audience or resource is required")
	}
	issuedType := TokenTypeAccessToken
	switch req.RequestedTokenType {
	case "", TokenTypeAccessToken:
	case TokenTypeJWT:
		issuedType = TokenTypeJWT
	default:
		return nil, deny(CodeInvalidRequest, ReasonBadRequestedTokenType,
			"requested_token_type must be "+TokenTypeAccessToken+" or "+TokenTypeJWT)
	}

	// 3. The envelope (SPEC §3). The verifier checks signature, issuer, audience, times,
	// lifetime and members; tenants and the act chain are policy, checked here.
	env, err := s.verifyEnvelope(ctx, req, rec)
	if err != nil {
		return nil, err
	}
	if len(c.AllowedTenants) > 0 && !slices.Contains(c.AllowedTenants, env.Actor.Tenant) {
		return nil, deny(CodeInvalidRequest, ReasonTenantNotAllowed,
			"the envelope's tenant is not allowed for this client")
	}
	mode := env.Delegation.Mode
	if mode == envelope.ModeOnBehalfOf && env.Act.Depth()+1 > s.cfg.MaxActDepth {
		return nil, deny(CodeInvalidRequest, ReasonActChainTooDeep,
			fmt.Sprintf("the actor chain would be deeper than %d", s.cfg.MaxActDepth))
	}
	service := env.Actor.Type == envelope.ActorService

	// 4. The target.
	aud, err := s.resolveTarget(ctx, req)
	if err != nil {
		return nil, err
	}
	rec.Audience = aud.ID
	if len(env.Delegation.Allowed) > 0 && !slices.Contains(env.Delegation.Allowed, aud.ID) {
		return nil, deny(CodeInvalidTarget, ReasonAudienceNotInEnvelope,
			"the audience is not in the envelope's delegation.allowed")
	}
	// For service actors the client's lists are the whole permission: empty allows nothing.
	if (service || len(c.AllowedAudiences) > 0) && !slices.Contains(c.AllowedAudiences, aud.ID) {
		return nil, deny(CodeInvalidTarget, ReasonAudienceNotForClient,
			"the audience is not allowed for this client")
	}

	// 5. The mode, by the audience and the client (the grant's part comes with the grant).
	if !modeListed(aud.AllowedModes, mode) {
		return nil, deny(CodeInvalidRequest, ReasonModeNotForAudience,
			"the delegation mode is not allowed by the audience")
	}
	if len(c.AllowedModes) > 0 && !slices.Contains(c.AllowedModes, mode) {
		return nil, deny(CodeInvalidRequest, ReasonModeNotForClient,
			"the delegation mode is not allowed for this client")
	}

	// 6. The grant (user actors) or the client's own limits (service actors), then scopes.
	var grant *storage.Grant
	var grantQuery storage.GrantQuery
	var scopes []string
	if service {
		if mode != envelope.ModeServiceIdentity {
			return nil, deny(CodeInvalidRequest, ReasonServiceActorMode,
				"a service actor must use the service_identity delegation mode")
		}
		// A service actor needs no grant, so it must be an explicit permission of the client:
		// narrowing lists (allowed_audiences, allowed_scopes) alone must never let a client
		// name any actor it likes in any tenant (SPEC §4, §7).
		if !slices.Contains(c.ServiceActors, env.Actor.Sub) || !slices.Contains(c.AllowedTenants, env.Actor.Tenant) {
			return nil, deny(CodeInvalidRequest, ReasonServiceActorNotAllowed,
				"the client may not present this service actor in this tenant")
		}
		// The client's allowed_scopes are the whole permission here: empty allows none.
		eff := intersect(intersect(env.Authorization.Scopes, aud.Scopes, nil), c.AllowedScopes, nil)
		if scopes, err = pickScopes(eff, req); err != nil {
			return nil, err
		}
	} else {
		grantQuery = storage.GrantQuery{
			Tenant: env.Actor.Tenant, Subject: env.Actor.Sub, ClientID: c.ID, AgentID: env.Agent.ID, Now: now,
		}
		grants, err := s.catalog.Grants(ctx, grantQuery)
		if err != nil {
			return nil, unavailable(err)
		}
		if len(grants) == 0 {
			e := deny(CodeInvalidRequest, ReasonNoActiveGrant,
				"no active delegation grant lets this client act for this user")
			e.UserMayConsent = aud.AllowsUserConsent()
			return nil, e
		}
		if grant, scopes, err = chooseGrant(grants, aud, mode, env.Authorization.Scopes, c.AllowedScopes, req); err != nil {
			if e := AsError(err); e != nil && e.Reason == ReasonGrantNotCovering {
				e.UserMayConsent = aud.AllowsUserConsent()
			}
			return nil, err
		}
		rec.GrantID = grant.ID
	}
	rec.GrantedScopes = scopes

	// 7. Lifetime.
	ttl := s.cfg.DefaultTokenTTL
	if aud.TokenTTL > 0 {
		ttl = aud.TokenTTL
	}
	if c.MaxTokenTTL > 0 {
		ttl = min(ttl, c.MaxTokenTTL)
	}
	if mode == envelope.ModeRestrictedUser {
		ttl = min(ttl, RestrictedUserMaxTTL)
	}
	iat := now.Truncate(time.Second)
	if grant != nil {
		ttl = min(ttl, grant.ExpiresAt.Sub(iat))
	}
	ttl = ttl.Truncate(time.Second)
	if ttl < time.Second {
		return nil, deny(CodeInvalidTarget, ReasonGrantExpiring,
			"the delegation grant expires too soon to issue a token")
	}

	// 8. The token, then everything it needs committed at once; the replay mark is the last
	// check (SPEC §4) and is made atomically with the issuance.
	claims := TokenClaims{
		Issuer: s.cfg.Issuer, Audience: aud.ID, IssuedAt: iat.Unix(), ExpiresAt: iat.Add(ttl).Unix(),
		JTI: storage.NewID("at"), ClientID: c.ID, Scope: strings.Join(scopes, " "),
		Tenant: env.Actor.Tenant, DelegationMode: mode, ActorType: env.Actor.Type, ActorSub: env.Actor.Sub,
		AgentID: env.Agent.ID,
		TraceID: env.Session.TraceID, SessionID: env.Session.ID,
	}
	if grant != nil {
		claims.GrantID = grant.ID
	}
	switch mode {
	case envelope.ModeOnBehalfOf:
		claims.Subject = env.Actor.Sub
		claims.Act = &envelope.Act{Sub: env.Agent.ID, ClientID: c.ID, Act: env.Act}
	case envelope.ModeServiceIdentity:
		claims.Subject = c.ID
	case envelope.ModeRestrictedUser:
		claims.Subject = env.Actor.Sub
	}
	token, err := s.sign(&claims)
	if err != nil {
		return nil, err
	}
	rec.TokenJTI = claims.JTI
	rec.Outcome, rec.Reason = storage.OutcomeGranted, ReasonGranted
	rec.ID, rec.Time = storage.NewID("evt"), now
	iss := storage.Issuance{
		Audit:          *rec,
		TokenExpiresAt: iat.Add(ttl),
		ReplayKey:      replayKey(c.ID, env.JTI, aud.ID),
	}
	if err := s.store.RecordIssuance(ctx, iss); err != nil {
		rec.TokenJTI, rec.GrantedScopes = "", nil // nothing was issued
		rec.ID = ""
		if errors.Is(err, storage.ErrConflict) {
			if grant != nil {
				s.catalog.ForgetGrants(grantQuery) // the cached list may hold the revoked grant
			}
			return nil, s.conflict(ctx, grant)
		}
		return nil, unavailable(err)
	}
	return &Result{AccessToken: token, IssuedTokenType: issuedType, ExpiresIn: int64(ttl / time.Second), Scope: claims.Scope}, nil
}

// conflict tells the two reasons RecordIssuance refuses apart. The extra read happens only on
// this rare path, keeping the granted path at two round trips.
//
// A grant revoked between FindActiveGrants and the commit is reported as invalid_request,
// the same code as "no active grant" at step 6, which is what the client would have got a
// moment later.
func (s *Service) conflict(ctx context.Context, grant *storage.Grant) error {
	if grant != nil {
		g, err := s.store.GetGrant(ctx, grant.ID)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return unavailable(err)
		}
		if g == nil || !g.RevokedAt.IsZero() {
			return deny(CodeInvalidRequest, ReasonGrantRevoked, "the delegation grant was revoked")
		}
	}
	return deny(CodeInvalidRequest, ReasonReplay, "envelope already used for this audience")
}

// verifyEnvelope verifies the subject token and records in rec the identities it names, also
// when a check after its signature refused it (SPEC §8): those claims are the client's own.
func (s *Service) verifyEnvelope(ctx context.Context, req Request, rec *storage.AuditRecord) (*envelope.Claims, error) {
	ks, err := s.keySets.For(req.Client)
	if err != nil {
		return nil, fail(CodeInvalidRequest, ReasonClientKeysInvalid,
			"the client has no usable keys registered to verify the envelope", err)
	}
	env, err := s.verifier.Verify(ctx, req.SubjectToken, envelope.Client{
		ID: req.Client.ID, Keys: ks, MaxLifetime: req.Client.MaxEnvelopeLifetime,
	})
	if err != nil {
		var ee *envelope.Error
		if !errors.As(err, &ee) {
			return nil, fail(CodeServerError, ReasonInternalError, "the envelope could not be verified", err)
		}
		if ee.Claims != nil {
			recordEnvelope(rec, ee.Claims)
		}
		if ee.Reason == envelope.ReasonKeysUnavailable {
			return nil, fail(CodeTemporarilyUnavailable, ReasonKeysUnavailable,
				"the client's keys could not be fetched; retry later", err)
		}
		return nil, fail(CodeInvalidRequest, "envelope_"+ee.Reason, "invalid subject_token: "+ee.Description, err)
	}
	recordEnvelope(rec, env)
	return env, nil
}

// recordEnvelope copies the envelope's identities into the exchange's audit record.
func recordEnvelope(rec *storage.AuditRecord, env *envelope.Claims) {
	rec.AgentID, rec.ActorType, rec.ActorSub, rec.Tenant = clip(env.Agent.ID), clip(env.Actor.Type), clip(env.Actor.Sub), clip(env.Actor.Tenant)
	rec.DelegationMode, rec.TraceID, rec.SessionID = clip(env.Delegation.Mode), clip(env.Session.TraceID), clip(env.Session.ID)
	rec.EnvelopeJTI = clip(env.JTI)
}

// resolveTarget maps every audience and resource value to one registered audience.
func (s *Service) resolveTarget(ctx context.Context, req Request) (*storage.Audience, error) {
	var found *storage.Audience
	add := func(a *storage.Audience) error {
		if found != nil && found.ID != a.ID {
			return deny(CodeInvalidTarget, ReasonConflictingTargets, "audience and resource name different audiences")
		}
		found = a
		return nil
	}
	for _, id := range req.Audiences {
		a, err := s.catalog.Audience(ctx, id)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, deny(CodeInvalidTarget, ReasonUnknownAudience, "the audience is not registered")
		} else if err != nil {
			return nil, unavailable(err)
		}
		if err := add(a); err != nil {
			return nil, err
		}
	}
	for _, uri := range req.Resources {
		a, err := s.catalog.AudienceByResource(ctx, uri)
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

// claimBufs holds buffers for the claims of the token being signed (about 600 bytes): the
// signer encodes them into a token of its own, so each buffer is reused.
var claimBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func (s *Service) sign(claims *TokenClaims) (string, error) {
	bp := claimBufs.Get().(*[]byte)
	*bp = claims.AppendJSON((*bp)[:0])
	token, _, err := s.signer.Sign(*bp, TypAccessToken)
	if cap(*bp) <= 16<<10 {
		claimBufs.Put(bp)
	}
	if err != nil {
		return "", fail(CodeServerError, ReasonSigningFailed, "the token could not be issued", err)
	}
	return token, nil
}

// audit records a refusal. A failure to write it is logged, not returned: the client gets
// the refusal it earned (and nothing was issued, so nothing goes unaudited).
func (s *Service) audit(ctx context.Context, now time.Time, rec *storage.AuditRecord, err error) {
	e := AsError(err)
	if e == nil {
		e = fail(CodeServerError, ReasonInternalError, "", err)
	}
	rec.ID, rec.Time, rec.Reason = storage.NewID("evt"), now, e.Reason
	rec.Outcome = storage.OutcomeDenied
	if e.Code == CodeServerError || e.Code == CodeTemporarilyUnavailable {
		rec.Outcome = storage.OutcomeError
		s.log.ErrorContext(ctx, "token request failed", "event", rec.Event, "client_id", rec.ClientID,
			"reason", e.Reason, "err", errors.Unwrap(e))
	}
	if e.Code == CodeTemporarilyUnavailable {
		// The store is what failed: a record of that would wait for it as long again (a held
		// lock, a stalled server) and most likely fail the same way. The log line stands in.
		return
	}
	if aerr := s.store.AppendAudit(ctx, rec); aerr != nil {
		s.log.ErrorContext(ctx, "audit write failed", "event", rec.Event, "client_id", rec.ClientID,
			"reason", rec.Reason, "err", aerr)
	}
}

// replayKey is an envelope's replay key (SPEC §3: once per client, jti and audience).
// Lengths, in bytes, are spelled out so no client id or jti containing the separator can
// collide with another triple; migration 00002 builds the same key in SQL.
func replayKey(clientID, jti, audience string) string {
	return fmt.Sprintf("eie|%d:%s|%d:%s|%s", len(clientID), clientID, len(jti), jti, audience)
}

// clip makes a request-supplied string fit for the audit log: AuditText at 256 bytes.
func clip(s string) string { return AuditText(s, 256) }

// AuditText makes untrusted text safe to store: invalid UTF-8 and control characters become
// U+FFFD (Postgres refuses NUL, and control characters can forge log lines), and it is
// clipped to max bytes on a character boundary.
func AuditText(s string, max int) string {
	clean := len(s) <= max
	for i := 0; clean && i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= utf8.RuneSelf {
			clean = false
		}
	}
	if clean {
		return s // the common case: short ASCII, no copy
	}
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			r = utf8.RuneError
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
