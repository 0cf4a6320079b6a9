// Package server assembles a Mandate server from a store and a deployment secret: the key
// manager, the exchange service, the OAuth handler (public listener) and the admin API
// (admin listener), with metrics over both. It is what cmd/mandate runs, and what the examples
// embed, so the two cannot drift apart.
//
// It does not open stores or listen on ports: the caller picks the backend and the addresses.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/mandatehq/mandate/api"
	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/consent"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/storage/groupcommit"
	"github.com/mandatehq/mandate/throttle"
)

// Options configure a Server. Store, Master and Issuer are required.
type Options struct {
	Store  storage.Store
	Master *secret.Master
	// Issuer is the issuer URL, without a trailing slash.
	Issuer string
	// SigningAlg is ES256 (default) or EdDSA.
	SigningAlg string
	// KeyRotation and KeyPublishAhead tune the signing-key schedule (zero: keys' defaults).
	KeyRotation     time.Duration
	KeyPublishAhead time.Duration
	// BootstrapAdminSecret, when set, is the secret of the admin client created on a store
	// that has none (otherwise one is generated).
	BootstrapAdminSecret string
	// DatabaseTimeout bounds every store call a request makes, waiting for a connection
	// included, and each transaction as a whole: a call that runs out fails with
	// storage.ErrUnavailable, answered 503 with Retry-After. Zero: DefaultDatabaseTimeout.
	// SQLite waits for another process's lock without looking at contexts: open it with
	// sqlite.Options{BusyTimeout} no longer than this.
	DatabaseTimeout time.Duration
	// MaxActDepth bounds an on_behalf_of token's act chain, the agent included (zero: the
	// exchange's default, 4).
	MaxActDepth int
	// CacheTTL is how long clients, audiences and grants are cached (zero: the exchange's
	// default; negative: no cache). Admin changes reach every replica at once through the
	// store's change feed; the TTL is the safety net for a change the feed missed.
	CacheTTL time.Duration
	// OIDC is the organisation's sign-in provider for the consent pages (SPEC §11); nil
	// leaves them saying that sign-in is not configured (grant requests still work, and
	// admins can decide them).
	OIDC *consent.OIDCConfig
	// Pprof serves /debug/pprof on the admin handler.
	Pprof bool
	// AllowLoopbackJWKSURI lets clients' jwks_uri name loopback hosts, over http too
	// (development). Private, link-local and other non-public addresses are refused always.
	AllowLoopbackJWKSURI bool
	// AuditRetention is how long audit records are kept (SPEC §8): records of the UTC days
	// before now minus it are removed, whole days at a time. Zero: DefaultAuditRetention;
	// negative: every record is kept.
	AuditRetention time.Duration
	// AuthFailures tunes how requests that fail client authentication are throttled per
	// remote address and aggregated in the audit log (zero values: throttle's defaults).
	AuthFailures throttle.Config
	Logger       *slog.Logger
}

// Bounds of background work, which has no caller waiting but must not hang either.
const (
	keysReloadTimeout = 10 * time.Second
	gcTimeout         = time.Minute
)

// DefaultAuditRetention is SPEC §8's default: 400 days.
const DefaultAuditRetention = 400 * 24 * time.Hour

// auditMaintenanceEvery is how often the audit log is prepared ahead and pruned: partitions
// are made a week ahead and removed a day at a time, so an hour is plenty, and a replica that
// starts does both at once.
const auditMaintenanceEvery = time.Hour

// auditRetryEvery is how soon a failed preparation of the audit log is tried again.
const auditRetryEvery = time.Minute

// MaxTokenLifetime bounds every token Mandate issues: a retired signing key stays published
// this long after its last signature.
const MaxTokenLifetime = 24 * time.Hour

// Server is a wired Mandate.
type Server struct {
	store   storage.Store
	gcStore storage.Store // the store under a longer deadline: a backlog takes time to delete
	// auditRetention is Options.AuditRetention resolved; negative: keep every record.
	auditRetention time.Duration
	// auditMaintained is closed when Run's first audit log maintenance has ended.
	auditMaintained chan struct{}
	log             *slog.Logger
	keys            *keys.Manager
	catalog         *exchange.Catalog
	// watching is closed once the change feed is first watched (tests wait for it).
	watching     chan struct{}
	watchingOnce sync.Once
	oauth        *authz.Server
	consent      *consent.Handler
	public       *http.ServeMux
	admin        http.Handler
	metrics      *metrics
	pprof        bool

	// BootstrapSecret is the admin client's secret when New created that client and generated
	// it; "" otherwise (it existed, or Options.BootstrapAdminSecret was used).
	BootstrapSecret string
	// BootstrapCreated reports whether New created the admin client.
	BootstrapCreated bool
}

