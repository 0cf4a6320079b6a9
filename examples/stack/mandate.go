package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"

	"github.com/mandatehq/mandate/consent"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/server"
	"github.com/mandatehq/mandate/storage/sqlite"
)

// mandate is a Mandate server in this process: package server, as cmd/mandate runs it, on a
// SQLite store and two loopback listeners.
type mandate struct {
	Issuer      string // public listener URL = issuer
	AdminURL    string
	AdminSecret string
	close       func()
}

func startMandate(ctx context.Context, dir string, log *slog.Logger, signIn *consent.OIDCConfig) (*mandate, error) {
	pubLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pubLn.Close()
		return nil, err
	}
	issuer := "http://" + pubLn.Addr().String()
	fail := func(err error) (*mandate, error) {
		pubLn.Close()
		adminLn.Close()
		return nil, err
	}

	master, err := secret.NewMaster(randomString(48))
	if err != nil {
		return fail(err)
	}
	store, err := sqlite.Open(ctx, filepath.Join(dir, "mandate.db"))
	if err != nil {
		return fail(err)
	}
	adminSecret := randomString(40)
	srv, err := server.New(ctx, server.Options{
		Store: store, Master: master, Issuer: issuer,
		BootstrapAdminSecret: adminSecret, Logger: log, OIDC: signIn,
	})
	if err != nil {
		store.Close()
		return fail(err)
	}
	pubSrv := &http.Server{Handler: srv.PublicHandler()}
	adminSrv := &http.Server{Handler: srv.AdminHandler()}
	go pubSrv.Serve(pubLn)
	go adminSrv.Serve(adminLn)
	return &mandate{
		Issuer: issuer, AdminURL: "http://" + adminLn.Addr().String(), AdminSecret: adminSecret,
		close: func() {
			pubSrv.Close()
			adminSrv.Close()
			store.Close()
		},
	}, nil
}

func randomString(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)[:n]
}
