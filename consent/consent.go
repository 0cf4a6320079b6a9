// Package consent serves the pages where people grant delegation themselves (SPEC §11): sign
// in with the organisation's OpenID Connect provider, review a grant request and approve or
// deny it, and see and revoke the grants that name them (/account). The pages are
// server-rendered HTML without JavaScript, under strict security headers; sessions live in
// the store (so any replica serves any request) behind an opaque cookie; every form carries a
// per-session CSRF token and is refused from another origin.
//
// What a request may ask for, what the user is shown and what an approval writes is package
// exchange's; this package is the HTTP side only. It must not import fosite, package authz,
// package api or a storage backend.
package consent

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// OIDCConfig is the organisation's sign-in provider. Mandate is a confidential client of it
// (authorization code with PKCE); its redirect URI is Mandate's issuer + PathCallback.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL; its discovery document is read on first use.
	Issuer       string
	ClientID     string
	ClientSecret string
	// TenantClaim names the ID token claim that says which tenant the user belongs to;
	// default "tenant".
	TenantClaim string
	// Scopes asked for besides openid; default profile.
	Scopes []string
	// HTTPClient talks to the provider; default a client with a 10 s timeout.
	HTTPClient *http.Client
}

// Deps are the Handler's collaborators. Issuer, Store and Exchange are required; OIDC nil
// means no sign-in provider is configured, and the pages say so.
type Deps struct {
	// Issuer is Mandate's issuer URL: pages, cookies and the redirect URI live under it.
	Issuer   string
	Store    storage.Store
	Exchange *exchange.Service
	OIDC     *OIDCConfig
	Logger   *slog.Logger
	Now      func() time.Time
	// IdleTimeout ends a session not used for this long (default 30 minutes);
	// SessionLifetime ends any session this long after sign-in (default 12 hours).
	IdleTimeout     time.Duration
	SessionLifetime time.Duration
}

// Paths served by the Handler.
const (
	PathConsent  = "/consent"
	PathAccount  = "/account"
	PathLogin    = "/consent/login"
	PathCallback = "/consent/callback"
	PathLogout   = "/consent/logout"
	PathStyle    = "/consent/style.css"
)

// loginLifetime bounds a sign-in in progress (the pre-login session holding state, nonce and
// the PKCE verifier).
const loginLifetime = 10 * time.Minute

// Handler serves the consent and account pages.
type Handler struct {
	issuer   string
	origin   string // scheme://host[:port] of the issuer, for the Origin check
	secure   bool   // https: Secure cookies with the __Host- prefix
	store    storage.Store
	exchange *exchange.Service
	oidc     *OIDCConfig
	log      *slog.Logger
	now      func() time.Time
	idle     time.Duration
	lifetime time.Duration
	pages    map[string]*template.Template
	mux      *http.ServeMux

	provMu   sync.Mutex
	provider *oidc.Provider // discovered on first use, then kept
}

//go:embed templates/*.html templates/style.css
var files embed.FS

// New returns the Handler. It panics when a required dependency is missing (a wiring bug).
func New(d Deps) *Handler {
	if d.Issuer == "" || d.Store == nil || d.Exchange == nil {
		panic("consent: Issuer, Store and Exchange are required")
	}
	u, err := url.Parse(d.Issuer)
	if err != nil || u.Host == "" {
		panic("consent: Issuer is not an absolute URL")
	}
	h := &Handler{
		issuer: strings.TrimSuffix(d.Issuer, "/"), origin: u.Scheme + "://" + u.Host, secure: u.Scheme == "https",
		store: d.Store, exchange: d.Exchange, oidc: d.OIDC, log: d.Logger, now: d.Now,
		idle: d.IdleTimeout, lifetime: d.SessionLifetime,
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.idle <= 0 {
		h.idle = 30 * time.Minute
	}
	if h.lifetime <= 0 {
		h.lifetime = 12 * time.Hour
	}
	if h.oidc != nil {
		c := *h.oidc
		if c.TenantClaim == "" {
			c.TenantClaim = "tenant"
		}
		if c.Scopes == nil {
			c.Scopes = []string{"profile"}
		}
		if c.HTTPClient == nil {
			c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
		}
		h.oidc = &c
	}
	h.pages = parsePages()
	h.mux = h.routes()
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// IdleTimeout is how long an unused session lives; the server's garbage collection uses it.
func (h *Handler) IdleTimeout() time.Duration { return h.idle }

// providerFor returns the discovered provider and the OAuth configuration over it.
// Discovery happens on first use, not at start, so Mandate starts while the provider is
// down; a failure is not kept, the next sign-in tries again.
func (h *Handler) providerFor(ctx context.Context) (*oidc.Provider, *oauth2.Config, error) {
	if h.oidc == nil {
		return nil, nil, errNotConfigured
	}
	h.provMu.Lock()
	defer h.provMu.Unlock()
	if h.provider == nil {
		ctx = oidc.ClientContext(ctx, h.oidc.HTTPClient)
		p, err := oidc.NewProvider(ctx, h.oidc.Issuer)
		if err != nil {
			return nil, nil, err
		}
		h.provider = p
	}
	return h.provider, &oauth2.Config{
		ClientID: h.oidc.ClientID, ClientSecret: h.oidc.ClientSecret,
		Endpoint:    h.provider.Endpoint(),
		RedirectURL: h.issuer + PathCallback,
		Scopes:      append([]string{oidc.ScopeOpenID}, h.oidc.Scopes...),
	}, nil
}

var errNotConfigured = errors.New("consent: no sign-in provider is configured")
