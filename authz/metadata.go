package authz

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/exchange"
)

// metadata is the RFC 8414 document. subject_token_types_supported is Mandate's own member
// (RFC 8693 defines none) naming the subject_token_type values the token endpoint accepts.
type metadata struct {
	Issuer                                     string   `json:"issuer"`
	TokenEndpoint                              string   `json:"token_endpoint"`
	JWKSURI                                    string   `json:"jwks_uri"`
	IntrospectionEndpoint                      string   `json:"introspection_endpoint"`
	RevocationEndpoint                         string   `json:"revocation_endpoint"`
	GrantTypesSupported                        []string `json:"grant_types_supported"`
	ResponseTypesSupported                     []string `json:"response_types_supported"`
	TokenEndpointAuthMethodsSupported          []string `json:"token_endpoint_auth_methods_supported"`
	TokenEndpointAuthSigningAlgValuesSupported []string `json:"token_endpoint_auth_signing_alg_values_supported"`
	IntrospectionEndpointAuthMethodsSupported  []string `json:"introspection_endpoint_auth_methods_supported"`
	RevocationEndpointAuthMethodsSupported     []string `json:"revocation_endpoint_auth_methods_supported"`
	SubjectTokenTypesSupported                 []string `json:"subject_token_types_supported"`
	RequestedTokenTypesSupported               []string `json:"requested_token_types_supported"`
	// GrantRequestEndpoint is where a client asks a user for a grant (SPEC §11).
	GrantRequestEndpoint string `json:"grant_request_endpoint"`
}

var authMethods = []string{AuthClientSecretBasic, AuthClientSecretPost, AuthPrivateKeyJWT}

func (s *Server) handleMetadata() http.Handler {
	doc, err := json.Marshal(metadata{
		Issuer:                            s.issuer,
		TokenEndpoint:                     s.issuer + PathToken,
		JWKSURI:                           s.issuer + PathJWKS,
		IntrospectionEndpoint:             s.issuer + PathIntrospect,
		RevocationEndpoint:                s.issuer + PathRevoke,
		GrantTypesSupported:               []string{exchange.GrantTypeTokenExchange, exchange.GrantTypeClientCredentials},
		ResponseTypesSupported:            []string{}, // no authorization endpoint
		TokenEndpointAuthMethodsSupported: authMethods,
		TokenEndpointAuthSigningAlgValuesSupported: assertionAlgs,
		IntrospectionEndpointAuthMethodsSupported:  authMethods,
		RevocationEndpointAuthMethodsSupported:     authMethods,
		SubjectTokenTypesSupported:                 []string{envelope.TokenType, envelope.JWTTokenType},
		RequestedTokenTypesSupported:               []string{exchange.TokenTypeAccessToken, exchange.TokenTypeJWT},
		GrantRequestEndpoint:                       s.issuer + PathGrantRequests,
	})
	if err != nil {
		panic(err) // a fixed struct of strings always marshals
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "public, max-age=3600")
		_, _ = w.Write(doc)
	})
}

// handleJWKS publishes the public keys with a short max-age and an entity tag, so verifiers
// poll cheaply (304) and pick up a next key well before it signs.
func (s *Server) handleJWKS() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc, etag := s.keys.JWKS()
		h := w.Header()
		h.Set("Cache-Control", fmt.Sprintf("public, max-age=%d", int(s.jwksAge/time.Second)))
		if etag != "" {
			h.Set("ETag", etag)
			if etagMatch(r.Header.Get("If-None-Match"), etag) {
				w.WriteHeader(http.StatusNotModified)
				return
			}
		}
		h.Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
}

// etagMatch applies If-None-Match's weak comparison (RFC 9110 §13.1.2).
func etagMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	strip := func(t string) string { return strings.TrimPrefix(strings.TrimSpace(t), "W/") }
	for _, t := range strings.Split(header, ",") {
		if strings.TrimSpace(t) == "*" || strip(t) == strip(etag) {
			return true
		}
	}
	return false
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
}

func (s *Server) handleReadyz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.ready(r.Context()); err != nil {
			s.log.WarnContext(r.Context(), "not ready", "err", err)
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}
