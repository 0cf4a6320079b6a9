package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mandatehq/mandate/authz"
	"github.com/mandatehq/mandate/storage"
)

// metrics are served at GET /metrics on the admin listener (Prometheus text format).
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	decisions *prometheus.CounterVec
	authFails *prometheus.CounterVec
	throttled *prometheus.CounterVec
	batches   prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_http_requests_total",
			Help: "Public listener requests by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mandate_http_request_duration_seconds",
			Help:    "Public listener request latency by route.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"route"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_decisions_total",
			Help: "Audited decisions by event, outcome and reason code (one per audit record).",
		}, []string{"event", "outcome", "reason"}),
		// Never labelled by the client id claimed: it is made up at will, and each new value
		// would be a new series.
		authFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_client_authentication_failures_total",
			Help: "Requests refused before their client was authenticated, by endpoint and reason code.",
		}, []string{"endpoint", "reason"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_throttled_requests_total",
			Help: "Requests answered 429 because their remote address kept failing client authentication, by endpoint.",
		}, []string{"endpoint"}),
		// Its _sum over its _count is the mean rows per commit of the token endpoint.
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mandate_issuance_batch_rows",
			Help:    "Issuances committed together by group commit, per commit.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.decisions, m.authFails, m.throttled, m.batches,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// unauthenticated counts a request authz refused before authenticating its client.
func (m *metrics) unauthenticated(endpoint, reason string) {
	if reason == authz.ReasonRateLimited {
		m.throttled.WithLabelValues(endpoint).Inc()
		return
	}
	m.authFails.WithLabelValues(endpoint, reason).Inc()
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// instrument counts and times requests by the pattern the inner ServeMux matched. Patterns,
// not paths, label them, so made-up URLs cannot grow the label set.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingStore counts every audit record as it is written: each decision Mandate makes,
// granted or denied, and each admin change, passes through here exactly once.
type countingStore struct {
	storage.Store
	m *metrics
}

func (s countingStore) count(r *storage.AuditRecord) {
	s.m.decisions.WithLabelValues(r.Event, r.Outcome, r.Reason).Inc()
}

func (s countingStore) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	err := s.Store.AppendAudit(ctx, r)
	if err == nil {
		s.count(r)
	}
	return err
}

func (s countingStore) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	err := s.Store.RecordIssuance(ctx, iss)
	if err == nil {
		s.count(&iss.Audit)
	}
	return err
}

func (s countingStore) RecordIssuances(ctx context.Context, iss []storage.Issuance) []error {
	errs := s.Store.RecordIssuances(ctx, iss)
	for i, err := range errs {
		if err == nil {
			s.count(&iss[i].Audit)
		}
	}
	return errs
}

// InTx counts the records of a transaction only once it has committed.
func (s countingStore) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	var written []*storage.AuditRecord
	err := s.Store.InTx(ctx, func(tx storage.Store) error {
		return fn(txCountingStore{Store: tx, written: &written})
	})
	if err == nil {
		for _, r := range written {
			s.count(r)
		}
	}
	return err
}

type txCountingStore struct {
	storage.Store
	written *[]*storage.AuditRecord
}

func (s txCountingStore) AppendAudit(ctx context.Context, r *storage.AuditRecord) error {
	err := s.Store.AppendAudit(ctx, r)
	if err == nil {
		*s.written = append(*s.written, r)
	}
	return err
}

func (s txCountingStore) RecordIssuance(ctx context.Context, iss storage.Issuance) error {
	err := s.Store.RecordIssuance(ctx, iss)
	if err == nil {
		*s.written = append(*s.written, &iss.Audit)
	}
	return err
}

func (s txCountingStore) RecordIssuances(ctx context.Context, iss []storage.Issuance) []error {
	errs := s.Store.RecordIssuances(ctx, iss)
	for i, err := range errs {
		if err == nil {
			*s.written = append(*s.written, &iss[i].Audit)
		}
	}
	return errs
}

func (s txCountingStore) InTx(ctx context.Context, fn func(tx storage.Store) error) error {
	return fn(s) // already in a transaction: InTx does not nest
}
