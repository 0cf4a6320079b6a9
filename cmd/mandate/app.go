package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/mandatehq/mandate/api"
	"github.com/mandatehq/mandate/consent"
	"github.com/mandatehq/mandate/server"
	"github.com/mandatehq/mandate/storage"
	"github.com/mandatehq/mandate/throttle"
)

// app is the server on the store the configuration picked.
type app struct {
	*server.Server
	store     storage.Store
	storeKind string
	log       *slog.Logger
}

func newApp(ctx context.Context, cfg *config, log *slog.Logger, stdout io.Writer) (*app, error) {
	master, err := loadMaster(cfg, log)
	if err != nil {
		return nil, err
	}
	store, kind, err := openStore(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	var signIn *consent.OIDCConfig
	if cfg.OIDCIssuer != "" {
		signIn = &consent.OIDCConfig{Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID,
			ClientSecret: cfg.OIDCClientSecret, TenantClaim: cfg.OIDCTenantClaim}
	}
	srv, err := server.New(ctx, server.Options{
		OIDC:                 signIn,
		Store:                store,
		Master:               master,
		Issuer:               cfg.Issuer,
		SigningAlg:           cfg.SigningAlg,
		KeyRotation:          cfg.KeyRotation,
		KeyPublishAhead:      cfg.KeyPublishAhead,
		DatabaseTimeout:      cfg.DatabaseTimeout,
		MaxActDepth:          cfg.MaxActDepth,
		AuditRetention:       auditRetention(cfg.AuditRetention),
		BootstrapAdminSecret: cfg.BootstrapAdminSecret,
		Pprof:                cfg.Pprof,
		AllowLoopbackJWKSURI: cfg.AllowLoopbackJWKSURI,
		AuthFailures:         authFailures(cfg),
		Logger:               log,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	if srv.BootstrapCreated {
		printBootstrap(stdout, srv.BootstrapSecret)
	}
	return &app{Server: srv, store: store, storeKind: kind, log: log}, nil
}

// auditRetention maps the flag's 0 (keep every record) to the server's negative.
func auditRetention(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// authFailures is the throttle's configuration; --auth-failure-burst 0 turns throttling off.
func authFailures(cfg *config) throttle.Config {
	burst := cfg.AuthFailureBurst
	if burst == 0 {
		burst = -1
	}
	return throttle.Config{Burst: burst, Interval: cfg.AuthFailureInterval, MaxAddresses: cfg.AuthFailureMaxAddresses}
}

func (a *app) close() {
	if err := a.store.Close(); err != nil {
		a.log.Warn("closing the store", "err", err)
	}
}

// printBootstrap prints the bootstrap admin's credentials once, with the first commands to
// try. It goes to stdout, not the log: log pipelines keep lines forever. generated is "" when
// the secret came from MANDATE_BOOTSTRAP_ADMIN_SECRET.
func printBootstrap(w io.Writer, generated string) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nMandate created its admin client on this store.\n\n")
	fmt.Fprintf(&b, "  client_id:     %s\n", api.AdminClientID)
	if generated == "" {
		fmt.Fprintf(&b, "  client_secret: (from MANDATE_BOOTSTRAP_ADMIN_SECRET)\n\n")
		fmt.Fprintf(&b, "Try:\n  export MANDATE_ADMIN_CLIENT_SECRET=\"$MANDATE_BOOTSTRAP_ADMIN_SECRET\"\n  mandate clients list\n\n")
	} else {
		fmt.Fprintf(&b, "  client_secret: %s\n\n", generated)
		fmt.Fprintf(&b, "This secret is shown once. Keep it; rotate it with `mandate clients rotate-secret %s`.\n\n", api.AdminClientID)
		fmt.Fprintf(&b, "Try:\n  export MANDATE_ADMIN_CLIENT_SECRET='%s'\n  mandate clients list\n\n", generated)
	}
	_, _ = io.WriteString(w, b.String())
}
