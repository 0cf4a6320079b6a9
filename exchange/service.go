package exchange

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	uncached *Catalog // Explain reads the store itself: see Explain
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
	s.uncached = NewCatalog(d.Store, -1, s.now)
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
	e := &evaluation{svc: s, catalog: s.catalog, verifier: s.verifier, now: s.now(), req: req}
	e.rec = storage.AuditRecord{
		Event: EventTokenExchange, ClientID: req.Client.ID, RemoteAddr: req.RemoteAddr,
		RequestedScopes: req.Scopes,
	}
	if len(req.Audiences) > 0 {
		e.rec.Audience = clip(req.Audiences[0])
	} else if len(req.Resources) > 0 {
		e.rec.Audience = clip(req.Resources[0])
	}
	for i := range decisionTable {
		if err := decisionTable[i].check(e, ctx); err != nil {
			s.audit(ctx, e.now, &e.rec, err)
			return nil, err
		}
	}
	return e.result, nil
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
	return errReplayed()
}

// recordEnvelope copies the envelope's identities into the exchange's audit record.
func recordEnvelope(rec *storage.AuditRecord, env *envelope.Claims) {
	rec.AgentID, rec.ActorType, rec.ActorSub, rec.Tenant = clip(env.Agent.ID), clip(env.Actor.Type), clip(env.Actor.Sub), clip(env.Actor.Tenant)
	rec.DelegationMode, rec.TraceID, rec.SessionID = clip(env.Delegation.Mode), clip(env.Session.TraceID), clip(env.Session.ID)
	rec.EnvelopeJTI = clip(env.JTI)
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
	if e.Reason == ReasonStorageUnavailable {
		// The store is what failed: a record of that would wait for it as long again (a held
		// lock, a stalled server) and most likely fail the same way. The log line stands in.
		// Other 503s (a client's unreachable jwks_uri) are decisions like any other.
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
