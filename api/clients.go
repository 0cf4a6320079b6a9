package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/mandatehq/mandate/storage"
)

// Client authentication methods and grant types, as stored.
const (
	AuthSecretBasic   = "client_secret_basic"
	AuthSecretPost    = "client_secret_post"
	AuthPrivateKeyJWT = "private_key_jwt"

	GrantTypeTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	GrantTypeClientCredentials = "client_credentials"
)

func usesSecret(method string) bool { return method == AuthSecretBasic || method == AuthSecretPost }

func (s *server) ListClients(ctx context.Context, req ListClientsRequestObject) (ListClientsResponseObject, error) {
	items, next, err := s.store.ListClients(ctx, page(req.Params.Cursor, req.Params.Limit))
	if err != nil {
		return nil, err
	}
	out := ListClients200JSONResponse{Items: make([]Client, 0, len(items)), NextCursor: nextCursor(next)}
	for i := range items {
		out.Items = append(out.Items, s.clientOut(&items[i]))
	}
	return out, nil
}

func (s *server) GetClient(ctx context.Context, req GetClientRequestObject) (GetClientResponseObject, error) {
	c, err := s.store.GetClient(ctx, req.ClientID)
	if err != nil {
		return nil, withDetail(err, "no such client")
	}
	return GetClient200JSONResponse(s.clientOut(c)), nil
}

func (s *server) CreateClient(ctx context.Context, req CreateClientRequestObject) (CreateClientResponseObject, error) {
	b := req.Body
	now := s.now()
	c := &storage.Client{
		ID:                      deref(b.ClientID),
		Name:                    deref(b.Name),
		TokenEndpointAuthMethod: string(deref(b.TokenEndpointAuthMethod)),
		GrantTypes:              []string{GrantTypeTokenExchange},
		AllowedTenants:          copyList(deref(b.AllowedTenants)),
		AllowedAudiences:        copyList(deref(b.AllowedAudiences)),
		AllowedScopes:           copyList(deref(b.AllowedScopes)),
		AllowedModes:            modesIn(deref(b.AllowedModes)),
		ServiceActors:           copyList(deref(b.ServiceActors)),
		MaxEnvelopeLifetime:     seconds(deref(b.MaxEnvelopeLifetime)),
		MaxTokenTTL:             seconds(deref(b.MaxTokenTTL)),
		Disabled:                deref(b.Disabled),
		CreatedAt:               now,
		UpdatedAt:               now,
	}
	if c.ID == "" {
		c.ID = storage.NewID("cli")
	}
	if c.TokenEndpointAuthMethod == "" {
		c.TokenEndpointAuthMethod = AuthSecretBasic
	}
	if b.GrantTypes != nil {
		c.GrantTypes = grantTypesIn(*b.GrantTypes)
	}
	var v validation
	setKeys(&v, c, b.Jwks, b.JwksURI, s.allowLoopbackJWKS)
	checkClient(&v, c)
	if err := v.err(); err != nil {
		return nil, err
	}
	var plain string
	if usesSecret(c.TokenEndpointAuthMethod) {
		plain, c.SecretHash = s.hasher.Generate()
	}
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		if err := tx.CreateClient(ctx, c); err != nil {
			return err
		}
		return s.audit(ctx, tx, EventClientCreate, storage.AuditRecord{},
			map[string]any{"client_id": c.ID, "token_endpoint_auth_method": c.TokenEndpointAuthMethod})
	})
	if err != nil {
		return nil, withDetail(err, "a client with this client_id already exists")
	}
	return CreateClient201JSONResponse(withSecret(s.clientOut(c), plain)), nil
}

