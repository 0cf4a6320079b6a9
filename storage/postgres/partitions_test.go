package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mandatehq/mandate/storage"
)

// The day partitions, a month ahead so that audit_log_history (the migration's, up to today
// at most) is out of the way: a record written before its day's partition exists lands in
// audit_log_default and moves when the partition is made; retention drops whole partitions,
// and gives up on a drop rather than queue the log's writes behind a long reader.
func TestAuditDayPartitions(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	base := storage.AuditDay(time.Now()).AddDate(0, 0, 30)
	day := func(d int) time.Time { return base.AddDate(0, 0, d) }
	partitionOf := func(id string) string {
		t.Helper()
		var p string
		if err := s.pool.QueryRow(ctx, `SELECT tableoid::regclass::text FROM audit_log WHERE id = $1`, id).Scan(&p); err != nil {
			t.Fatalf("partition of %s: %v", id, err)
		}
		return p
	}
	appendAt := func(id string, at time.Time) {
		t.Helper()
		if err := s.AppendAudit(ctx, &storage.AuditRecord{ID: id, Time: at, Event: "admin.test",
			Outcome: storage.OutcomeGranted}); err != nil {
			t.Fatalf("AppendAudit %s: %v", id, err)
		}
	}

	appendAt("evt_stray", day(1).Add(10*time.Hour))
	if p := partitionOf("evt_stray"); p != "audit_log_default" {
		t.Fatalf("a record with no day partition yet went to %s, want audit_log_default", p)
	}
	// Writers keep adding records of the day that has begun (day 0) while its partition is
	// made: none may fail, and each ends up in that partition.
	stopWriting := make(chan struct{})
	var written atomic.Int64
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stopWriting:
					return
				default:
				}
				err := s.AppendAudit(ctx, &storage.AuditRecord{ID: fmt.Sprintf("evt_w%d_%d", w, i),
					Time: day(0).Add(time.Duration(i) * time.Millisecond), Event: "admin.test", Outcome: storage.OutcomeGranted})
				if err != nil {
					t.Errorf("a write while the day's partition was made: %v", err)
					return
				}
				written.Add(1)
			}
		})
	}
	// Readers of a record of that day, committed before: it moves from the default partition
	// to the day's, and no read may miss it.
	appendAt("evt_day0", day(0).Add(time.Hour))
	var missed atomic.Int64
	for range 4 {
		writers.Go(func() {
			for {
				select {
				case <-stopWriting:
					return
				default:
				}
				var n int
				err := s.pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE time >= $1 AND time < $2 AND id = 'evt_day0'`,
					day(0), day(1)).Scan(&n)
				if err != nil {
					t.Errorf("a read while the day's partition was made: %v", err)
					return
				}
				if n != 1 {
					missed.Add(1)
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	err := s.PrepareAuditLog(ctx, base)
	time.Sleep(50 * time.Millisecond)
	close(stopWriting)
	writers.Wait()
	if missed.Load() > 0 {
		t.Errorf("%d reads missed a committed record while its day's partition was made", missed.Load())
	}
	if err != nil {
		t.Fatalf("PrepareAuditLog: %v", err)
	}
	var inDay int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+dayPartition(day(0))+` WHERE id LIKE 'evt_w%'`).Scan(&inDay); err != nil {
		t.Fatal(err)
	}
	if inDay != written.Load() || inDay == 0 {
		t.Errorf("%d records written while day 0's partition was made, %d of them in it", written.Load(), inDay)
	}
	var parts []string
	for d := -1; d <= storage.AuditDaysAhead; d++ {
		parts = append(parts, dayPartition(day(d)))
	}
	rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'audit_log'::regclass AND c.relname LIKE 'audit_log_p%' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if !slices.Equal(got, parts) {
		t.Fatalf("day partitions after PrepareAuditLog(%s): %v, want %v", base.Format(time.DateOnly), got, parts)
	}
	if p := partitionOf("evt_stray"); p != dayPartition(day(1)) {
		t.Errorf("the stray record is in %s after PrepareAuditLog, want %s", p, dayPartition(day(1)))
	}
	appendAt("evt_before", day(-1).Add(time.Hour))
	appendAt("evt_first", day(0))
	appendAt("evt_kept", day(2).Add(-time.Microsecond))
	if p := partitionOf("evt_first"); p != dayPartition(day(0)) {
		t.Errorf("a record of %s went to %s", day(0), p)
	}

	// A reader holds the log: the drop gives up after its lock timeout and drops nothing.
	tx := holdLog(t, s)
	start := time.Now()
	pruned, err := s.PruneAudit(ctx, day(1).Add(12*time.Hour))
	if err != nil {
		t.Fatalf("PruneAudit while a reader holds the log: %v", err)
	}
	if len(pruned.Partitions) != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("PruneAudit while a reader holds the log dropped %v in %s, want nothing, promptly",
			pruned.Partitions, time.Since(start))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// A drop that stopped after its detach, and after dropping its primary key and one index,
	// left day -1's table behind: the next run drops the rest.
	if _, err := s.pool.Exec(ctx, `ALTER TABLE audit_log DETACH PARTITION `+dayPartition(day(-1))); err != nil {
		t.Fatal(err)
	}
	var indexes int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_index WHERE indrelid = $1::regclass`, dayPartition(day(-1))).Scan(&indexes); err != nil || indexes != 6 {
		t.Fatalf("the detached day has %d indexes (%v), want the log's 6", indexes, err)
	}
	if _, err := s.pool.Exec(ctx, `ALTER TABLE `+dayPartition(day(-1))+` DROP CONSTRAINT `+dayPartition(day(-1))+`_pkey`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `DROP INDEX `+dayPartition(day(-1))+`_trace_id_idx`); err != nil {
		t.Fatal(err)
	}

	pruned, err = s.PruneAudit(ctx, day(1).Add(12*time.Hour))
	if err != nil {
		t.Fatalf("PruneAudit: %v", err)
	}
	if want := []string{dayPartition(day(-1)), dayPartition(day(0))}; !slices.Equal(pruned.Partitions, want) || pruned.Rows != 0 {
		t.Errorf("PruneAudit removed %+v, want the partitions %v and no single rows", pruned, want)
	}
	for _, id := range []string{"evt_before", "evt_first"} {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE id = $1`, id).Scan(&n); err != nil || n != 0 {
			t.Errorf("%s after its day was pruned: %d rows (%v)", id, n, err)
		}
	}
	for _, id := range []string{"evt_stray", "evt_kept"} {
		partitionOf(id) // still there
	}
	for _, d := range []int{-1, 0} {
		var gone bool
		if err := s.pool.QueryRow(ctx, `SELECT to_regclass($1) IS NULL`, dayPartition(day(d))).Scan(&gone); err != nil || !gone {
			t.Errorf("table %s after PruneAudit: gone %v (%v)", dayPartition(day(d)), gone, err)
		}
	}
}

// A token's lookup reads one day partition, through its token_jti index, whatever the number
// of days: as a custom plan (pruned when planned) and as the generic plan a pooled
// connection settles on (pruned when run).
func TestTokenLookupReadsOnePartition(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	base := storage.AuditDay(time.Now()).AddDate(0, 0, 30)
	for d := 0; d < 3*storage.AuditDaysAhead; d += storage.AuditDaysAhead {
		if err := s.PrepareAuditLog(ctx, base.AddDate(0, 0, d)); err != nil {
			t.Fatal(err)
		}
	}
	iat := base.AddDate(0, 0, 5).Add(13 * time.Hour)
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, `SET plan_cache_mode = `+mode); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `PREPARE lookup AS `+getTokenState); err != nil {
			t.Fatal(err)
		}
		var plan string
		if err := conn.QueryRow(ctx, fmt.Sprintf(`EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, FORMAT JSON)
			EXECUTE lookup('at_x', '%s', '%s')`, pgTime(iat), pgTime(iat.Add(time.Second)))).Scan(&plan); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `DEALLOCATE lookup; RESET plan_cache_mode`); err != nil {
			t.Fatal(err)
		}
		// Relation names of the scans the executor ran (a pruned subplan is not in the plan,
		// or shows "Subplans Removed"; it has no "Actual Loops" above zero).
		scanned := map[string]bool{}
		var walk func(node map[string]any)
		walk = func(node map[string]any) {
			if rel, ok := node["Relation Name"].(string); ok && strings.HasPrefix(rel, "audit_log") {
				if loops, _ := node["Actual Loops"].(float64); loops > 0 {
					scanned[rel] = true
				}
			}
			if kids, ok := node["Plans"].([]any); ok {
				for _, k := range kids {
					walk(k.(map[string]any))
				}
			}
		}
		var doc []map[string]any
		if err := json.Unmarshal([]byte(plan), &doc); err != nil {
			t.Fatal(err)
		}
		walk(doc[0]["Plan"].(map[string]any))
		want := dayPartition(storage.AuditDay(iat))
		if len(scanned) != 1 || !scanned[want] {
			t.Errorf("%s: the lookup scanned %v, want only %s\n%s", mode, scanned, want, plan)
		}
	}
}

// The days audit_log_history covers (on a fresh log, up to today) are left alone before any
// lock is taken: a reader holding the log does not make preparing them fail or wait.
func TestPrepareSkipsHistoryDaysWithoutLocking(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	now := time.Now()
	if err := s.PrepareAuditLog(ctx, now); err != nil {
		t.Fatal(err)
	}
	holdLog(t, s)
	if err := s.PrepareAuditLog(ctx, now); err != nil {
		t.Errorf("PrepareAuditLog again while a reader holds the log: %v", err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname = $1`,
		dayPartition(storage.AuditDay(now).AddDate(0, 0, -1))).Scan(&n); err != nil || n != 0 {
		t.Errorf("yesterday, inside the history's range, has a table of its own (%d, %v)", n, err)
	}
}

// holdLog opens a transaction that has read the audit log, so it holds a lock on it until
// rolled back (by the caller, or at the test's end).
func holdLog(t *testing.T, s *Store) pgx.Tx {
	t.Helper()
	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(t.Context(), `SELECT count(*) FROM audit_log`); err != nil {
		t.Fatal(err)
	}
	return tx
}

// While another replica prunes (it holds the prune lock), PruneAudit drops nothing and says
// so without an error; once that replica is done, it drops what is due.
func TestPruneOneReplicaAtATime(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	today := storage.AuditDay(time.Now())
	if err := s.PrepareAuditLog(ctx, today); err != nil {
		t.Fatal(err)
	}
	other, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	const key = `hashtext('mandate.audit_log.prune.' || current_schema())`
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock(`+key+`)`); err != nil {
		t.Fatal(err)
	}
	before := today.AddDate(0, 0, 1).Add(12 * time.Hour) // today's partition is due
	pruned, err := s.PruneAudit(ctx, before)
	if err != nil || len(pruned.Partitions) != 0 || pruned.Rows != 0 {
		t.Fatalf("PruneAudit while another replica prunes: %+v, %v; want nothing, no error", pruned, err)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock(`+key+`)`); err != nil {
		t.Fatal(err)
	}
	pruned, err = s.PruneAudit(ctx, before)
	if want := []string{dayPartition(today)}; err != nil || !slices.Equal(pruned.Partitions, want) {
		t.Fatalf("PruneAudit after the other replica finished: %+v, %v; want %v", pruned, err, want)
	}
	// And it let go of the lock: another session can take it.
	var free bool
	if err := other.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+key+`)`).Scan(&free); err != nil || !free {
		t.Fatalf("the prune lock after PruneAudit: free %v (%v)", free, err)
	}
}
