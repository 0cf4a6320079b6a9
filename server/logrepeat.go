package server

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// DefaultRepeatInterval is the window CollapseRepeats uses in cmd/mandate by default.
const DefaultRepeatInterval = 5 * time.Second

// maxRepeatKinds bounds the kinds of record CollapseRepeats tracks at once. Past it, records
// of new kinds are written as they come (never dropped) until tracked ones expire.
const maxRepeatKinds = 256

// maxKindText bounds how much of a record's error text goes into its kind.
const maxKindText = 512

// CollapseRepeats wraps h so that an outage does not flood the log. Of the records at Warn
// or above, the first of each kind is written as is; further records of that kind within
// interval of it are only counted; and once the interval is over, one record with the first
// one's level, message and error, plus "repeated" (the count) and "interval", says how many
// were left out. The next record of the kind after that is written again and opens a new
// interval. A kind is the level, the message and the text of the "err", "error" and "cause"
// attributes, digits left out (so port numbers and durations do not make every line a kind
// of its own), and the attributes and groups the logger was given with With.
//
// Records below Warn pass through untouched: they are not what floods a log in an outage, and
// a debugging operator wants them all. interval <= 0 returns h.
func CollapseRepeats(h slog.Handler, interval time.Duration) slog.Handler {
	if interval <= 0 {
		return h
	}
	return &repeatHandler{next: h, st: &repeatState{interval: interval, now: time.Now, kinds: map[string]*repeatKind{}}}
}

type repeatHandler struct {
	next  slog.Handler
	st    *repeatState
	scope string // what With and WithGroup added, as part of every kind
}

type repeatState struct {
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	kinds map[string]*repeatKind
}

type repeatKind struct {
	until   time.Time
	count   int          // records left out since the first
	first   slog.Record  // for the summary: level, message, error attributes
	h       slog.Handler // the handler the first went to (its With attributes)
	pending *time.Timer  // writes the summary when the interval ends
}

func (h *repeatHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *repeatHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.scope)
	for _, a := range as {
		b.WriteString("\x1f" + a.String())
	}
	return &repeatHandler{next: h.next.WithAttrs(as), st: h.st, scope: b.String()}
}

func (h *repeatHandler) WithGroup(name string) slog.Handler {
	return &repeatHandler{next: h.next.WithGroup(name), st: h.st, scope: h.scope + "\x1e" + name}
}

func (h *repeatHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	key := h.kind(r)
	st := h.st
	now := st.now()

	st.mu.Lock()
	k := st.kinds[key]
	if k != nil && now.Before(k.until) {
		k.count++
		if k.pending == nil {
			k.pending = time.AfterFunc(k.until.Sub(now), func() { st.flush(key, k) })
		}
		st.mu.Unlock()
		return nil
	}
	var summaries []summary
	if k != nil {
		summaries = k.take(summaries)
	} else if len(st.kinds) >= maxRepeatKinds {
		for kk, e := range st.kinds {
			if !now.Before(e.until) {
				summaries = e.take(summaries)
				delete(st.kinds, kk)
			}
		}
	}
	tracked := k != nil || len(st.kinds) < maxRepeatKinds
	if tracked {
		st.kinds[key] = &repeatKind{until: now.Add(st.interval), first: errorAttrs(r), h: h.next}
	}
	st.mu.Unlock()

	for _, s := range summaries {
		s.write(st.interval)
	}
	return h.next.Handle(ctx, r)
}

// flush writes k's summary when its interval has ended, unless a newer record took it first.
func (st *repeatState) flush(key string, k *repeatKind) {
	st.mu.Lock()
	var summaries []summary
	if st.kinds[key] == k {
		summaries = k.take(nil)
	}
	st.mu.Unlock()
	for _, s := range summaries {
		s.write(st.interval)
	}
}

type summary struct {
	first slog.Record
	count int
	h     slog.Handler
}

// take appends k's pending summary, if any, and resets it. The caller holds st.mu.
func (k *repeatKind) take(out []summary) []summary {
	if k.pending != nil {
		k.pending.Stop()
		k.pending = nil
	}
	if k.count > 0 {
		out = append(out, summary{first: k.first, count: k.count, h: k.h})
		k.count = 0
	}
	return out
}

func (s summary) write(interval time.Duration) {
	r := slog.NewRecord(time.Now(), s.first.Level, s.first.Message, 0)
	s.first.Attrs(func(a slog.Attr) bool {
		r.AddAttrs(a)
		return true
	})
	r.AddAttrs(slog.Int("repeated", s.count), slog.String("interval", interval.String()))
	_ = s.h.Handle(context.Background(), r)
}

// isErrorAttr names the attributes that say what went wrong.
func isErrorAttr(key string) bool { return key == "err" || key == "error" || key == "cause" }

// errorAttrs is r with only its error attributes, for the summary.
func errorAttrs(r slog.Record) slog.Record {
	out := slog.NewRecord(r.Time, r.Level, r.Message, 0)
	r.Attrs(func(a slog.Attr) bool {
		if isErrorAttr(a.Key) {
			out.AddAttrs(a)
		}
		return true
	})
	return out
}

// kind is r's key: scope, level, message and error text, without digits.
func (h *repeatHandler) kind(r slog.Record) string {
	var b strings.Builder
	b.WriteString(h.scope)
	b.WriteString("\x1f" + r.Level.String() + "\x1f")
	writeNoDigits(&b, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		if isErrorAttr(a.Key) {
			b.WriteString("\x1f" + a.Key + "=")
			v := a.Value.Resolve().String()
			if len(v) > maxKindText {
				v = v[:maxKindText]
			}
			writeNoDigits(&b, v)
		}
		return true
	})
	return b.String()
}

// writeNoDigits writes s with each run of digits as one '#'.
func writeNoDigits(b *strings.Builder, s string) {
	digits := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= '0' && c <= '9' {
			if !digits {
				b.WriteByte('#')
			}
			digits = true
			continue
		}
		digits = false
		b.WriteByte(c)
	}
}
