package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// runServe starts the public and admin listeners and serves until ctx is cancelled, then
// lets in-flight requests finish, closes the listeners and the store.
func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseServeConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg.LogLevel, cfg.LogFormat, cfg.LogRepeat)
	tuneGC(getenv)

	app, err := newApp(ctx, cfg, log, stdout)
	if err != nil {
		return err
	}
	defer app.close()

	public, err := listen("public", cfg.PublicAddr, app.PublicHandler(), log)
	if err != nil {
		return err
	}
	admin, err := listen("admin", cfg.AdminAddr, app.AdminHandler(), log)
	if err != nil {
		public.close()
		return err
	}

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		app.Run(bg)
	}()

	errc := make(chan error, 2)
	go func() { errc <- public.serve() }()
	go func() { errc <- admin.serve() }()
	log.Info("mandate started", "version", version, "issuer", cfg.Issuer, "store", app.storeKind)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-errc: // a listener failed on its own
		log.Error("listener failed", "err", err)
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	var shutErr error
	for _, s := range []*listener{public, admin} {
		if e := s.srv.Shutdown(shutCtx); e != nil {
			shutErr = errors.Join(shutErr, fmt.Errorf("%s listener: %w", s.name, e))
		}
	}
	stopBG()
	wg.Wait()
	if err != nil {
		return err
	}
	if shutErr == nil {
		log.Info("stopped cleanly")
	}
	return shutErr
}

// listener is one listening socket and the http.Server on it.
type listener struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

func listen(name, addr string, h http.Handler, log *slog.Logger) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener on %s: %w", name, addr, err)
	}
	log.Info("listening", "listener", name, "addr", ln.Addr().String())
	return &listener{name: name, ln: ln, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}, nil
}

func (s *listener) serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s listener: %w", s.name, err)
	}
	return nil
}

func (s *listener) close() { s.ln.Close() }
