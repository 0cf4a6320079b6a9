package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mandatehq/mandate/storage"
)

// The change feed is LISTEN/NOTIFY. pg_notify inside the committing transaction is delivered
// when, and only if, that transaction commits, to every session listening on the channel:
// every replica hears an admin change at the moment it takes effect.

// listenSetupTimeout bounds connecting and subscribing a watch; the wait for notifications
// that follows has no deadline.
const listenSetupTimeout = 10 * time.Second

// changeChannel names the notification channel of the schema the pool works in. NOTIFY is
// database-wide, so schemas sharing one database (tests, several deployments) each get their
// own channel; the name is hashed to stay a valid identifier whatever the schema is called.
func changeChannel(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var schema *string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return "", fmt.Errorf("current schema: %w", err)
	}
	name := ""
	if schema != nil {
		name = *schema
	}
	sum := sha256.Sum256([]byte(name))
	return "mandate_changes_" + hex.EncodeToString(sum[:8]), nil
}

// AnnounceChange implements storage.ChangeFeed.
func (s *Store) AnnounceChange(ctx context.Context, what string) error {
	if s.tx == nil {
		return errors.New("storage/postgres: AnnounceChange outside a transaction")
	}
	if len(what) > storage.MaxChangeText {
		what = what[:storage.MaxChangeText]
	}
	_, err := s.tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.channel, what)
	return mapErr(err)
}

// WatchChanges implements storage.ChangeFeed on a connection of its own, outside the pool:
// a session that LISTENs must stay open, and must not hold one of the pool's connections.
func (s *Store) WatchChanges(ctx context.Context, changed func(what string)) error {
	if s.tx != nil {
		return errors.New("storage/postgres: WatchChanges inside a transaction")
	}
	setup, cancel := context.WithTimeout(ctx, listenSetupTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(setup, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return mapErr(err)
	}
	defer func() {
		// Close sends Terminate and drops the socket; bounded, in case the server is frozen.
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		defer ccancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(setup, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return mapErr(err)
	}
	changed("")
	for {
		n, err := conn.WaitForNotification(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return mapErr(err)
		}
		changed(n.Payload)
	}
}
