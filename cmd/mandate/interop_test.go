package main

// Interop: OAuth clients and verifiers nobody here wrote complete an exchange against the real
// server, and the issued token verifies with a third-party verifier fed only the issuer's
// discovery document or JWKS. These catch wire-format drift that our own tests, which share
// our assumptions, cannot.

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/zitadel/oidc/v3/pkg/client/tokenexchange"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/mandatehq/mandate/envelope"
)

func TestInteropThirdPartyClients(t *testing.T) {
	onBackends(t, func(t *testing.T, s *e2eServer) {
		f := provision(t, s)
		main := f.main
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		// go-oidc discovers the issuer itself (it requires the document's issuer to equal the
		// URL it was given) and fetches the JWKS from jwks_uri. It defaults to RS256 only,
		// and Mandate signs ES256, so the algorithm is named; ClientID is the audience a
		// resource server checks for (go-oidc requires it in aud).
		provider, err := gooidc.NewProvider(ctx, s.issuer)
		if err != nil {
			t.Fatalf("go-oidc discovery: %v", err)
		}
		verifier := func(audience string) *gooidc.IDTokenVerifier {
			return provider.Verifier(&gooidc.Config{ClientID: audience, SupportedSigningAlgs: []string{gooidc.ES256}})
		}

		// jwx's jwk.Cache is the other verifier a resource server would use.
		cache, err := jwk.NewCache(ctx, httprc.NewClient())
		if err != nil {
			t.Fatal(err)
		}
		jwksURL := s.issuer + "/.well-known/jwks.json"
		if err := cache.Register(ctx, jwksURL); err != nil {
			t.Fatalf("jwk.Cache register: %v", err)
		}

		t.Run("x/oauth2 clientcredentials with token exchange parameters", func(t *testing.T) {
			// clientcredentials.Config.Token builds grant_type=client_credentials itself but
			// lets EndpointParams override grant_type, and grant_type alone ("to allow
			// interoperability with non-compliant implementations", clientcredentials.go):
			// any other clash is an error. So EndpointParams carrying the RFC 8693 grant_type
			// and its parameters sends a proper token exchange, authenticated the way the
			// config says, and the RFC 6749 §5.1 answer parses into an oauth2.Token.
			// (oauth2.Config.Exchange is no way round: it always sends
			// grant_type=authorization_code with a code.) Use Token, once per envelope: the
			// config's TokenSource would refresh by resending the same envelope, which
			// Mandate refuses as a replay.
			for _, style := range []struct {
				name   string
				client *e2eClient
				style  oauth2.AuthStyle
			}{
				{"client_secret_basic", main, oauth2.AuthStyleInHeader},
				{"client_secret_post", f.post, oauth2.AuthStyleInParams},
			} {
				t.Run(style.name, func(t *testing.T) {
					envTok := style.client.sign(t, style.client.claims(s, "user_1", "xoauth2-"+style.name, "orders:read", "orders:write"))
					cfg := clientcredentials.Config{
						ClientID:     style.client.ID,
						ClientSecret: style.client.Secret,
						TokenURL:     s.issuer + "/oauth2/token",
						Scopes:       []string{"orders:read"},
						AuthStyle:    style.style,
						EndpointParams: url.Values{
							"grant_type":         {grantTE},
							"subject_token":      {envTok},
							"subject_token_type": {envelope.TokenType},
							"audience":           {"orders_api"},
						},
					}
					tok, err := cfg.Token(ctx)
					if err != nil {
						t.Fatalf("x/oauth2 exchange: %v", err)
					}
					if tok.TokenType != "Bearer" || tok.Extra("issued_token_type") != typeAccess || tok.RefreshToken != "" {
						t.Errorf("token_type %q issued_token_type %v refresh %q", tok.TokenType, tok.Extra("issued_token_type"), tok.RefreshToken)
					}
					if tok.Extra("scope") != "orders:read" {
						t.Errorf("scope = %v, want orders:read", tok.Extra("scope"))
					}
					if d := time.Until(tok.Expiry); d <= 0 || d > 5*time.Minute+5*time.Second {
						t.Errorf("expiry in %v", d)
					}

					// jwx, keys from jwk.Cache.
					set, err := cache.Lookup(ctx, jwksURL)
					if err != nil {
						t.Fatalf("jwk.Cache lookup: %v", err)
					}
					jt, err := jwt.Parse([]byte(tok.AccessToken), jwt.WithKeySet(set), jwt.WithValidate(true),
						jwt.WithIssuer(s.issuer), jwt.WithAudience("orders_api"))
					if err != nil {
						t.Fatalf("jwx does not verify the token: %v", err)
					}
					if sub, _ := jt.Subject(); sub != "user_1" {
						t.Errorf("sub = %q", sub)
					}
					if _, err := jwt.Parse([]byte(tok.AccessToken), jwt.WithKeySet(set), jwt.WithValidate(true),
						jwt.WithIssuer(s.issuer), jwt.WithAudience("billing_api")); err == nil {
						t.Errorf("jwx accepted the token for another audience")
					}
					// And go-oidc.
					if _, err := verifier("orders_api").Verify(ctx, tok.AccessToken); err != nil {
						t.Errorf("go-oidc does not verify the token: %v", err)
					}

					// The same request again is a replay; x/oauth2 surfaces the RFC 6749 error.
					_, err = cfg.Token(ctx)
					var re *oauth2.RetrieveError
					if !errors.As(err, &re) || re.ErrorCode != "invalid_request" || re.Response.StatusCode != http.StatusBadRequest {
						t.Fatalf("replayed exchange: %v, want a 400 invalid_request RetrieveError", err)
					}
				})
			}
		})

		t.Run("zitadel/oidc tokenexchange", func(t *testing.T) {
			// No static endpoint: the exchanger discovers the token endpoint from the issuer's
			// /.well-known/openid-configuration and checks its issuer.
			te, err := tokenexchange.NewTokenExchangerClientCredentials(ctx, s.issuer, main.ID, main.Secret)
			if err != nil {
				t.Fatalf("zitadel discovery: %v", err)
			}
			if te.TokenEndpoint() != s.issuer+"/oauth2/token" {
				t.Errorf("discovered token endpoint %q", te.TokenEndpoint())
			}
			cl := main.claims(s, "user_1", "zitadel", "orders:read", "orders:write")
			cl.Act = &envelope.Act{Sub: "upstream-agent"}
			envTok := main.sign(t, cl)
			resp, err := tokenexchange.ExchangeToken(ctx, te, envTok, zoidc.TokenType(envelope.TokenType), "", "",
				nil, []string{"orders_api"}, []string{"orders:read", "orders:write"}, zoidc.JWTTokenType)
			if err != nil {
				t.Fatalf("zitadel exchange: %v", err)
			}
			if resp.IssuedTokenType != zoidc.JWTTokenType || resp.TokenType != "Bearer" || resp.RefreshToken != "" {
				t.Errorf("issued_token_type %q token_type %q refresh %q", resp.IssuedTokenType, resp.TokenType, resp.RefreshToken)
			}
			if strings.Join(resp.Scopes, " ") != "orders:read orders:write" || resp.ExpiresIn == 0 || resp.ExpiresIn > 300 {
				t.Errorf("scope %v expires_in %d", resp.Scopes, resp.ExpiresIn)
			}

			idt, err := verifier("orders_api").Verify(ctx, resp.AccessToken)
			if err != nil {
				t.Fatalf("go-oidc does not verify the token: %v", err)
			}
			var claims struct {
				ClientID       string        `json:"client_id"`
				DelegationMode string        `json:"delegation_mode"`
				TraceID        string        `json:"trace_id"`
				Act            *envelope.Act `json:"act"`
			}
			if err := idt.Claims(&claims); err != nil {
				t.Fatal(err)
			}
			if idt.Subject != "user_1" || claims.ClientID != main.ID || claims.DelegationMode != "on_behalf_of" || claims.TraceID != "zitadel" {
				t.Errorf("claims: sub %q %+v", idt.Subject, claims)
			}
			if a := claims.Act; a == nil || a.Sub != "agent_456" || a.ClientID != main.ID || a.Act == nil || a.Act.Sub != "upstream-agent" {
				t.Errorf("act = %+v", claims.Act)
			}
			if _, err := verifier("billing_api").Verify(ctx, resp.AccessToken); err == nil {
				t.Errorf("go-oidc accepted the token for another audience")
			}
			tampered := resp.AccessToken[:len(resp.AccessToken)-4] + "AAAA"
			if _, err := verifier("orders_api").Verify(ctx, tampered); err == nil {
				t.Errorf("go-oidc accepted a tampered token")
			}

			// zitadel parses Mandate's error answer as an RFC 6749 error.
			_, err = tokenexchange.ExchangeToken(ctx, te, envTok, zoidc.TokenType(envelope.TokenType), "", "",
				nil, []string{"orders_api"}, nil, "")
			var oe *zoidc.Error
			if !errors.As(err, &oe) || oe.ErrorType != zoidc.InvalidRequest {
				t.Fatalf("replayed exchange: %v, want invalid_request", err)
			}
		})
	})
}
