package postgres

import (
	"context"

	"github.com/mandatehq/mandate/storage"
)

const keyCols = `kid, alg, status, public_jwk, encrypted_private_key, created_at, activates_at,
	retired_at, remove_at`

func scanKey(r rowScanner) (*storage.SigningKey, error) {
	var k storage.SigningKey
	var jwk string
	err := r.Scan(&k.KID, &k.Alg, &k.Status, &jwk, &k.EncryptedPrivateKey,
		timeCol{&k.CreatedAt}, timeCol{&k.ActivatesAt}, timeCol{&k.RetiredAt}, timeCol{&k.RemoveAt})
	if err != nil {
		return nil, mapErr(err)
	}
	k.PublicJWK = nullBytes([]byte(jwk))
	k.EncryptedPrivateKey = nullBytes(k.EncryptedPrivateKey)
	return &k, nil
}

// keyArgs are k's columns in keyCols order. The key columns are NOT NULL: nil binds as empty.
func keyArgs(k *storage.SigningKey) []any {
	priv := k.EncryptedPrivateKey
	if priv == nil {
		priv = []byte{}
	}
	return []any{k.KID, k.Alg, k.Status, string(k.PublicJWK), priv, ts(k.CreatedAt),
		ts(k.ActivatesAt), nullTS(k.RetiredAt), nullTS(k.RemoveAt)}
}

// CreateKey implements storage.KeyStore.
func (s *Store) CreateKey(ctx context.Context, k *storage.SigningKey) error {
	return s.write(ctx, func(q querier) error {
		_, err := q.Exec(ctx, `INSERT INTO signing_keys (`+keyCols+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, keyArgs(k)...)
		return mapErr(err)
	})
}

// CreateKeyIfNoneLive implements storage.KeyStore. The table lock (SHARE ROW EXCLUSIVE
// conflicts with itself and with writers, not with readers) makes racing callers check one
// after the other; the insert's own snapshot, taken after the lock, sees every key committed
// before it. A lock on the table rather than an advisory lock keeps schemas sharing one
// database apart.
func (s *Store) CreateKeyIfNoneLive(ctx context.Context, k *storage.SigningKey) (bool, error) {
	var created bool
	err := s.atomic(ctx, func(q querier) error {
		if _, err := q.Exec(ctx, `LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return mapErr(err)
		}
		tag, err := q.Exec(ctx, `INSERT INTO signing_keys (`+keyCols+`)
			SELECT $1, $2, $3, $4, $5, $6::timestamptz, $7::timestamptz, $8::timestamptz, $9::timestamptz
			WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE status <> 'retired')`, keyArgs(k)...)
		if err != nil {
			return mapErr(err)
		}
		created = tag.RowsAffected() == 1
		return nil
	})
	return created, err
}

// ListKeys implements storage.KeyStore, oldest first.
func (s *Store) ListKeys(ctx context.Context) ([]storage.SigningKey, error) {
	rows, err := s.db.Query(ctx, `SELECT `+keyCols+` FROM signing_keys ORDER BY created_at, kid`)
	return collect(rows, err, scanKey)
}

// UpdateKey implements storage.KeyStore. The row stays locked from the read to the write, so
// replicas rotating at once apply their changes one after the other. The kid cannot be
// changed by fn.
func (s *Store) UpdateKey(ctx context.Context, kid string, fn func(*storage.SigningKey) error) (*storage.SigningKey, error) {
	var out *storage.SigningKey
	err := s.atomic(ctx, func(q querier) error {
		k, err := scanKey(q.QueryRow(ctx, `SELECT `+keyCols+` FROM signing_keys
			WHERE kid = $1 FOR UPDATE`, kid))
		if err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
		k.KID = kid
		out, err = scanKey(q.QueryRow(ctx, `UPDATE signing_keys SET alg = $2, status = $3,
			public_jwk = $4, encrypted_private_key = $5, created_at = $6, activates_at = $7,
			retired_at = $8, remove_at = $9 WHERE kid = $1 RETURNING `+keyCols, keyArgs(k)...))
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteKey implements storage.KeyStore.
func (s *Store) DeleteKey(ctx context.Context, kid string) error {
	return s.write(ctx, func(q querier) error {
		return notFoundUnlessChanged(q.Exec(ctx, `DELETE FROM signing_keys WHERE kid = $1`, kid))
	})
}