func (s *server) UpdateClient(ctx context.Context, req UpdateClientRequestObject) (UpdateClientResponseObject, error) {
	b := req.Body
	var changed []string
	mark := func(name string, present bool) bool {
		if present {
			changed = append(changed, name)
		}
		return present
	}
	// Only these members can take admin access away; the admin list is locked first, before
	// the client's own row, so every admin-changing transaction locks in the same order.
	mayDemote := (b.Disabled != nil && *b.Disabled) || b.AllowedScopes != nil || b.GrantTypes != nil
	var updated *storage.Client
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		changed = changed[:0]
		var admins []string
		if mayDemote {
			var err error
			if admins, err = lockAdmins(ctx, tx); err != nil {
				return err
			}
		}
		var err error
		updated, err = tx.UpdateClient(ctx, req.ClientID, func(c *storage.Client) error {
			wasDisabled := c.Disabled
			var v validation
			if mark("name", b.Name != nil) {
				c.Name = *b.Name
			}
			if mark("token_endpoint_auth_method", b.TokenEndpointAuthMethod != nil) {
				c.TokenEndpointAuthMethod = string(*b.TokenEndpointAuthMethod)
				if !usesSecret(c.TokenEndpointAuthMethod) {
					// A key-authenticated client must not keep working with an old secret.
					c.SecretHash, c.PreviousSecretHash = nil, nil
					c.PreviousSecretExpiresAt = time.Time{}
				}
			}
			if b.Jwks != nil || b.JwksURI != nil {
				mark("jwks", b.Jwks != nil)
				mark("jwks_uri", b.JwksURI != nil)
				c.JWKS, c.JWKSURI = nil, ""
				setKeys(&v, c, b.Jwks, b.JwksURI, s.allowLoopbackJWKS)
			}
			if mark("grant_types", b.GrantTypes != nil) {
				c.GrantTypes = grantTypesIn(*b.GrantTypes)
			}
			if mark("allowed_tenants", b.AllowedTenants != nil) {
				c.AllowedTenants = copyList(*b.AllowedTenants)
			}
			if mark("allowed_audiences", b.AllowedAudiences != nil) {
				c.AllowedAudiences = copyList(*b.AllowedAudiences)
			}
			if mark("allowed_scopes", b.AllowedScopes != nil) {
				c.AllowedScopes = copyList(*b.AllowedScopes)
			}
			if mark("allowed_modes", b.AllowedModes != nil) {
				c.AllowedModes = modesIn(*b.AllowedModes)
			}
			if mark("service_actors", b.ServiceActors != nil) {
				c.ServiceActors = copyList(*b.ServiceActors)
			}
			if mark("max_envelope_lifetime", b.MaxEnvelopeLifetime != nil) {
				c.MaxEnvelopeLifetime = seconds(*b.MaxEnvelopeLifetime)
			}
			if mark("max_token_ttl", b.MaxTokenTTL != nil) {
				c.MaxTokenTTL = seconds(*b.MaxTokenTTL)
			}
			if mark("disabled", b.Disabled != nil) {
				c.Disabled = *b.Disabled
			}
			checkClient(&v, c)
			if err := v.err(); err != nil {
				return err
			}
			if isLastAdmin(admins, c.ID) && !isAdmin(c) {
				return errLastAdmin
			}
			c.UpdatedAt = s.now()
			if c.Disabled && !wasDisabled {
				// Tokens issued until now stay inactive, also if the client is enabled again.
				c.DisabledAt = c.UpdatedAt
			}
			return nil
		})
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventClientUpdate, storage.AuditRecord{},
			map[string]any{"client_id": req.ClientID, "changed": changed})
	})
	if err != nil {
		return nil, notFoundDetail(err, "no such client")
	}
	return UpdateClient200JSONResponse(s.clientOut(updated)), nil
}

// RevokeReasonClientDeleted is the revoke_reason of the grants a client deletion revoked.
const RevokeReasonClientDeleted = "client_deleted"

func (s *server) DeleteClient(ctx context.Context, req DeleteClientRequestObject) (DeleteClientResponseObject, error) {
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		admins, err := lockAdmins(ctx, tx)
		if err != nil {
			return err
		}
		if isLastAdmin(admins, req.ClientID) {
			return errLastAdmin
		}
		if err := tx.DeleteClient(ctx, req.ClientID); err != nil {
			return err
		}
		// After the delete, so a grant created for the client meanwhile is revoked too. The
		// grants stay, revoked, so the audit trail keeps what they name (SPEC §7).
		n, err := tx.RevokeGrantsOfClient(ctx, req.ClientID, principalFrom(ctx).ClientID, RevokeReasonClientDeleted, s.now())
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventClientDelete, storage.AuditRecord{},
			map[string]any{"client_id": req.ClientID, "grants_revoked": n})
	})
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, withDetail(err, "no such client")
		}
		return nil, err
	}
	return DeleteClient204Response{}, nil
}

