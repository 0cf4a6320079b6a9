package sqlite

import (
	"context"
	"database/sql"

	"github.com/mandatehq/mandate/storage"
)

const clientCols = `id, name, token_endpoint_auth_method, secret_hash, previous_secret_hash,
	previous_secret_expires_at, jwks, jwks_uri, grant_types, allowed_tenants, allowed_audiences,
	allowed_scopes, allowed_modes, max_envelope_lifetime_seconds, max_token_ttl_seconds, disabled,
	created_at, updated_at, service_actors, disabled_at`

type rowScanner interface{ Scan(dest ...any) error }

func scanClient(r rowScanner) (*storage.Client, error) {
	var c storage.Client
	err := r.Scan(&c.ID, &c.Name, &c.TokenEndpointAuthMethod, bytesCol{&c.SecretHash},
		bytesCol{&c.PreviousSecretHash}, timeCol{&c.PreviousSecretExpiresAt}, bytesCol{&c.JWKS},
		&c.JWKSURI, listCol{&c.GrantTypes}, listCol{&c.AllowedTenants}, listCol{&c.AllowedAudiences},
		listCol{&c.AllowedScopes}, listCol{&c.AllowedModes}, secondsCol{&c.MaxEnvelopeLifetime},
		secondsCol{&c.MaxTokenTTL}, &c.Disabled, timeCol{&c.CreatedAt}, timeCol{&c.UpdatedAt},
		listCol{&c.ServiceActors}, timeCol{&c.DisabledAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &c, nil
}

// clientArgs are c's columns in clientCols order.
func clientArgs(c *storage.Client) []any {
	return []any{c.ID, c.Name, c.TokenEndpointAuthMethod, nullBlob(c.SecretHash),
		nullBlob(c.PreviousSecretHash), nullMicros(c.PreviousSecretExpiresAt), nullText(c.JWKS),
		c.JWKSURI, list(c.GrantTypes), list(c.AllowedTenants), list(c.AllowedAudiences),
		list(c.AllowedScopes), list(c.AllowedModes), seconds(c.MaxEnvelopeLifetime),
		seconds(c.MaxTokenTTL), c.Disabled, micros(c.CreatedAt), micros(c.UpdatedAt),
		list(c.ServiceActors), nullMicros(c.DisabledAt)}
}

// CreateClient implements storage.ClientStore.
func (s *Store) CreateClient(ctx context.Context, c *storage.Client) error {
	_, err := s.writer().ExecContext(ctx, `INSERT INTO clients (`+clientCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, clientArgs(c)...)
	return mapErr(err)
}

// GetClient implements storage.ClientStore.
func (s *Store) GetClient(ctx context.Context, id string) (*storage.Client, error) {
	return getClient(ctx, s.reader(), id)
}

func getClient(ctx context.Context, q querier, id string) (*storage.Client, error) {
	return scanClient(q.QueryRowContext(ctx, `SELECT `+clientCols+` FROM clients WHERE id = ?`, id))
}

// ListClients implements storage.ClientStore, ordered by id.
func (s *Store) ListClients(ctx context.Context, p storage.Page) ([]storage.Client, string, error) {
	after, err := p.AfterID("clients")
	if err != nil {
		return nil, "", err
	}
	limit := p.EffectiveLimit()
	rows, err := s.reader().QueryContext(ctx, `SELECT `+clientCols+` FROM clients
		WHERE id > ? ORDER BY id LIMIT ?`, after, limit+1)
	if err != nil {
		return nil, "", mapErr(err)
	}
	items, err := collect(rows, scanClient)
	if err != nil {
		return nil, "", err
	}
	items, next := storage.TrimPage(items, limit, func(x *storage.Client) string { return storage.EncodeCursor("clients", x.ID) })
	return items, next, nil
}

// UpdateClient implements storage.ClientStore. The id cannot be changed by fn.
func (s *Store) UpdateClient(ctx context.Context, id string, fn func(*storage.Client) error) (*storage.Client, error) {
	var out *storage.Client
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		c, err := getClient(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
		c.ID = id
		args := clientArgs(c)
		// SET every column but id, in clientCols order, then WHERE id.
		out, err = scanClient(tx.QueryRowContext(ctx, `UPDATE clients SET
			name = ?, token_endpoint_auth_method = ?, secret_hash = ?, previous_secret_hash = ?,
			previous_secret_expires_at = ?, jwks = ?, jwks_uri = ?, grant_types = ?,
			allowed_tenants = ?, allowed_audiences = ?, allowed_scopes = ?, allowed_modes = ?,
			max_envelope_lifetime_seconds = ?, max_token_ttl_seconds = ?, disabled = ?,
			created_at = ?, updated_at = ?, service_actors = ?, disabled_at = ?
			WHERE id = ? RETURNING `+clientCols, append(args[1:], id)...))
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteClient implements storage.ClientStore.
func (s *Store) DeleteClient(ctx context.Context, id string) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `DELETE FROM clients WHERE id = ?`, id))
}

// LockEnabledClientsWith implements storage.ClientStore. Every write transaction holds the
// one write lock from its first statement (BEGIN IMMEDIATE), so inside InTx the list cannot
// change before the transaction ends.
func (s *Store) LockEnabledClientsWith(ctx context.Context, scope, grantType string) ([]string, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT id FROM clients
		WHERE disabled = 0
		AND EXISTS (SELECT 1 FROM json_each(clients.allowed_scopes) WHERE value = ?)
		AND EXISTS (SELECT 1 FROM json_each(clients.grant_types) WHERE value = ?)
		ORDER BY id`, scope, grantType)
	if err != nil {
		return nil, mapErr(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, mapErr(err)
		}
		ids = append(ids, id)
	}
	return ids, mapErr(rows.Err())
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, scan func(rowScanner) (*T, error)) ([]T, error) {
	defer rows.Close()
	var items []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		items = append(items, *v)
	}
	if err := rows.Err(); err != nil {
		return nil, mapErr(err)
	}
	return items, nil
}
