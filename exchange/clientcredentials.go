package exchange

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// ClientCredentialsRequest is a client_credentials grant by an authenticated client.
type ClientCredentialsRequest struct {
	Client     *storage.Client
	Scopes     []string // requested; empty: every allowed scope
	RemoteAddr string
}

// ClientCredentials issues a token for the client itself: sub = client_id, no act, and aud =
// Mandate's issuer. Using the issuer as aud makes these tokens good for Mandate's own admin
// API and nothing else; service-to-service callers that need a downstream audience use the
// token exchange with a service actor instead. Requested scopes must be within the client's
// allowed_scopes; without scope every allowed scope is issued.
func (s *Service) ClientCredentials(ctx context.Context, req ClientCredentialsRequest) (*Result, error) {
	now := s.now()
	c := req.Client
	rec := &storage.AuditRecord{
		Event: EventClientCredentials, ClientID: c.ID, RemoteAddr: req.RemoteAddr,
		RequestedScopes: req.Scopes, Audience: s.cfg.Issuer,
	}
	res, err := s.clientCredentials(ctx, now, req, rec)
	if err != nil {
		s.audit(ctx, now, rec, err)
		return nil, err
	}
	return res, nil
}

func (s *Service) clientCredentials(ctx context.Context, now time.Time, req ClientCredentialsRequest, rec *storage.AuditRecord) (*Result, error) {
	c := req.Client
	if !slices.Contains(c.GrantTypes, GrantTypeClientCredentials) {
		return nil, deny(CodeUnauthorizedClient, ReasonGrantTypeNotAllowed,
			"the client is not allowed to use the client_credentials grant")
	}
	scopes := c.AllowedScopes
	if len(req.Scopes) > 0 {
		scopes = nil
		for _, sc := range req.Scopes {
			if !slices.Contains(c.AllowedScopes, sc) {
				return nil, deny(CodeInvalidScope, ReasonScopeNotAllowed, "a requested scope is not allowed for this client")
			}
			if !slices.Contains(scopes, sc) {
				scopes = append(scopes, sc)
			}
		}
	}
	if len(scopes) == 0 {
		return nil, deny(CodeInvalidScope, ReasonNoScope, "the client has no allowed scopes")
	}
	ttl := s.cfg.DefaultTokenTTL
	if c.MaxTokenTTL > 0 {
		ttl = min(ttl, c.MaxTokenTTL)
	}
	ttl = max(ttl.Truncate(time.Second), time.Second)
	iat := storage.IssuedAt(now)
	claims := TokenClaims{
		Issuer: s.cfg.Issuer, Subject: c.ID, Audience: s.cfg.Issuer,
		IssuedAt: iat.Unix(), ExpiresAt: iat.Add(ttl).Unix(), JTI: storage.NewID("at"),
		ClientID: c.ID, Scope: strings.Join(scopes, " "),
	}
	token, err := s.sign(&claims)
	if err != nil {
		return nil, err
	}
	rec.GrantedScopes, rec.TokenJTI = scopes, claims.JTI
	rec.Outcome, rec.Reason = storage.OutcomeGranted, ReasonGranted
	rec.ID, rec.Time = storage.NewID("evt"), now
	err = s.store.RecordIssuance(ctx, storage.Issuance{Audit: *rec, TokenExpiresAt: iat.Add(ttl)})
	if err != nil {
		rec.GrantedScopes, rec.TokenJTI = nil, ""
		if errors.Is(err, storage.ErrConflict) { // a jti collision: practically never
			return nil, fail(CodeServerError, ReasonSigningFailed, "the token could not be issued", err)
		}
		return nil, unavailable(err)
	}
	return &Result{AccessToken: token, IssuedTokenType: TokenTypeAccessToken,
		ExpiresIn: int64(ttl / time.Second), Scope: claims.Scope}, nil
}