func (s *server) RotateClientSecret(ctx context.Context, req RotateClientSecretRequestObject) (RotateClientSecretResponseObject, error) {
	grace := 0
	if req.Body != nil {
		grace = deref(req.Body.GracePeriod)
	}
	plain, hash := s.hasher.Generate()
	var updated *storage.Client
	err := s.store.InTx(ctx, func(tx storage.Store) error {
		var err error
		updated, err = tx.UpdateClient(ctx, req.ClientID, func(c *storage.Client) error {
			if !usesSecret(c.TokenEndpointAuthMethod) {
				return errNoSecret
			}
			now := s.now()
			if grace > 0 && len(c.SecretHash) > 0 {
				c.PreviousSecretHash = c.SecretHash
				c.PreviousSecretExpiresAt = now.Add(seconds(grace))
			} else {
				c.PreviousSecretHash = nil
				c.PreviousSecretExpiresAt = time.Time{}
			}
			c.SecretHash = hash
			c.UpdatedAt = now
			return nil
		})
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, EventClientSecretRotate, storage.AuditRecord{},
			map[string]any{"client_id": req.ClientID, "grace_period": grace})
	})
	if err != nil {
		return nil, notFoundDetail(err, "no such client")
	}
	out := RotateClientSecret200JSONResponse{ClientSecret: plain}
	if len(updated.PreviousSecretHash) > 0 {
		out.PreviousSecretExpiresAt = timeIf(updated.PreviousSecretExpiresAt)
	}
	return out, nil
}

// lockAdmins lists the enabled admin clients and, in tx, locks them: the check "is this the
// last one?" and the change it guards commit as one (SPEC §7).
func lockAdmins(ctx context.Context, tx storage.Store) ([]string, error) {
	return tx.LockEnabledClientsWith(ctx, ScopeAdmin, GrantTypeClientCredentials)
}

// isAdmin reports whether c can get an admin token with write access: enabled, holding
// mandate:admin and the client_credentials grant.
func isAdmin(c *storage.Client) bool {
	return !c.Disabled && slices.Contains(c.AllowedScopes, ScopeAdmin) && slices.Contains(c.GrantTypes, GrantTypeClientCredentials)
}

// isLastAdmin reports whether id is the only one of admins.
func isLastAdmin(admins []string, id string) bool {
	return len(admins) == 1 && admins[0] == id
}

// setKeys validates and stores the client's envelope/assertion keys: an inline JWK Set of
// public keys, or an https jwks_uri, never both.
func setKeys(v *validation, c *storage.Client, set *JWKSet, uri *string, allowLoopback bool) {
	if set != nil && uri != nil {
		v.add("jwks_uri", "give jwks or jwks_uri, not both")
		return
	}
	if set != nil {
		c.JWKS = checkJWKS(v, set)
	}
	if uri != nil {
		if msg := checkJWKSURI(*uri, allowLoopback); msg != "" {
			v.add("jwks_uri", "%s", msg)
		}
		c.JWKSURI = *uri
	}
}

// privateMembers are the JWK members that only private or symmetric keys have (RFC 7518 §6).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// checkJWKS returns the set as stored JSON, nil when it has no keys.
func checkJWKS(v *validation, set *JWKSet) []byte {
	if len(set.Keys) == 0 {
		return nil
	}
	kids := map[string]bool{}
	for i, k := range set.Keys {
		for _, m := range privateMembers {
			if _, ok := k[m]; ok {
				v.add("jwks", "key %d has member %q: only public keys are accepted", i, m)
			}
		}
		kid, _ := k["kid"].(string)
		switch {
		case kid == "":
			v.add("jwks", "key %d has no kid", i)
		case kids[kid]:
			v.add("jwks", "key %d repeats kid %q", i, kid)
		}
		kids[kid] = true
	}
	raw, err := json.Marshal(set)
	if err != nil {
		v.add("jwks", "is not a JWK Set")
		return nil
	}
	parsed, err := jwk.Parse(raw)
	if err != nil {
		v.add("jwks", "is not a valid JWK Set")
		return nil
	}
	for i := range parsed.Len() {
		k, _ := parsed.Key(i)
		if private, err := jwk.IsPrivateKey(k); err != nil || private {
			v.add("jwks", "key %d is not a public key", i)
		}
	}
	return raw
}

