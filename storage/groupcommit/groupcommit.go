// Package groupcommit lets concurrent token issuances share one commit.
//
// Every issuance is a durable write: one statement, one commit and one WAL flush (or, on
// SQLite, one fsync) per token when each is written on its own. Under load most of a
// database's work per token is that fixed cost, not the row. Wrap puts a Batcher in front of
// a backend's RecordIssuances: whatever issuances are waiting when the previous commit
// returns go into the next one, together. There is no timer: a lone request finds no commit
// in flight and is written at once, so group commit costs nothing at low load and batches
// grow only as far as the load makes them.
//
// Each row keeps the rules it has alone (storage.Store.RecordIssuances): a replayed
// envelope or a grant revoked since it was read fails that row, never its neighbours; no
// caller is told its token is issued before the commit that holds it has returned;
// synchronous commit stays as the database has it. A commit that fails fails every caller in
// it, which the server answers 503.
package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// DefaultMaxBatch bounds a commit's rows when Options.MaxBatch is zero: enough that a batch
// never becomes the bottleneck at the loads a replica sees, small enough that one commit's
// statement stays short.
const DefaultMaxBatch = 128

// Flush writes items together and returns one error per item (nil: committed).
type Flush[T any] func(ctx context.Context, items []T) []error

// Batcher queues concurrent calls and hands them to Flush in batches, one batch in flight
// at a time. The zero value is not usable; call New.
type Batcher[T any] struct {
	flush   Flush[T]
	max     int
	observe func(rows int)

	mu      sync.Mutex
	queue   []*call[T]
	running bool // a goroutine is draining queue
}

type call[T any] struct {
	ctx  context.Context
	item T
	done chan error // buffered: the flusher never waits on a caller that has gone
}

// New returns a Batcher that flushes at most max items at a time (DefaultMaxBatch when max
// <= 0). observe, when not nil, is told each batch's size as it is flushed.
func New[T any](max int, flush Flush[T], observe func(rows int)) *Batcher[T] {
	if max <= 0 {
		max = DefaultMaxBatch
	}
	return &Batcher[T]{flush: flush, max: max, observe: observe}
}

// Do adds item to the next batch and waits for that batch's outcome for item, or for ctx to
// end, whichever comes first. A call that returns ctx's error may still have been committed
// (exactly as a single statement whose answer is lost); Do never returns nil for an item
// that was not.
func (b *Batcher[T]) Do(ctx context.Context, item T) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := &call[T]{ctx: ctx, item: item, done: make(chan error, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start {
		go b.drain()
	}
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain flushes batches until the queue is empty. Calls that arrive during a flush wait for
// it and go in the next batch together: that is where the sharing comes from.
func (b *Batcher[T]) drain() {
	for {
		batch := b.take()
		if batch == nil {
			return
		}
		b.run(batch)
	}
}

// take removes the next batch from the queue, leaving out callers that have already given
// up (nobody would read their answer, so their rows are not written). It returns nil, and
// marks the Batcher idle, when nothing is left.
func (b *Batcher[T]) take() []*call[T] {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if len(b.queue) == 0 {
			b.running = false
			b.queue = nil // let a burst's backing array go
			return nil
		}
		n := min(len(b.queue), b.max)
		batch := make([]*call[T], 0, n)
		for _, c := range b.queue[:n] {
			if err := c.ctx.Err(); err != nil {
				c.done <- err
				continue
			}
			batch = append(batch, c)
		}
		clear(b.queue[:n])
		b.queue = b.queue[n:]
		if len(batch) > 0 {
			return batch
		}
	}
}

func (b *Batcher[T]) run(batch []*call[T]) {
	items := make([]T, len(batch))
	for i, c := range batch {
		items[i] = c.item
	}
	if b.observe != nil {
		b.observe(len(items))
	}
	ctx, cancel := flushContext(batch)
	errs := b.flush(ctx, items)
	cancel()
	for i, c := range batch {
		var err error
		switch {
		case len(errs) != len(batch):
			err = fmt.Errorf("groupcommit: flush answered %d results for %d items", len(errs), len(batch))
		default:
			err = errs[i]
		}
		c.done <- err
	}
}

// flushContext is the batch's own context. No caller's cancellation ends it: one request
// whose client went away must not fail its neighbours. It ends at the earliest of the callers'
// deadlines, because a caller whose deadline passes is answered 503 and will retry: a backend
// that honours ctx then cancels the whole batch's statement rather than commit that caller's
// row behind its back (its envelope would be used up by a token nobody received). The others
// are answered 503 too, at most one commit's time early. Callers without a deadline set none.
func flushContext[T any](batch []*call[T]) (context.Context, context.CancelFunc) {
	var earliest time.Time
	for _, c := range batch {
		if d, ok := c.ctx.Deadline(); ok && (earliest.IsZero() || d.Before(earliest)) {
			earliest = d
		}
	}
	if earliest.IsZero() {
		return context.WithCancel(context.Background())
	}
	return context.WithDeadline(context.Background(), earliest)
}

// Store is a storage.Store whose RecordIssuance goes through a Batcher to the backend's
// RecordIssuances. Everything else, transactions included, goes straight to the backend: a
// Store handed to InTx's fn is the backend's own, so an issuance inside a transaction is
// written in it.
type Store struct {
	storage.Store
	b *Batcher[storage.Issuance]
}

// Options tune Wrap.
type Options struct {
	// MaxBatch bounds the rows of one commit; 0 means DefaultMaxBatch, 1 turns batching off.
	MaxBatch int
	// Observe, when set, is told the size of each batch as it is flushed (for metrics).
	Observe func(rows int)
}

// Wrap returns s with RecordIssuance group-committed.
func Wrap(s storage.Store, o Options) *Store {
	return &Store{Store: s, b: New(o.MaxBatch, s.RecordIssuances, o.Observe)}
}

// RecordIssuance implements storage.Store: iss joins the next commit. It is checked first,
// so a malformed issuance is refused on its own rather than inside a neighbour's batch.
func (s *Store) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	if err := storage.CheckIssuance(&iss); err != nil {
		return err
	}
	err := s.b.Do(ctx, iss)
	if d, ok := ctx.Deadline(); ok && errors.Is(err, storage.ErrUnavailable) && !time.Now().Before(d) {
		// The batch's time was its callers' time (flushContext): the database did not answer
		// before this caller's own deadline, and that is what the caller is told, exactly as
		// when it waits for the database itself. When the batch's deadline was this caller's,
		// its timer may fire a moment before the caller's; the caller's follows at once.
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}
