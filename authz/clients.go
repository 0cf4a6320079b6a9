package authz

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v3"
	"github.com/ory/fosite"

	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// Token endpoint authentication methods (RFC 7591 §2).
const (
	AuthClientSecretBasic = "client_secret_basic"
	AuthClientSecretPost  = "client_secret_post"
	AuthPrivateKeyJWT     = "private_key_jwt"
)

// client presents a stored client to fosite.
type client struct {
	c   *storage.Client
	now time.Time // when the request arrived: decides whether the rotated secret still counts
}

var (
	_ fosite.ClientWithSecretRotation = (*client)(nil)
	_ fosite.OpenIDConnectClient      = (*client)(nil)
)

func (c *client) GetID() string                      { return c.c.ID }
func (c *client) GetHashedSecret() []byte            { return c.c.SecretHash }
func (c *client) GetRedirectURIs() []string          { return nil }
func (c *client) GetGrantTypes() fosite.Arguments    { return c.c.GrantTypes }
func (c *client) GetResponseTypes() fosite.Arguments { return nil }
func (c *client) GetScopes() fosite.Arguments        { return c.c.AllowedScopes }
func (c *client) IsPublic() bool                     { return false } // every client authenticates
func (c *client) GetAudience() fosite.Arguments      { return c.c.AllowedAudiences }

// GetRotatedHashes offers the previous secret during its grace period only.
func (c *client) GetRotatedHashes() [][]byte {
	if len(c.c.PreviousSecretHash) > 0 && c.now.Before(c.c.PreviousSecretExpiresAt) {
		return [][]byte{c.c.PreviousSecretHash}
	}
	return nil
}

// The OpenIDConnectClient methods make fosite enforce the registered secret method (Basic
// versus post). Keys and signing algorithms are unused: private_key_jwt is ours.
func (c *client) GetRequestURIs() []string                     { return nil }
func (c *client) GetJSONWebKeys() *jose.JSONWebKeySet          { return nil }
func (c *client) GetJSONWebKeysURI() string                    { return "" }
func (c *client) GetRequestObjectSigningAlgorithm() string     { return "" }
func (c *client) GetTokenEndpointAuthSigningAlgorithm() string { return "" }
func (c *client) GetTokenEndpointAuthMethod() string {
	if c.c.TokenEndpointAuthMethod == "" {
		return AuthClientSecretBasic // RFC 7591's default
	}
	return c.c.TokenEndpointAuthMethod
}

// fositeStore is the fosite.Storage over our catalog and replay store.
type fositeStore struct {
	catalog *exchange.Catalog
	replay  storage.ReplayStore
	now     func() time.Time
}

// GetClient loads an enabled client. A disabled client is reported as unknown, so it fails
// authentication exactly like a wrong id.
func (s *fositeStore) GetClient(ctx context.Context, id string) (fosite.Client, error) {
	c, err := s.catalog.Client(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return nil, fosite.ErrNotFound
	case err != nil:
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	case c.Disabled:
		return nil, fosite.ErrNotFound
	}
	return &client{c: c, now: s.now()}, nil
}

// ClientAssertionJWTValid and SetClientAssertionJWT serve fosite's own private_key_jwt path,
// which is not used (clientauth.go); they are implemented correctly all the same.
func (s *fositeStore) ClientAssertionJWTValid(context.Context, string) error { return nil }

func (s *fositeStore) SetClientAssertionJWT(ctx context.Context, jti string, exp time.Time) error {
	err := s.replay.MarkUsed(ctx, storage.ReplayMark{Key: "fosite-jti|" + jti, ExpiresAt: exp}, s.now())
	if errors.Is(err, storage.ErrConflict) {
		return fosite.ErrJTIKnown
	}
	return err
}

// secretHasher is fosite's Hasher over secret.Hasher: a keyed HMAC compared in constant time.
// Mandate generates secrets with 256 bits of entropy, so a slow password hash would add tens
// of milliseconds per request for no security gain (SPEC §4).
type secretHasher struct{ h *secret.Hasher }

var errSecretMismatch = errors.New("client secret mismatch")

func (s secretHasher) Compare(_ context.Context, hash, data []byte) error {
	if s.h.Verify(string(data), hash) {
		return nil
	}
	return errSecretMismatch
}

func (s secretHasher) Hash(_ context.Context, data []byte) ([]byte, error) {
	return s.h.Hash(string(data)), nil
}