// checkJWKSURI says what is wrong with a jwks_uri, "" when nothing is. Plain http is allowed
// for loopback hosts only, and only when the server allows loopback key sets (development).
// Whatever the URL names, the key fetcher refuses to connect to non-public addresses
// (package envelope), after DNS resolution.
func checkJWKSURI(s string, allowLoopback bool) string {
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" {
		return "must be an absolute https URL"
	}
	if u.User != nil {
		return "must not carry credentials"
	}
	if u.Fragment != "" {
		return "must not have a fragment"
	}
	switch u.Scheme {
	case "https":
		return ""
	case "http":
		if allowLoopback && isLoopback(u.Hostname()) {
			return ""
		}
	}
	return "must be an https URL"
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkClient checks what the schema cannot: rules between fields.
func checkClient(v *validation, c *storage.Client) {
	if c.TokenEndpointAuthMethod == AuthPrivateKeyJWT && len(c.JWKS) == 0 && c.JWKSURI == "" {
		v.add("token_endpoint_auth_method", "private_key_jwt needs jwks or jwks_uri")
	}
	if len(c.GrantTypes) == 0 {
		v.add("grant_types", "needs at least one grant type")
	}
	if len(c.ServiceActors) > 0 && len(c.AllowedTenants) == 0 {
		// Without a tenant list a service actor could be presented in any tenant at all.
		v.add("service_actors", "service actors need allowed_tenants naming the tenants they act in")
	}
}

func grantTypesIn(gt []GrantType) []string {
	out := make([]string, len(gt))
	for i, g := range gt {
		out[i] = string(g)
	}
	return out
}

func (s *server) clientOut(c *storage.Client) Client {
	out := Client{
		ClientID:                c.ID,
		Name:                    c.Name,
		TokenEndpointAuthMethod: AuthMethod(c.TokenEndpointAuthMethod),
		GrantTypes:              make([]GrantType, len(c.GrantTypes)),
		AllowedTenants:          orEmpty(c.AllowedTenants),
		AllowedAudiences:        orEmpty(c.AllowedAudiences),
		AllowedScopes:           orEmpty(c.AllowedScopes),
		AllowedModes:            modesOut(c.AllowedModes),
		ServiceActors:           orEmpty(c.ServiceActors),
		MaxEnvelopeLifetime:     secondsIf(c.MaxEnvelopeLifetime),
		MaxTokenTTL:             secondsIf(c.MaxTokenTTL),
		Disabled:                c.Disabled,
		CreatedAt:               c.CreatedAt.UTC(),
		UpdatedAt:               c.UpdatedAt.UTC(),
		JwksURI:                 ptrIf(c.JWKSURI),
	}
	for i, g := range c.GrantTypes {
		out.GrantTypes[i] = GrantType(g)
	}
	if len(c.JWKS) > 0 {
		var set JWKSet
		if err := json.Unmarshal(c.JWKS, &set); err == nil {
			out.Jwks = &set
		}
	}
	if len(c.PreviousSecretHash) > 0 && s.now().Before(c.PreviousSecretExpiresAt) {
		out.PreviousSecretExpiresAt = timeIf(c.PreviousSecretExpiresAt)
	}
	return out
}

// withSecret is the create answer: the client and, for secret methods, its secret, once.
func withSecret(c Client, plain string) ClientWithSecret {
	return ClientWithSecret{
		AllowedAudiences:        c.AllowedAudiences,
		AllowedModes:            c.AllowedModes,
		ServiceActors:           c.ServiceActors,
		AllowedScopes:           c.AllowedScopes,
		AllowedTenants:          c.AllowedTenants,
		ClientID:                c.ClientID,
		ClientSecret:            ptrIf(plain),
		CreatedAt:               c.CreatedAt,
		Disabled:                c.Disabled,
		GrantTypes:              c.GrantTypes,
		Jwks:                    c.Jwks,
		JwksURI:                 c.JwksURI,
		MaxEnvelopeLifetime:     c.MaxEnvelopeLifetime,
		MaxTokenTTL:             c.MaxTokenTTL,
		Name:                    c.Name,
		PreviousSecretExpiresAt: c.PreviousSecretExpiresAt,
		TokenEndpointAuthMethod: c.TokenEndpointAuthMethod,
		UpdatedAt:               c.UpdatedAt,
	}
}
