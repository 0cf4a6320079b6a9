package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/mandatehq/mandate/api"
	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/keys"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// app is the wired server: one store, one key manager, the OAuth handler and the admin API.
type app struct {
	cfg       *config
	log       *slog.Logger
	store     storage.Store
	storeKind string
	keys      *keys.Manager
	oauth     *authz.Server
	admin     http.Handler
	metrics   *metrics
}

// maxTokenLifetime bounds every token Mandate issues (audience and client TTLs are capped
// here too): a retired signing key stays published this long after its last signature.
const maxTokenLifetime = 24 * time.Hour

func newApp(ctx context.Context, cfg *config, log *slog.Logger, stdout io.Writer) (*app, error) {
	master, err := loadMaster(cfg, log)
	if err != nil {
		return nil, err
	}
	store, kind, err := openStore(ctx, cfg.Database, cfg.DatabaseMaxConns, cfg.AutoMigrate, log)
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	a := &app{cfg: cfg, log: log, store: countingStore{Store: store, m: m}, storeKind: kind, metrics: m}
	if err := a.wire(ctx, master, stdout); err != nil {
		store.Close()
		return nil, err
	}
	return a, nil
}

func (a *app) wire(ctx context.Context, master *secret.Master, stdout io.Writer) error {
	sealer, err := keys.NewSealer(master)
	if err != nil {
		return err
	}
	a.keys, err = keys.NewManager(a.store, sealer, keys.Options{
		Alg:              a.cfg.SigningAlg,
		RotateEvery:      a.cfg.KeyRotation,
		PublishAhead:     a.cfg.KeyPublishAhead,
		TokenLifetimeMax: maxTokenLifetime,
		Logger:           a.log,
	})
	if err != nil {
		return err
	}
	if err := a.keys.Ensure(ctx); err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}

	hasher := secret.NewHasher(master)
	adminSecret, created, err := api.Bootstrap(ctx, a.store, hasher, a.cfg.BootstrapAdminSecret, time.Now())
	if err != nil {
		return fmt.Errorf("bootstrap admin client: %w", err)
	}
	if created {
		printBootstrap(stdout, a.cfg, adminSecret, a.cfg.BootstrapAdminSecret != "")
		a.log.Info("created the bootstrap admin client", "client_id", api.AdminClientID)
	}

	svc, err := exchange.New(exchange.Deps{
		Store:    a.store,
		Verifier: &envelope.Verifier{Issuer: a.cfg.Issuer},
		KeySets:  exchange.NewKeySets(exchange.RemoteKeySets(envelope.RemoteOptions{})),
		Signer:   a.keys,
		Logger:   a.log,
	}, exchange.Config{Issuer: a.cfg.Issuer})
	if err != nil {
		return err
	}
	a.oauth = authz.NewHandler(authz.Deps{
		Issuer:   a.cfg.Issuer,
		Exchange: svc,
		Store:    a.store,
		Keys:     a.keys,
		Hasher:   hasher,
		Logger:   a.log,
		Ready:    a.ready,
	})
	a.admin = api.NewHandler(api.Deps{
		Store:  a.store,
		Hasher: hasher,
		Auth:   adminAuth{a.oauth},
		Keys:   a.keys,
		Logger: a.log,
		// Admin changes are rare: dropping the whole cache after each is simplest and exact.
		// Other replicas see a change within the cache TTL (exchange.DefaultCacheTTL).
		OnChange: svc.Catalog().InvalidateAll,
	})
	return nil
}

// ready is /readyz: the store answers and a signing key is loaded.
func (a *app) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.store.Ping(ctx); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if a.keys.ActiveKID() == "" {
		return errors.New("no active signing key")
	}
	return nil
}

func (a *app) publicHandler() http.Handler { return a.metrics.instrument(a.oauth) }

func (a *app) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(api.BasePath+"/", a.admin)
	mux.Handle("GET /metrics", a.metrics.handler())
	if a.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// startBackground runs the key rotation loop and the replay/token garbage collector until
// ctx ends.
func (a *app) startBackground(ctx context.Context, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := a.keys.Run(ctx); err != nil {
			a.log.Error("key manager stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		a.collectGarbage(ctx, 5*time.Minute)
	}()
}

// collectGarbage deletes expired replay marks and issued-token records: both are useless
// once what they guard has expired.
func (a *app) collectGarbage(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		marks, err1 := a.store.DeleteExpiredReplayMarks(ctx, now)
		toks, err2 := a.store.DeleteExpiredTokens(ctx, now.Add(-time.Minute))
		if err := errors.Join(err1, err2); err != nil && ctx.Err() == nil {
			a.log.Warn("garbage collection failed", "err", err)
			continue
		}
		if marks+toks > 0 {
			a.log.Debug("garbage collected", "replay_marks", marks, "tokens", toks)
		}
	}
}

func (a *app) close() {
	if err := a.store.Close(); err != nil {
		a.log.Warn("closing the store", "err", err)
	}
}

// adminAuth adapts the OAuth server's bearer check to the admin API.
type adminAuth struct{ s *authz.Server }

func (a adminAuth) AuthenticateBearer(ctx context.Context, token string) (api.Principal, error) {
	id, scopes, err := a.s.AuthenticateBearer(ctx, token)
	if err != nil {
		return api.Principal{}, err
	}
	return api.Principal{ClientID: id, Scopes: scopes}, nil
}

// printBootstrap prints the bootstrap admin's credentials once, with the first commands to
// try. It goes to stdout, not the log: log pipelines keep lines forever.
func printBootstrap(w io.Writer, cfg *config, secretValue string, preset bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nMandate created its admin client on this store.\n\n")
	fmt.Fprintf(&b, "  client_id:     %s\n", api.AdminClientID)
	if preset {
		fmt.Fprintf(&b, "  client_secret: (from MANDATE_BOOTSTRAP_ADMIN_SECRET)\n\n")
	} else {
		fmt.Fprintf(&b, "  client_secret: %s\n\n", secretValue)
		fmt.Fprintf(&b, "This secret is shown once. Keep it; rotate it with `mandate clients rotate-secret %s`.\n\n", api.AdminClientID)
	}
	fmt.Fprintf(&b, "Try:\n  export MANDATE_ADMIN_CLIENT_SECRET='%s'\n  mandate clients list\n\n", orPlaceholder(secretValue, preset))
	_, _ = io.WriteString(w, b.String())
}

func orPlaceholder(s string, preset bool) string {
	if preset {
		return "$MANDATE_BOOTSTRAP_ADMIN_SECRET"
	}
	return s
}