// New wires a Server over o.Store: it loads (or creates) the signing keys and creates the
// bootstrap admin client when the store has none. It does not start background work: call
// Run for that.
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Store == nil || o.Master == nil || o.Issuer == "" {
		return nil, errors.New("server: Store, Master and Issuer are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.SigningAlg == "" {
		o.SigningAlg = keys.ES256
	}
	if o.DatabaseTimeout <= 0 {
		o.DatabaseTimeout = DefaultDatabaseTimeout
	}
	m := newMetrics()
	// Concurrent issuances share a commit (group commit); each caller still waits at most
	// the database timeout for its own answer.
	batched := groupcommit.Wrap(o.Store, groupcommit.Options{Observe: func(n int) { m.batches.Observe(float64(n)) }})
	store := countingStore{Store: deadlineStore{s: batched, timeout: o.DatabaseTimeout}, m: m}
	s := &Server{store: store, gcStore: deadlineStore{s: o.Store, timeout: gcTimeout}, log: o.Logger, metrics: m, pprof: o.Pprof,
		watching: make(chan struct{}), auditRetention: o.AuditRetention, auditMaintained: make(chan struct{})}
	if s.auditRetention == 0 {
		s.auditRetention = DefaultAuditRetention
	}

	sealer, err := keys.NewSealer(o.Master)
	if err != nil {
		return nil, err
	}
	s.keys, err = keys.NewManager(store, sealer, keys.Options{
		Alg:              o.SigningAlg,
		RotateEvery:      o.KeyRotation,
		PublishAhead:     o.KeyPublishAhead,
		TokenLifetimeMax: MaxTokenLifetime,
		ReloadTimeout:    keysReloadTimeout,
		Logger:           o.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := s.keys.Ensure(ctx); err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}

	hasher := secret.NewHasher(o.Master)
	generated, created, err := api.Bootstrap(ctx, store, hasher, o.BootstrapAdminSecret, time.Now())
	if err != nil {
		return nil, fmt.Errorf("bootstrap admin client: %w", err)
	}
	s.BootstrapCreated = created
	if created {
		if o.BootstrapAdminSecret == "" {
			s.BootstrapSecret = generated
		}
		o.Logger.Info("created the bootstrap admin client", "client_id", api.AdminClientID)
	}

	svc, err := exchange.New(exchange.Deps{
		Store:    announcingStore{store}, // a grant request's approval creates a grant
		Verifier: &envelope.Verifier{Issuer: o.Issuer},
		KeySets:  exchange.NewKeySets(exchange.RemoteKeySets(envelope.RemoteOptions{AllowLoopback: o.AllowLoopbackJWKSURI})),
		Signer:   s.keys,
		Logger:   o.Logger,
	}, exchange.Config{Issuer: o.Issuer, CacheTTL: o.CacheTTL, MaxActDepth: o.MaxActDepth})
	if err != nil {
		return nil, err
	}
	s.catalog = svc.Catalog()
	s.oauth = authz.NewHandler(authz.Deps{
		Issuer:   o.Issuer,
		Exchange: svc,
		Store:    store,
		Keys:     s.keys,
		Hasher:   hasher,
		Logger:   o.Logger,
		Ready:    s.Ready,

		Throttle:          o.AuthFailures,
		OnUnauthenticated: m.unauthenticated,
	})
	s.consent = consent.New(consent.Deps{
		Issuer: o.Issuer, Store: store, Exchange: svc, OIDC: o.OIDC, Logger: o.Logger,
	})
	// The consent pages beside the OAuth endpoints, on the public listener.
	s.public = http.NewServeMux()
	s.public.Handle(consent.PathConsent, s.consent)
	s.public.Handle(consent.PathConsent+"/", s.consent)
	s.public.Handle(consent.PathAccount, s.consent)
	s.public.Handle(consent.PathAccount+"/", s.consent)
	s.public.Handle("/", s.oauth)
	s.admin = api.NewHandler(api.Deps{
		Store:         announcingStore{store},
		Hasher:        hasher,
		Auth:          adminAuth{s.oauth},
		Keys:          s.keys,
		Explain:       svc,
		GrantRequests: svc,
		Logger:        o.Logger,
		// Admin changes are rare: dropping the whole cache after each is simplest and exact.
		// This replica drops it on commit; the others when the change feed tells them
		// (changes.go), moments later.
		OnChange: svc.Catalog().InvalidateAll,

		AllowLoopbackJWKSURI: o.AllowLoopbackJWKSURI,
	})
	return s, nil
}

// Ready is /readyz: the store answers (within the database timeout) and a signing key is
// loaded.
func (s *Server) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if s.keys.ActiveKID() == "" {
		return errors.New("no active signing key")
	}
	return nil
}

