package server

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/mandatehq/mandate/api"
	"github.com/mandatehq/mandate/exchange"
	"github.com/mandatehq/mandate/storage"
)

// Admin changes reach every replica through the store's change feed (storage.ChangeFeed):
// each change announces itself inside its own transaction, so it is heard when, and only
// if, it commits, and every replica drops its cached clients, audiences and grants at once.
// The caches' TTL stays, as the safety net for a change announced while a replica's watch
// was down (the watch also drops everything each time it starts, for the same reason).

// announcingStore is the store of the admin API and of the exchange (whose grant-request
// decisions create grants): each transaction that wrote the audit record of a change worth
// announcing announces its events ("admin.client.update ...") before it commits.
type announcingStore struct{ storage.Store }

// announced says which changes other replicas must hear of: those that change what they
// cache (clients, audiences, grants, keys). Token decisions and revocations change nothing
// cached, and are far too many to announce.
func announced(event string) bool {
	switch event {
	case exchange.EventGrantRequestApprove, exchange.EventConsentRevoke:
		return true
	}
	return strings.HasPrefix(event, "admin.")
}

func (a announcingStore) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	return a.Store.InTx(ctx, func(tx storage.Store) error {
		rec := &eventRecorder{Store: tx}
		if err := fn(rec); err != nil {
			return err
		}
		if len(rec.events) == 0 {
			return nil
		}
		return tx.AnnounceChange(ctx, strings.Join(rec.events, " "))
	})
}

// AppendAudit outside a transaction of a change worth announcing (the key rotation's record,
// written after the rotation's own) is made a transaction of its own, so that it is
// announced too.
func (a announcingStore) AppendAudit(ctx context.Context, rec *storage.AuditRecord) error {
	if !announced(rec.Event) {
		return a.Store.AppendAudit(ctx, rec)
	}
	return a.InTx(ctx, func(tx storage.Store) error { return tx.AppendAudit(ctx, rec) })
}

// eventRecorder notes the events of the audit records written through it.
type eventRecorder struct {
	storage.Store
	events []string
}

func (r *eventRecorder) AppendAudit(ctx context.Context, rec *storage.AuditRecord) error {
	err := r.Store.AppendAudit(ctx, rec)
	if err == nil && announced(rec.Event) && !slices.Contains(r.events, rec.Event) {
		r.events = append(r.events, rec.Event)
	}
	return err
}

func (r *eventRecorder) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	return fn(r) // already in a transaction: InTx does not nest
}

// Backoff between watches of the change feed.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// watchChanges keeps a watch on the change feed until ctx ends, watching again with backoff
// whenever it breaks.
func (s *Server) watchChanges(ctx context.Context) {
	backoff := watchBackoffMin
	for {
		watching := false
		err := s.store.WatchChanges(ctx, func(what string) {
			if !watching {
				watching = true
				s.watchingOnce.Do(func() { close(s.watching) })
			}
			s.changed(ctx, what)
		})
		if ctx.Err() != nil {
			return
		}
		if watching {
			backoff = watchBackoffMin
		}
		s.log.Warn("change feed: watch broke; admin changes made on other replicas are seen after the cache TTL until it is back",
			"err", err, "retry_in", backoff.String())
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

// changed drops what a change may have made stale; "" means anything may have changed.
func (s *Server) changed(ctx context.Context, what string) {
	s.catalog.InvalidateAll()
	s.log.Debug("change feed: caches dropped", "what", what)
	if strings.Contains(what, api.EventKeysRotate) {
		// The new key is published ahead of signing, so Run's next reload would do; loading
		// it now keeps every replica's JWKS the same from the start. (SQLite's feed cannot
		// say what changed: there, Run's reload does it.)
		go func() {
			rctx, cancel := context.WithTimeout(ctx, keysReloadTimeout)
			defer cancel()
			if err := s.keys.Refresh(rctx); err != nil && ctx.Err() == nil {
				s.log.Warn("change feed: reloading keys after a rotation failed", "err", err)
			}
		}()
	}
}
