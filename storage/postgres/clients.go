package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/mandatehq/mandate/storage"
)

const clientCols = `id, name, token_endpoint_auth_method, secret_hash, previous_secret_hash,
	previous_secret_expires_at, jwks, jwks_uri, grant_types, allowed_tenants, allowed_audiences,
	allowed_scopes, allowed_modes, max_envelope_lifetime_seconds, max_token_ttl_seconds, disabled,
	created_at, updated_at, service_actors, disabled_at`

func scanClient(r rowScanner) (*storage.Client, error) {
	var c storage.Client
	err := r.Scan(&c.ID, &c.Name, &c.TokenEndpointAuthMethod, &c.SecretHash,
		&c.PreviousSecretHash, timeCol{&c.PreviousSecretExpiresAt}, &c.JWKS, &c.JWKSURI,
		&c.GrantTypes, &c.AllowedTenants, &c.AllowedAudiences, &c.AllowedScopes, &c.AllowedModes,
		secondsCol{&c.MaxEnvelopeLifetime}, secondsCol{&c.MaxTokenTTL}, &c.Disabled,
		timeCol{&c.CreatedAt}, timeCol{&c.UpdatedAt}, &c.ServiceActors, timeCol{&c.DisabledAt})
	if err != nil {
		return nil, mapErr(err)
	}
	c.SecretHash = nullBytes(c.SecretHash)
	c.PreviousSecretHash = nullBytes(c.PreviousSecretHash)
	c.JWKS = nullBytes(c.JWKS)
	nilEmpty(&c.GrantTypes, &c.AllowedTenants, &c.AllowedAudiences, &c.AllowedScopes, &c.AllowedModes,
		&c.ServiceActors)
	return &c, nil
}

// clientArgs are c's columns in clientCols order.
func clientArgs(c *storage.Client) []any {
	return []any{c.ID, c.Name, c.TokenEndpointAuthMethod, nullBytes(c.SecretHash),
		nullBytes(c.PreviousSecretHash), nullTS(c.PreviousSecretExpiresAt), nullBytes(c.JWKS),
		c.JWKSURI, list(c.GrantTypes), list(c.AllowedTenants), list(c.AllowedAudiences),
		list(c.AllowedScopes), list(c.AllowedModes), seconds(c.MaxEnvelopeLifetime),
		seconds(c.MaxTokenTTL), c.Disabled, ts(c.CreatedAt), ts(c.UpdatedAt), list(c.ServiceActors),
		nullTS(c.DisabledAt)}
}

// CreateClient implements storage.ClientStore.
func (s *Store) CreateClient(ctx context.Context, c *storage.Client) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO clients (`+clientCols+`) VALUES
			($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
			clientArgs(c)...)
		return mapErr(err)
	})
}

// GetClient implements storage.ClientStore.
func (s *Store) GetClient(ctx context.Context, id string) (*storage.Client, error) {
	return scanClient(s.db.QueryRow(ctx, `SELECT `+clientCols+` FROM clients WHERE id = $1`, id))
}

// ListClients implements storage.ClientStore, ordered by id.
func (s *Store) ListClients(ctx context.Context, p storage.Page) ([]storage.Client, string, error) {
	after, err := p.AfterID("clients")
	if err != nil {
		return nil, "", err
	}
	limit := p.EffectiveLimit()
	rows, err := s.db.Query(ctx, `SELECT `+clientCols+` FROM clients
		WHERE id > $1 ORDER BY id LIMIT $2`, after, limit+1)
	items, err := collect(rows, err, scanClient)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(c *storage.Client) string { return storage.EncodeCursor("clients", c.ID) })
	return items, next, nil
}

// UpdateClient implements storage.ClientStore. The row stays locked from the read to the
// write, so concurrent updates apply one after the other. The id cannot be changed by fn.
func (s *Store) UpdateClient(ctx context.Context, id string, fn func(*storage.Client) error) (*storage.Client, error) {
	var out *storage.Client
	err := s.atomic(ctx, func(q querier) error {
		c, err := scanClient(q.QueryRow(ctx, `SELECT `+clientCols+` FROM clients
			WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
		c.ID = id
		out, err = scanClient(q.QueryRow(ctx, `UPDATE clients SET
			name = $2, token_endpoint_auth_method = $3, secret_hash = $4, previous_secret_hash = $5,
			previous_secret_expires_at = $6, jwks = $7, jwks_uri = $8, grant_types = $9,
			allowed_tenants = $10, allowed_audiences = $11, allowed_scopes = $12,
			allowed_modes = $13, max_envelope_lifetime_seconds = $14, max_token_ttl_seconds = $15,
			disabled = $16, created_at = $17, updated_at = $18, service_actors = $19, disabled_at = $20
			WHERE id = $1 RETURNING `+clientCols, clientArgs(c)...))
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteClient implements storage.ClientStore. The row lock it takes waits for a grant being
// created for the client (CreateGrant share-locks the row) to commit first.
func (s *Store) DeleteClient(ctx context.Context, id string) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `DELETE FROM clients WHERE id = $1`, id))
	})
}

// LockEnabledClientsWith implements storage.ClientStore with FOR UPDATE, in id order so
// concurrent callers lock in the same order. A caller that waited re-reads each row it
// waited for (READ COMMITTED), so a client deleted or disabled meanwhile drops out of its
// list.
func (s *Store) LockEnabledClientsWith(ctx context.Context, scope, grantType string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT id FROM clients
		WHERE NOT disabled AND $1 = ANY (allowed_scopes) AND $2 = ANY (grant_types)
		ORDER BY id FOR UPDATE`, scope, grantType)
	if err != nil {
		return nil, mapErr(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, mapErr(err)
}
