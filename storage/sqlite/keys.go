package sqlite

import (
	"context"
	"database/sql"

	"github.com/mandatehq/mandate/storage"
)

const keyCols = `kid, alg, status, public_jwk, encrypted_private_key, created_at, activates_at,
	retired_at, remove_at`

func scanKey(r rowScanner) (*storage.SigningKey, error) {
	var k storage.SigningKey
	err := r.Scan(&k.KID, &k.Alg, &k.Status, bytesCol{&k.PublicJWK}, bytesCol{&k.EncryptedPrivateKey},
		timeCol{&k.CreatedAt}, timeCol{&k.ActivatesAt}, timeCol{&k.RetiredAt}, timeCol{&k.RemoveAt})
	if err != nil {
		return nil, mapErr(err)
	}
	return &k, nil
}

// notNullBlob keeps an empty key from binding as NULL (the driver binds a nil slice so).
func notNullBlob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// CreateKey implements storage.KeyStore.
func (s *Store) CreateKey(ctx context.Context, k *storage.SigningKey) error {
	_, err := s.writer().ExecContext(ctx, `INSERT INTO signing_keys (`+keyCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.KID, k.Alg, k.Status, string(k.PublicJWK), notNullBlob(k.EncryptedPrivateKey),
		micros(k.CreatedAt), micros(k.ActivatesAt), nullMicros(k.RetiredAt), nullMicros(k.RemoveAt))
	return mapErr(err)
}

// CreateKeyIfNoneLive implements storage.KeyStore. The transaction begins IMMEDIATE, holding
// the file's write lock from its first statement: callers in this process queue for the write
// connection, and those in other processes for the lock, so each checks after the previous
// one committed.
func (s *Store) CreateKeyIfNoneLive(ctx context.Context, k *storage.SigningKey) (bool, error) {
	var created bool
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (`+keyCols+`)
			SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?
			WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE status <> 'retired')`,
			k.KID, k.Alg, k.Status, string(k.PublicJWK), notNullBlob(k.EncryptedPrivateKey),
			micros(k.CreatedAt), micros(k.ActivatesAt), nullMicros(k.RetiredAt), nullMicros(k.RemoveAt))
		if err != nil {
			return mapErr(err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return mapErr(err)
		}
		created = n == 1
		return nil
	})
	return created, err
}

// ListKeys implements storage.KeyStore, oldest first.
func (s *Store) ListKeys(ctx context.Context) ([]storage.SigningKey, error) {
	rows, err := s.reader().QueryContext(ctx, `SELECT `+keyCols+` FROM signing_keys
		ORDER BY created_at, kid`)
	if err != nil {
		return nil, mapErr(err)
	}
	return collect(rows, scanKey)
}

// UpdateKey implements storage.KeyStore. The kid cannot be changed by fn.
func (s *Store) UpdateKey(ctx context.Context, kid string, fn func(*storage.SigningKey) error) (*storage.SigningKey, error) {
	var out *storage.SigningKey
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		k, err := scanKey(tx.QueryRowContext(ctx, `SELECT `+keyCols+` FROM signing_keys WHERE kid = ?`, kid))
		if err != nil {
			return err
		}
		if err := fn(k); err != nil {
			return err
		}
		out, err = scanKey(tx.QueryRowContext(ctx, `UPDATE signing_keys SET alg = ?, status = ?,
			public_jwk = ?, encrypted_private_key = ?, created_at = ?, activates_at = ?,
			retired_at = ?, remove_at = ? WHERE kid = ? RETURNING `+keyCols,
			k.Alg, k.Status, string(k.PublicJWK), notNullBlob(k.EncryptedPrivateKey),
			micros(k.CreatedAt), micros(k.ActivatesAt), nullMicros(k.RetiredAt),
			nullMicros(k.RemoveAt), kid))
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteKey implements storage.KeyStore.
func (s *Store) DeleteKey(ctx context.Context, kid string) error {
	return notFoundUnlessChanged(s.writer().ExecContext(ctx, `DELETE FROM signing_keys WHERE kid = ?`, kid))
}
