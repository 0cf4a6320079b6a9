// Package api is Mandate's admin REST API, /admin/v1. openapi.yaml is the contract: the
// server interface and models in api.gen.go are generated from it, every request is
// validated against it before a handler sees it, and the tests check every answer against it.
//
// Requests flow one way: limits → bearer authentication and scope → route and validation
// against the spec → the generated strict server → the handlers here → storage. Every change
// and its audit record commit in one transaction.
//
// It must not import fosite, a database driver or a storage backend: the token verifier
// (Authenticator), the key manager (KeyAdmin) and the Store are passed in.
package api

import (
	"context"
	_ "embed"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// BasePath is where NewHandler serves the API.
const BasePath = "/admin/v1"

// Scopes an admin token can hold.
const (
	ScopeAdmin     = "mandate:admin"      // read and write
	ScopeAdminRead = "mandate:admin:read" // GET calls only
)

//go:embed openapi.yaml
var specYAML []byte

// Spec returns the OpenAPI document the API implements (openapi.yaml).
func Spec() []byte { return append([]byte(nil), specYAML...) }

// Principal is the admin client a bearer token was issued to.
type Principal struct {
	ClientID string
	Scopes   []string
}

// Authenticator verifies an admin bearer token. An error wrapping ErrUnavailable means the
// verifier could not decide (its store did not answer): 503, so an admin retries instead of
// doubting a valid token. Any other error means 401, and says nothing more to the caller.
type Authenticator interface {
	AuthenticateBearer(ctx context.Context, token string) (Principal, error)
}

// ErrUnavailable is what an Authenticator wraps when it could not decide.
var ErrUnavailable = errors.New("api: the token could not be checked now")

// KeyAdmin is what the API needs of Mandate's signing-key manager.
type KeyAdmin interface {
	// List returns every stored key, oldest first.
	List(ctx context.Context) ([]storage.SigningKey, error)
	// Rotate creates the next key and moves the schedule on; it returns the new key.
	Rotate(ctx context.Context) (*storage.SigningKey, error)
}

// Deps is what the API is built from. Logger and Now may be nil (slog.Default, time.Now).
type Deps struct {
	Store  storage.Store
	Hasher *secret.Hasher
	Auth   Authenticator
	Keys   KeyAdmin
	// Explain answers POST /explain: what the token endpoint would decide.
	Explain Explainer
	Logger  *slog.Logger
	Now     func() time.Time
	// GrantRequests decides grant requests for admins; nil makes approve and deny fail.
	GrantRequests GrantRequestDecider
	// OnChange, when set, is called after every committed change, so caches of clients and
	// audiences on this replica (package exchange's Catalog) drop what changed at once.
	OnChange func()
	// AllowLoopbackJWKSURI accepts http:// jwks_uri values on loopback hosts (development;
	// the server's --allow-loopback-jwks-uri, which also lets the key fetcher connect there).
	AllowLoopbackJWKSURI bool
}

// NewHandler returns the admin API, serving paths under BasePath. It panics on a missing
// dependency or an embedded spec that does not load: wiring faults, caught at start-up.
func NewHandler(d Deps) http.Handler {
	if d.Store == nil || d.Hasher == nil || d.Auth == nil || d.Keys == nil || d.Explain == nil {
		panic("api: NewHandler needs Store, Hasher, Auth, Keys and Explain")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	v, err := newValidator(specYAML)
	if err != nil {
		panic("api: embedded openapi.yaml: " + err.Error())
	}
	if d.OnChange != nil {
		d.Store = notifyOnCommit{Store: d.Store, notify: d.OnChange}
	}
	s := &server{
		store:   d.Store,
		hasher:  d.Hasher,
		keys:    d.Keys,
		explain: d.Explain,
		decider: d.GrantRequests,
		log:     d.Logger,
		now:     func() time.Time { return d.Now().UTC().Truncate(time.Microsecond) },

		allowLoopbackJWKS: d.AllowLoopbackJWKSURI,
	}
	p := problems{log: d.Logger}

	strict := NewStrictHandlerWithOptions(s, nil, StrictHTTPServerOptions{
		RequestErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			p.write(w, r, invalidField("body", "is not valid JSON for this call"))
		},
		ResponseErrorHandlerFunc: p.write,
	})
	router := chi.NewRouter()
	router.NotFound(func(w http.ResponseWriter, r *http.Request) { p.write(w, r, errNoRoute) })
	router.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) { p.write(w, r, errNoMethod) })
	routes := HandlerWithOptions(strict, ChiServerOptions{
		BaseURL:    BasePath,
		BaseRouter: router,
		ErrorHandlerFunc: func(w http.ResponseWriter, r *http.Request, err error) {
			p.write(w, r, paramError(err))
		},
	})

	var h http.Handler = routes
	h = validateRequests(v, p, h)
	h = authenticate(d.Auth, p, h)
	h = recoverPanics(p, h)
	return h
}

// notifyOnCommit calls notify after each transaction that committed. Every admin change goes
// through InTx (the change and its audit record commit together), so this is the one place
// that sees them all.
type notifyOnCommit struct {
	storage.Store
	notify func()
}

func (n notifyOnCommit) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	if err := n.Store.InTx(ctx, fn); err != nil {
		return err
	}
	n.notify()
	return nil
}
