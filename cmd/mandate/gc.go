package main

import (
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// The collector's settings for serve when the operator sets neither GOGC nor GOMEMLIMIT.
//
// The token endpoint allocates about 20 KiB per exchange over a live heap of about 5 MiB, so
// the collector's pace is set by GOGC alone. At Go's default of 100 it took a sixth of the
// server's CPU; on two cores shared with Postgres its mark phases also showed in the tail
// latency (GOGC=1000, for diagnosis only, moved p99 from 13 to 10 ms). GOGC=400 runs a third
// fewer cycles than 250 and gave about 5% more exchanges/s (wrk, Postgres, 16 connections,
// medians of 3), but alone took peak RSS to 65 MiB at 64 connections.
//
// A soft memory limit keeps that in bounds, but a fixed one is a trap: should the live heap
// grow near it (a large client catalog), the collector would run back to back. So the limit
// follows the live heap: memLimitFloor while the heap is small, and twice the live heap plus
// memLimitHeadroom above that, which always leaves the collector room to work.
const (
	serveGCPercent   = 400
	memLimitFloor    = 36 << 20
	memLimitHeadroom = 16 << 20
	gcTuneEvery      = 5 * time.Second
)

// memoryLimit is the soft memory limit for a live heap of live bytes.
func memoryLimit(live uint64) int64 {
	return max(memLimitFloor, 2*int64(live)+memLimitHeadroom)
}

var gcTuneOnce sync.Once

// tuneGC applies the settings above once per process and keeps the limit in step with the
// live heap from then on. It changes nothing when the operator set GOGC or GOMEMLIMIT: the
// runtime has applied those.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return
	}
	gcTuneOnce.Do(func() {
		debug.SetGCPercent(serveGCPercent)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		adjust := func() {
			metrics.Read(sample)
			if sample[0].Value.Kind() == metrics.KindUint64 {
				debug.SetMemoryLimit(memoryLimit(sample[0].Value.Uint64()))
			}
		}
		adjust()
		// For the process's lifetime: a limit left behind without its adjuster would be the
		// fixed limit the comment above warns of.
		go func() {
			for range time.Tick(gcTuneEvery) {
				adjust()
			}
		}()
	})
}
