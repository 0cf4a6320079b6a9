package main

import (
	"math"
	"runtime/debug"
	"testing"
)

func TestMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live uint64
		want int64
	}{
		{0, 36 * mib},
		{5 * mib, 36 * mib},  // the token path's working set: the floor binds
		{10 * mib, 36 * mib}, // 2×10+16 = 36
		{30 * mib, 76 * mib}, // a large catalog: the limit moves away
	} {
		got := memoryLimit(c.live)
		if got != c.want {
			t.Errorf("memoryLimit(%d MiB) = %d MiB, want %d MiB", c.live/mib, got/mib, c.want/mib)
		}
		// The heap may always grow past the live heap by the headroom before the limit binds.
		if got < int64(c.live)+16*mib {
			t.Errorf("memoryLimit(%d MiB) = %d MiB leaves the collector less than 16 MiB", c.live/mib, got/mib)
		}
	}
}

func TestTuneGCSetsAFollowingLimit(t *testing.T) {
	tuneGC(func(string) string { return "" })
	if got := debug.SetMemoryLimit(-1); got < memLimitFloor || got == math.MaxInt64 {
		t.Errorf("after tuneGC the memory limit is %d, want at least %d", got, memLimitFloor)
	}
}
