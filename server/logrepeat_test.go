package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// fakeNow is a clock the test moves.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeNow) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeNow) add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

func newRepeatLogger(interval time.Duration) (*slog.Logger, *logBuffer, *fakeNow) {
	buf := &logBuffer{}
	h := CollapseRepeats(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}), interval)
	clock := &fakeNow{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	h.(*repeatHandler).st.now = clock.now
	return slog.New(h), buf, clock
}

// An outage makes every request log the same error: one line per interval and a count,
// not thousands of lines (reliability run: 27,000 ERROR lines, 10.9 MB, in 8 s).
func TestCollapseRepeatsOneLinePerIntervalWithACount(t *testing.T) {
	log, buf, clock := newRepeatLogger(time.Hour) // the interval ends by the clock, not a timer
	cause := errors.New("storage/postgres: dial tcp 127.0.0.1:5432: connect: connection refused")
	var wg sync.WaitGroup
	for i := range 1000 {
		wg.Go(func() {
			log.Error("oauth request failed", "path", "/oauth2/token", "error", "temporarily_unavailable",
				"cause", fmt.Errorf("read tcp 127.0.0.1:%d->127.0.0.1:5432: %w", 40000+i%7, cause))
		})
	}
	wg.Wait()
	lines := buf.lines(t)
	if len(lines) != 1 {
		t.Fatalf("1000 repeats of one error wrote %d lines, want 1 (the first)", len(lines))
	}
	if lines[0]["path"] != "/oauth2/token" {
		t.Errorf("the first record is not written whole: %v", lines[0])
	}

	// The next one after the interval is written again, after the count of those left out.
	clock.add(time.Hour)
	log.Error("oauth request failed", "error", "temporarily_unavailable",
		"cause", fmt.Errorf("read tcp 127.0.0.1:39999->127.0.0.1:5432: %w", cause))
	lines = buf.lines(t)
	if len(lines) != 3 {
		t.Fatalf("after the interval: %d lines, want 3 (first, summary, next): %v", len(lines), lines)
	}
	sum := lines[1]
	if sum["repeated"] != float64(999) || sum["msg"] != "oauth request failed" || sum["level"] != "ERROR" ||
		sum["interval"] != "1h0m0s" || sum["cause"] == nil {
		t.Errorf("summary line = %v; want the message, level and cause with repeated=999", sum)
	}
	if _, ok := sum["path"]; ok {
		t.Errorf("the summary repeats the first record's request details: %v", sum)
	}
}

// With nothing more to come, the summary is written when the interval ends.
func TestCollapseRepeatsSummaryWhenTheIntervalEnds(t *testing.T) {
	buf := &logBuffer{}
	log := slog.New(CollapseRepeats(slog.NewJSONHandler(buf, nil), 20*time.Millisecond))
	for range 5 {
		log.Warn("change feed: watch broke", "err", errors.New("connection refused"))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		lines := buf.lines(t)
		if len(lines) == 2 {
			if lines[1]["repeated"] != float64(4) {
				t.Fatalf("summary %v, want repeated=4", lines[1])
			}
			return
		}
		if len(lines) > 2 || time.Now().After(deadline) {
			t.Fatalf("lines %v, want the first and one summary", lines)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCollapseRepeatsKeepsWhatIsDifferent(t *testing.T) {
	log, buf, _ := newRepeatLogger(time.Hour)
	for range 3 {
		log.Info("request served") // below Warn: all kept
		log.Debug("refused")
	}
	log.Error("oauth request failed", "cause", "storage unavailable")
	log.Error("oauth request failed", "cause", "signing failed")        // another error
	log.Warn("oauth request failed", "cause", "storage unavailable")    // another level
	log.Error("admin api: store unavailable", "error", "no answer")     // another message
	log.With("listener", "admin").Error("listener failed", "err", "x")  // another scope...
	log.With("listener", "public").Error("listener failed", "err", "x") // ...and another
	if n := len(buf.lines(t)); n != 6+6 {
		t.Fatalf("%d lines, want 12: every record below Warn and the first of each kind", n)
	}
}

// However many kinds come, memory stays bounded and no first occurrence is lost.
func TestCollapseRepeatsIsBounded(t *testing.T) {
	log, buf, _ := newRepeatLogger(time.Hour)
	h := log.Handler().(*repeatHandler)
	const n = 3 * maxRepeatKinds
	for i := range n {
		log.Error("failure", "err", fmt.Sprintf("kind %c%c", 'a'+i%26, 'a'+i/26))
	}
	if got := len(buf.lines(t)); got != n {
		t.Fatalf("%d distinct kinds wrote %d lines, want all %d", n, got, n)
	}
	h.st.mu.Lock()
	tracked := len(h.st.kinds)
	h.st.mu.Unlock()
	if tracked > maxRepeatKinds {
		t.Fatalf("tracking %d kinds, bound is %d", tracked, maxRepeatKinds)
	}
}
