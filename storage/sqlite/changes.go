package sqlite

import (
	"context"
	"errors"
	"time"
)

// The change feed is PRAGMA data_version on the write connection. SQLite changes that number
// for a connection whenever another connection commits to the file, never for the
// connection's own commits. In this process only the write connection writes (the readers
// are query_only), so on it the number moves exactly when another process committed.
//
// SQLite cannot say what another process changed, so a change is reported as "" (unknown):
// the watcher drops everything it caches. A lone process never sees one; processes sharing a
// busy file see one per poll, which costs each a few cache reloads per second.

// changePollEvery is how often WatchChanges looks; it bounds how long a change made by another
// process stays unseen here.
const changePollEvery = 250 * time.Millisecond

// AnnounceChange implements storage.ChangeFeed: the commit itself is the announcement.
func (s *Store) AnnounceChange(ctx context.Context, what string) error {
	if s.tx == nil {
		return errors.New("storage/sqlite: AnnounceChange outside a transaction")
	}
	return nil
}

// WatchChanges implements storage.ChangeFeed by polling data_version every changePollEvery.
func (s *Store) WatchChanges(ctx context.Context, changed func(what string)) error {
	if s.tx != nil {
		return errors.New("storage/sqlite: WatchChanges inside a transaction")
	}
	last, err := s.dataVersion(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	changed("")
	t := time.NewTicker(changePollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		v, err := s.dataVersion(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if v != last {
			last = v
			changed("")
		}
	}
}

func (s *Store) dataVersion(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.busy+time.Second)
	defer cancel()
	var v int64
	if err := s.write.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		return 0, mapErr(err)
	}
	return v, nil
}
