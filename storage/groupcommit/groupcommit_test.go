package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gate is a Flush that records each batch and holds it until released, so a test can pile
// calls up behind a flush in flight.
type gate struct {
	mu      sync.Mutex
	batches [][]int
	entered chan []int
	release chan struct{}
	result  func(item int) error
}

func newGate() *gate {
	return &gate{entered: make(chan []int, 100), release: make(chan struct{}, 100),
		result: func(int) error { return nil }}
}

func (g *gate) flush(_ context.Context, items []int) []error {
	g.mu.Lock()
	g.batches = append(g.batches, slices.Clone(items))
	g.mu.Unlock()
	g.entered <- items
	<-g.release
	errs := make([]error, len(items))
	for i, it := range items {
		errs[i] = g.result(it)
	}
	return errs
}

// waitQueued waits until n calls are queued behind the flush in flight.
func waitQueued[T any](t *testing.T, b *Batcher[T], n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		q := len(b.queue)
		b.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued after 5s, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// A lone call is flushed at once, alone; calls that arrive during a flush share the next.
func TestCallsArrivingDuringAFlushShareTheNext(t *testing.T) {
	g := newGate()
	b := New(0, g.flush, nil)
	ctx := t.Context()
	first := make(chan error, 1)
	go func() { first <- b.Do(ctx, 0) }()
	if got := <-g.entered; !slices.Equal(got, []int{0}) {
		t.Fatalf("first batch = %v, want [0]", got)
	}
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range 5 {
		wg.Go(func() { errs[i] = b.Do(ctx, i+1) })
	}
	waitQueued(t, b, 5)
	g.release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	got := <-g.entered
	g.release <- struct{}{}
	wg.Wait()
	slices.Sort(got)
	if !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
		t.Errorf("second batch = %v, want the five calls that waited", got)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i+1, err)
		}
	}
}

// One item's error is that item's alone.
func TestEachCallGetsItsOwnResult(t *testing.T) {
	g := newGate()
	conflict := errors.New("conflict")
	g.result = func(it int) error {
		if it%2 == 1 {
			return fmt.Errorf("%w: %d", conflict, it)
		}
		return nil
	}
	b := New(0, g.flush, nil)
	go func() { _ = b.Do(t.Context(), 100) }()
	<-g.entered
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range 6 {
		wg.Go(func() { errs[i] = b.Do(t.Context(), i) })
	}
	waitQueued(t, b, 6)
	g.release <- struct{}{}
	<-g.entered
	g.release <- struct{}{}
	wg.Wait()
	for i, err := range errs {
		if want := i%2 == 1; errors.Is(err, conflict) != want || (!want && err != nil) {
			t.Errorf("call %d: err = %v, want conflict %v", i, err, want)
		}
	}
}

// A flush that fails fails every call in it, and the next batch goes on.
func TestAFailedFlushFailsItsCallers(t *testing.T) {
	boom := errors.New("database gone")
	var calls atomic.Int32
	b := New(0, func(_ context.Context, items []int) []error {
		errs := make([]error, len(items))
		if calls.Add(1) == 1 {
			for i := range errs {
				errs[i] = boom
			}
		}
		return errs
	}, nil)
	if err := b.Do(t.Context(), 1); !errors.Is(err, boom) {
		t.Errorf("call in the failed flush: %v, want %v", err, boom)
	}
	if err := b.Do(t.Context(), 2); err != nil {
		t.Errorf("call after the failed flush: %v", err)
	}
}

// A Flush that answers the wrong number of results fails its callers rather than
// answering any of them success.
func TestAMiscountedFlushFailsItsCallers(t *testing.T) {
	b := New(0, func(context.Context, []int) []error { return nil }, nil)
	if err := b.Do(t.Context(), 1); err == nil {
		t.Error("a flush that answered no results reported success")
	}
}