// PublicHandler serves the OAuth endpoints, metadata, JWKS and health checks.
func (s *Server) PublicHandler() http.Handler { return withRequestID(s.metrics.instrument(s.public)) }

// AdminHandler serves /admin/v1, /metrics and, when enabled, /debug/pprof. It belongs on a
// listener that only operators reach.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(api.BasePath+"/", s.admin)
	mux.Handle("GET /metrics", s.metrics.handler())
	if s.pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return withRequestID(mux)
}

// Run does the background work until ctx ends: the key rotation loop, the watch on the
// store's change feed, the garbage collection of expired replay marks and issued-token
// records, and the aggregated audit records of failed client authentications (written every
// 10 s for the windows that closed, and for every open one when ctx ends: Run returns after
// that).
func (s *Server) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { s.oauth.RunAuthFailureLog(ctx, 10*time.Second) })
	wg.Go(func() {
		if err := s.keys.Run(ctx); err != nil {
			s.log.Error("key manager stopped", "err", err)
		}
	})
	wg.Go(func() { s.watchChanges(ctx) })
	wg.Go(func() { s.collectGarbage(ctx, 5*time.Minute) })
	wg.Go(func() { s.maintainAuditLog(ctx, auditMaintenanceEvery) })
	wg.Wait()
}

// maintainAuditLog readies the audit log's days ahead and removes the days past retention,
// at once and then every period. Either failing is logged and retried at the next period:
// records still land (in the catch-all partition, which the next preparation empties), and
// removal only waits.
func (s *Server) maintainAuditLog(ctx context.Context, every time.Duration) {
	first := true
	for {
		now := time.Now()
		wait := every
		if err := s.gcStore.PrepareAuditLog(ctx, now); err != nil && ctx.Err() == nil {
			// Soon again, not in an hour: a day left without its partition piles its records
			// up in the catch-all partition, and they all move, under a lock, when it is made.
			wait = min(every, auditRetryEvery)
			s.log.Warn("audit log: preparing the days ahead failed", "err", err, "retry_in", wait)
		}
		if s.auditRetention > 0 {
			before := now.Add(-s.auditRetention)
			pruned, err := s.gcStore.PruneAudit(ctx, before)
			switch {
			case err != nil && ctx.Err() == nil:
				s.log.Warn("audit log: removing old records failed", "err", err)
			case len(pruned.Partitions) > 0 || pruned.Rows > 0:
				s.log.Info("audit log: removed the records past retention",
					"before", storage.AuditDay(before).Format(time.DateOnly),
					"partitions", pruned.Partitions, "rows", pruned.Rows)
			}
		}
		if first {
			close(s.auditMaintained)
			first = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// collectGarbage deletes expired replay marks and the revocations of expired tokens: both are
// useless once what they guard has expired. (Issued tokens themselves are audit records, kept.)
func (s *Server) collectGarbage(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		marks, err1 := s.gcStore.DeleteExpiredReplayMarks(ctx, now)
		revs, err2 := s.gcStore.DeleteExpiredTokens(ctx, now.Add(-time.Minute))
		_, err3 := s.gcStore.DeleteExpiredSessions(ctx, now, now.Add(-s.consent.IdleTimeout()))
		if err := errors.Join(err1, err2, err3); err != nil && ctx.Err() == nil {
			s.log.Warn("garbage collection failed", "err", err)
			continue
		}
		if marks+revs > 0 {
			s.log.Debug("garbage collected", "replay_marks", marks, "token_revocations", revs)
		}
	}
}

// adminAuth adapts the OAuth server's bearer check to the admin API.
type adminAuth struct{ s *authz.Server }

func (a adminAuth) AuthenticateBearer(ctx context.Context, token string) (api.Principal, error) {
	id, scopes, err := a.s.AuthenticateBearer(ctx, token)
	if errors.Is(err, authz.ErrUnavailable) {
		return api.Principal{}, errors.Join(err, api.ErrUnavailable)
	}
	if err != nil {
		return api.Principal{}, err
	}
	return api.Principal{ClientID: id, Scopes: scopes}, nil
}