// Batches never exceed the bound; the rest waits for the next.
func TestBatchesAreBounded(t *testing.T) {
	g := newGate()
	var sizes []int
	var mu sync.Mutex
	b := New(3, g.flush, func(n int) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() })
	go func() { _ = b.Do(t.Context(), 0) }()
	<-g.entered
	var wg sync.WaitGroup
	for i := range 7 {
		wg.Go(func() { _ = b.Do(t.Context(), i+1) })
	}
	waitQueued(t, b, 7)
	for range 4 {
		g.release <- struct{}{}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, []int{1, 3, 3, 1}) {
		t.Errorf("batch sizes = %v, want [1 3 3 1]", sizes)
	}
}

// A caller whose context ends stops waiting at once; if its batch has not started, its item
// is not flushed at all. Its neighbours are unaffected.
func TestACallerThatGivesUp(t *testing.T) {
	g := newGate()
	b := New(0, g.flush, nil)
	go func() { _ = b.Do(t.Context(), 0) }()
	<-g.entered

	ctx, cancel := context.WithCancel(t.Context())
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- b.Do(ctx, 1) }()
	kept := make(chan error, 1)
	go func() { kept <- b.Do(t.Context(), 2) }()
	waitQueued(t, b, 2)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Errorf("the call that gave up: %v, want context.Canceled", err)
	}
	g.release <- struct{}{}
	if got := <-g.entered; !slices.Equal(got, []int{2}) {
		t.Errorf("batch after a caller gave up = %v, want [2]", got)
	}
	g.release <- struct{}{}
	if err := <-kept; err != nil {
		t.Errorf("its neighbour: %v", err)
	}
}

// The batch's context outlives any one caller's cancellation and ends at the earliest
// deadline, so a caller answered 503 at its deadline has no row committed after it.
func TestFlushContext(t *testing.T) {
	now := time.Now()
	early, c1 := context.WithDeadline(context.Background(), now.Add(time.Second))
	defer c1()
	late, c2 := context.WithDeadline(context.Background(), now.Add(time.Minute))
	defer c2()
	cancelled, c3 := context.WithCancel(late)
	c3()

	ctx, cancel := flushContext([]*call[int]{{ctx: cancelled}, {ctx: early}, {ctx: context.Background()}})
	defer cancel()
	if d, ok := ctx.Deadline(); !ok || !d.Equal(now.Add(time.Second)) {
		t.Errorf("deadline = %v, %v; want the earliest caller's", d, ok)
	}
	if ctx.Err() != nil {
		t.Errorf("a caller's cancellation ended the batch: %v", ctx.Err())
	}
	ctx2, cancel2 := flushContext([]*call[int]{{ctx: context.Background()}, {ctx: context.Background()}})
	defer cancel2()
	if _, ok := ctx2.Deadline(); ok {
		t.Error("a batch of callers without deadlines got one")
	}
}

// BenchmarkDo is the batcher's own cost per call, under as much concurrency as the
// benchmark runs (-cpu), with a flush that does nothing.
func BenchmarkDo(b *testing.B) {
	var rows, batches atomic.Int64
	bt := New(0, func(_ context.Context, items []int) []error {
		return make([]error, len(items))
	}, func(n int) { rows.Add(int64(n)); batches.Add(1) })
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if err := bt.Do(ctx, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	if n := batches.Load(); n > 0 {
		b.ReportMetric(float64(rows.Load())/float64(n), "rows/batch")
	}
}

// BenchmarkDoSlowFlush gives each flush a database's round trip (100µs): the batch size
// grows with the callers waiting, and the time per call falls with it.
func BenchmarkDoSlowFlush(b *testing.B) {
	for _, callers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			var rows, batches atomic.Int64
			bt := New(0, func(_ context.Context, items []int) []error {
				time.Sleep(100 * time.Microsecond)
				return make([]error, len(items))
			}, func(n int) { rows.Add(int64(n)); batches.Add(1) })
			var wg sync.WaitGroup
			var next atomic.Int64
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						_ = bt.Do(context.Background(), 1)
					}
				})
			}
			wg.Wait()
			if n := batches.Load(); n > 0 {
				b.ReportMetric(float64(rows.Load())/float64(n), "rows/batch")
			}
		})
	}
}
