// Package keys holds Mandate's own signing keys: generation, encryption at rest, the rotation
// schedule, signing and verifying Mandate's tokens, and the JWKS document.
//
// Every replica decides from the stored rows and the clock alone which key signs (see
// resolve), so replicas sharing one store agree without talking to each other; the state
// changes they derive (next → active → retired → deleted) are written back idempotently by
// whichever replica sees them first.
//
// It imports storage (the KeyStore contract) and secret (the key-encryption key); it must not
// import a storage backend, net/http, fosite or the exchange.
package keys

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// Defaults for Options.
const (
	DefaultRotateEvery      = 30 * 24 * time.Hour
	DefaultPublishAhead     = 15 * time.Minute
	DefaultTokenLifetimeMax = 24 * time.Hour
	DefaultReloadEvery      = 10 * time.Second
	DefaultReloadTimeout    = 5 * time.Second
	DefaultUnknownKIDGap    = time.Second
)

// retireMargin is added to a retired key's publication beyond the longest token lifetime: it
// covers clock skew between replicas and verifiers, and verifiers' own exp leeway.
const retireMargin = 5 * time.Minute

// Options configures a Manager. Zero values take the defaults.
type Options struct {
	// Alg is the algorithm of new keys: ES256 (default) or EdDSA. Existing keys keep theirs
	// until they rotate out; RSA is refused.
	Alg string
	// RotateEvery: a new key is created once the active key has signed this long.
	RotateEvery time.Duration
	// PublishAhead: a new key is in the JWKS this long before it signs, so verifiers that
	// cache the JWKS have seen it by then. Must exceed ReloadEvery.
	PublishAhead time.Duration
	// TokenLifetimeMax is the longest lifetime of any token Mandate signs. A retired key stays
	// published for this long after it stopped signing (plus ReloadEvery and a margin).
	TokenLifetimeMax time.Duration
	// ReloadEvery: how often Run re-reads the store (another replica may have rotated).
	ReloadEvery time.Duration
	// ReloadTimeout bounds each reload Run or VerifyFresh starts.
	ReloadTimeout time.Duration
	// UnknownKIDGap is the least time between two reloads VerifyFresh starts for tokens that
	// name a kid this replica does not know: anyone can make up kids.
	UnknownKIDGap time.Duration
	// Now is the clock (tests pass a controllable one). Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// ErrNoKey is returned by Sign before a key is loaded (Ensure not yet run).
var ErrNoKey = errors.New("keys: no signing key loaded")

// errNoChange aborts an UpdateKey whose row is already in the wanted state.
var errNoChange = errors.New("keys: no change")

// Manager keeps the signing keys of one replica in step with the store. Sign, Verify, JWKS and
// ActiveKID are safe for concurrent use and do no I/O; they read an immutable snapshot that
// Ensure, Refresh, Run and Rotate replace.
type Manager struct {
	store        storage.KeyStore
	sealer       *Sealer
	alg          string
	rotateEvery  time.Duration
	publishAhead time.Duration
	retention    time.Duration // RetiredAt → RemoveAt
	reloadEvery  time.Duration
	reloadLimit  time.Duration // ReloadTimeout
	now          func() time.Time
	log          *slog.Logger

	mu   sync.Mutex // serialises reloads and writes within this process
	snap atomic.Pointer[keySet]

	unknown kidReloads
}

// keySet is one immutable view of the keys.
type keySet struct {
	signers []*signer             // non-retired keys, ordered by (ActivatesAt, KID)
	public  map[string]*publicKey // published keys by kid
	jwks    []byte
	etag    string
	members string // published kids, to reuse jwks when a reload changes nothing visible
}

// NewManager checks opts and returns a Manager with nothing loaded; call Ensure next.
func NewManager(store storage.KeyStore, sealer *Sealer, opts Options) (*Manager, error) {
	if store == nil || sealer == nil {
		return nil, errors.New("keys: NewManager needs a store and a sealer")
	}
	if opts.Alg == "" {
		opts.Alg = ES256
	}
	if err := checkAlg(opts.Alg); err != nil {
		return nil, err
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&opts.RotateEvery, DefaultRotateEvery)
	def(&opts.PublishAhead, DefaultPublishAhead)
	def(&opts.TokenLifetimeMax, DefaultTokenLifetimeMax)
	def(&opts.ReloadEvery, DefaultReloadEvery)
	def(&opts.ReloadTimeout, DefaultReloadTimeout)
	def(&opts.UnknownKIDGap, DefaultUnknownKIDGap)
	if opts.RotateEvery < 0 || opts.PublishAhead < 0 || opts.TokenLifetimeMax < 0 || opts.ReloadEvery < 0 ||
		opts.ReloadTimeout < 0 || opts.UnknownKIDGap < 0 {
		return nil, errors.New("keys: durations must not be negative")
	}
	// A replica learns of a new key only when it reloads; if the key signed before every
	// replica had reloaded, some JWKS responses would lack the key that signed a token.
	if opts.PublishAhead <= opts.ReloadEvery {
		return nil, fmt.Errorf("keys: PublishAhead (%s) must exceed ReloadEvery (%s)", opts.PublishAhead, opts.ReloadEvery)
	}
	if opts.RotateEvery <= opts.PublishAhead {
		return nil, fmt.Errorf("keys: RotateEvery (%s) must exceed PublishAhead (%s)", opts.RotateEvery, opts.PublishAhead)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		store:        store,
		sealer:       sealer,
		alg:          opts.Alg,
		rotateEvery:  opts.RotateEvery,
		publishAhead: opts.PublishAhead,
		// A replica that has not reloaded yet may sign with the old key for up to ReloadEvery
		// after its successor took over.
		retention:   opts.TokenLifetimeMax + opts.ReloadEvery + retireMargin,
		reloadEvery: opts.ReloadEvery,
		reloadLimit: opts.ReloadTimeout,
		now:         opts.Now,
		log:         opts.Logger,
		unknown:     kidReloads{gap: opts.UnknownKIDGap},
	}, nil
}

// Ensure loads the keys, creating the first one on an empty store. It fails, naming
// MANDATE_SECRET (errors.Is(err, ErrUndecryptable)), when a stored key does not decrypt.
func (m *Manager) Ensure(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refreshLocked(ctx, true)
}

// Refresh re-reads the store once: applies due transitions, rotates when the active key is
// older than RotateEvery, and swaps in the new view. Run calls it every ReloadEvery.
func (m *Manager) Refresh(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.refreshLocked(ctx, false)
}

// Run refreshes every ReloadEvery until ctx is done, logging failures (the previous view
// keeps serving). It returns nil when ctx is done.
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(m.reloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, m.reloadLimit)
			err := m.Refresh(rctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				m.log.Error("keys: refresh failed; still serving the previous key set", "err", err)
			}
		}
	}
}

// Rotate makes a new key that signs from PublishAhead from now. When a next key is already
// waiting (another replica or an earlier call rotated), it returns that key and creates
// nothing, so repeated or concurrent calls do not pile up keys. The returned record has no
// private key.
func (m *Manager) Rotate(ctx context.Context) (*storage.SigningKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.refreshLocked(ctx, false); err != nil {
		return nil, err
	}
	rows, err := m.store.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("keys: list: %w", err)
	}
	now := m.now()
	if p := resolve(rows, now, m.retention); p.pending != nil {
		k := *p.pending
		k.EncryptedPrivateKey = nil
		return &k, nil
	}
	k, err := m.create(ctx, now, now.Add(m.publishAhead))
	if err != nil {
		return nil, err
	}
	if err := m.refreshLocked(ctx, false); err != nil {
		return nil, err
	}
	out := *k
	out.EncryptedPrivateKey = nil
	return &out, nil
}

// List returns every stored key with its status as of now (a transition not yet written is
// shown as it will be written) and without its private key.
func (m *Manager) List(ctx context.Context) ([]storage.SigningKey, error) {
	rows, err := m.store.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("keys: list: %w", err)
	}
	p := resolve(rows, m.now(), m.retention)
	for i := range rows {
		k := &rows[i]
		k.EncryptedPrivateKey = nil
		switch {
		case k.Status == storage.KeyRetired:
		case p.active != nil && k.KID == p.active.KID:
			k.Status = storage.KeyActive
		case !p.retire[k.KID].IsZero():
			k.Status = storage.KeyRetired
			k.RetiredAt = p.retire[k.KID]
			k.RemoveAt = k.RetiredAt.Add(m.retention)
		default:
			k.Status = storage.KeyNext
		}
	}
	return rows, nil
}

// ActiveKID is the kid Sign uses now ("" before Ensure).
func (m *Manager) ActiveKID() string {
	ks := m.snap.Load()
	if ks == nil {
		return ""
	}
	if s := ks.signerAt(m.now()); s != nil {
		return s.kid
	}
	return ""
}

// Sign returns payload as a compact JWS with header {alg, kid, typ} signed by the active key.
// payload is used as is (the caller marshals the claims).
func (m *Manager) Sign(payload []byte, typ string) (token, kid string, err error) {
	ks := m.snap.Load()
	if ks == nil {
		return "", "", ErrNoKey
	}
	s := ks.signerAt(m.now())
	if s == nil {
		return "", "", ErrNoKey
	}
	if s.err != nil {
		return "", "", s.err
	}
	token, err = s.sign(payload, typ)
	return token, s.kid, err
}

// Verify checks a token Mandate signed against the currently published keys and returns its
// payload and kid. It checks the JWS only (size, alg allow-list, typ, kid, signature); the
// claims (exp, aud, iss, ...) are the caller's to check.
func (m *Manager) Verify(token string, opts ...VerifyOption) (payload []byte, kid string, err error) {
	ks := m.snap.Load()
	if ks == nil {
		return nil, "", fmt.Errorf("%w: no keys loaded", ErrInvalidToken)
	}
	return ks.verify(token, m.now(), opts)
}

// VerifyFresh is Verify for a token that may have been signed by another replica: when the
// token names a kid this replica has not loaded, it reloads the keys before deciding, so a key
// another replica created since the last reload is known here too. Reloads for unknown kids
// run one at a time and start at most once per UnknownKIDGap (anyone can make up a kid);
// callers meanwhile wait for the next one, or until ctx ends. An error that wraps
// ErrUnavailable means no reload could be done: the token's fate is unknown.
func (m *Manager) VerifyFresh(ctx context.Context, token string, opts ...VerifyOption) (payload []byte, kid string, err error) {
	payload, kid, err = m.Verify(token, opts...)
	if !errors.Is(err, errUnknownKID) {
		return payload, kid, err
	}
	if rerr := m.unknown.await(ctx, time.Now(), m.reloadForKID); rerr != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrUnavailable, rerr)
	}
	return m.Verify(token, opts...)
}

// ErrUnavailable is wrapped by VerifyFresh's errors when the keys could not be reloaded.
var ErrUnavailable = errors.New("keys: could not reload the keys")

func (m *Manager) reloadForKID() error {
	ctx, cancel := context.WithTimeout(context.Background(), m.reloadLimit)
	defer cancel()
	return m.Refresh(ctx)
}

// kidReloads runs the reloads VerifyFresh asks for: one at a time, each starting at least gap
// after the previous one, each shared by every caller waiting when it starts.
type kidReloads struct {
	gap time.Duration

	mu      sync.Mutex
	running chan struct{} // closed when the reload in flight ends; nil when none is
	started time.Time     // when the last reload started
	err     error         // how it ended
}

// await returns once a reload that started at or after since has ended, with its error. A
// reload that started earlier may have missed the key the caller needs.
func (r *kidReloads) await(ctx context.Context, since time.Time, reload func() error) error {
	for {
		r.mu.Lock()
		if ch := r.running; ch != nil {
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if !r.started.IsZero() && !r.started.Before(since) {
			err := r.err
			r.mu.Unlock()
			return err
		}
		if wait := time.Until(r.started.Add(r.gap)); !r.started.IsZero() && wait > 0 {
			r.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		ch := make(chan struct{})
		r.running, r.started = ch, time.Now()
		r.mu.Unlock()

		err := reload()
		r.mu.Lock()
		r.running, r.err = nil, err
		r.mu.Unlock()
		close(ch)
		return err
	}
}

// JWKS returns the published key set document (public keys only) and its strong ETag
// (quoted). The bytes are shared: callers must not modify them.
func (m *Manager) JWKS() (doc []byte, etag string) {
	ks := m.snap.Load()
	if ks == nil {
		return []byte(`{"keys":[]}`), `"empty"`
	}
	return ks.jwks, ks.etag
}

// signerAt is the key that signs at now: the non-retired key with the latest ActivatesAt
// (ties by kid) that is not in the future. When every loaded key is still in the future, our
// clock is behind the replica that wrote them; the earliest one is taken rather than failing,
// since it has been published since it was created.
func (ks *keySet) signerAt(now time.Time) *signer {
	for i := len(ks.signers) - 1; i >= 0; i-- {
		if !ks.signers[i].activatesAt.After(now) {
			return ks.signers[i]
		}
	}
	if len(ks.signers) > 0 {
		return ks.signers[0]
	}
	return nil
}

// plan is what the stored rows mean at one instant.
type plan struct {
	active   *storage.SigningKey  // the key that signs now
	pending  *storage.SigningKey  // the latest non-retired key not yet signing, if any
	activate []string             // stored as next, now active
	retire   map[string]time.Time // non-retired, superseded: kid → when its successor took over
	remove   []string             // retired and past RemoveAt
	live     int                  // non-retired keys
}

// resolve is the one rule every replica applies: among non-retired keys whose ActivatesAt
// has come, the latest (ties by kid) is active and the others are superseded, each retired
// at its successor's ActivatesAt. Being a function of the rows and now only, two replicas
// reading the same rows agree, even when both created a first key at the same instant.
func resolve(rows []storage.SigningKey, now time.Time, retention time.Duration) plan {
	p := plan{retire: map[string]time.Time{}}
	var due []*storage.SigningKey
	for i := range rows {
		k := &rows[i]
		switch {
		case k.Status == storage.KeyRetired:
			if !k.RemoveAt.IsZero() && !now.Before(k.RemoveAt) {
				p.remove = append(p.remove, k.KID)
			}
			continue
		case k.ActivatesAt.After(now):
			if p.pending == nil || keyLess(p.pending, k) {
				p.pending = k
			}
		default:
			due = append(due, k)
		}
		p.live++
	}
	slices.SortFunc(due, func(a, b *storage.SigningKey) int {
		if keyLess(a, b) {
			return -1
		}
		return 1
	})
	for i, k := range due {
		if i == len(due)-1 {
			p.active = k
			if k.Status != storage.KeyActive {
				p.activate = append(p.activate, k.KID)
			}
			break
		}
		p.retire[k.KID] = due[i+1].ActivatesAt
	}
	return p
}

func keyLess(a, b *storage.SigningKey) bool {
	if c := a.ActivatesAt.Compare(b.ActivatesAt); c != 0 {
		return c < 0
	}
	return a.KID < b.KID
}

// refreshLocked: list, write due transitions, rotate if due, build the view. strict (Ensure)
// makes any unusable key an error instead of a log line.
func (m *Manager) refreshLocked(ctx context.Context, strict bool) error {
	rows, err := m.store.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("keys: list: %w", err)
	}
	now := m.now()
	p := resolve(rows, now, m.retention)
	wrote, err := m.apply(ctx, p)
	if err != nil {
		return err
	}
	switch {
	case p.live == 0:
		// Nothing can sign: the store is new (or every key was retired). No live key has
		// signed anything, so there is nothing to pre-publish: the new key signs at once.
		// Other replicas may be here too, and a key that signs at once is one they would not
		// know: only one of us creates it, and the others load it below.
		if err := m.createFirst(ctx, now); err != nil {
			return err
		}
		wrote = true
	case p.active != nil && p.pending == nil && now.Sub(p.active.ActivatesAt) >= m.rotateEvery:
		if _, err := m.create(ctx, now, now.Add(m.publishAhead)); err != nil {
			return err
		}
		wrote = true
	}
	if wrote {
		if rows, err = m.store.ListKeys(ctx); err != nil {
			return fmt.Errorf("keys: list: %w", err)
		}
	}
	ks, err := m.build(rows, now, strict)
	if err != nil {
		return err
	}
	m.snap.Store(ks)
	return nil
}

// apply writes p's transitions. Each write re-checks the row inside UpdateKey, so a
// concurrent replica writing the same transition is harmless and never undone.
func (m *Manager) apply(ctx context.Context, p plan) (wrote bool, err error) {
	for _, kid := range p.activate {
		_, err := m.store.UpdateKey(ctx, kid, func(k *storage.SigningKey) error {
			if k.Status != storage.KeyNext {
				return errNoChange
			}
			k.Status = storage.KeyActive
			return nil
		})
		switch {
		case err == nil:
			wrote = true
			m.log.Info("keys: signing key activated", "kid", kid)
		case errors.Is(err, errNoChange), errors.Is(err, storage.ErrNotFound):
		default:
			return wrote, fmt.Errorf("keys: activate %s: %w", kid, err)
		}
	}
	for kid, at := range p.retire {
		removeAt := at.Add(m.retention)
		_, err := m.store.UpdateKey(ctx, kid, func(k *storage.SigningKey) error {
			if k.Status == storage.KeyRetired {
				return errNoChange
			}
			k.Status = storage.KeyRetired
			k.RetiredAt = at
			k.RemoveAt = removeAt
			return nil
		})
		switch {
		case err == nil:
			wrote = true
			m.log.Info("keys: signing key retired", "kid", kid, "retired_at", at, "remove_at", removeAt)
		case errors.Is(err, errNoChange), errors.Is(err, storage.ErrNotFound):
		default:
			return wrote, fmt.Errorf("keys: retire %s: %w", kid, err)
		}
	}
	for _, kid := range p.remove {
		switch err := m.store.DeleteKey(ctx, kid); {
		case err == nil:
			wrote = true
			m.log.Info("keys: retired signing key removed", "kid", kid)
		case errors.Is(err, storage.ErrNotFound):
		default:
			return wrote, fmt.Errorf("keys: remove %s: %w", kid, err)
		}
	}
	return wrote, nil
}

// create stores a new key of the configured algorithm that signs from activatesAt.
func (m *Manager) create(ctx context.Context, now, activatesAt time.Time) (*storage.SigningKey, error) {
	k, err := m.generate(now, activatesAt)
	if err != nil {
		return nil, err
	}
	if err := m.store.CreateKey(ctx, k); err != nil {
		return nil, fmt.Errorf("keys: store new key: %w", err)
	}
	m.log.Info("keys: signing key created", "kid", k.KID, "alg", k.Alg, "activates_at", k.ActivatesAt)
	return k, nil
}

// createFirst stores a key that signs at once, unless a live key exists by then.
func (m *Manager) createFirst(ctx context.Context, now time.Time) error {
	k, err := m.generate(now, now)
	if err != nil {
		return err
	}
	created, err := m.store.CreateKeyIfNoneLive(ctx, k)
	if err != nil {
		return fmt.Errorf("keys: store first key: %w", err)
	}
	if created {
		m.log.Info("keys: signing key created", "kid", k.KID, "alg", k.Alg, "activates_at", k.ActivatesAt)
	} else {
		m.log.Debug("keys: another replica created the first signing key")
	}
	return nil
}

func (m *Manager) generate(now, activatesAt time.Time) (*storage.SigningKey, error) {
	// Microseconds and UTC: what the backends keep, so this replica's view equals the stored one.
	now = now.UTC().Truncate(time.Microsecond)
	activatesAt = activatesAt.UTC().Truncate(time.Microsecond)
	return newKey(m.sealer, m.alg, now, activatesAt)
}

// build turns rows into a view. Private keys are opened once per key: a signer already in the
// current view is reused when its sealed bytes are unchanged.
func (m *Manager) build(rows []storage.SigningKey, now time.Time, strict bool) (*keySet, error) {
	prev := map[string]*signer{}
	old := m.snap.Load()
	if old != nil {
		for _, s := range old.signers {
			prev[s.kid] = s
		}
	}
	ks := &keySet{public: map[string]*publicKey{}}
	var published []*storage.SigningKey
	for i := range rows {
		k := &rows[i]
		if k.Status == storage.KeyRetired && !k.RemoveAt.IsZero() && !now.Before(k.RemoveAt) {
			continue
		}
		pk, err := parsePublic(k)
		if err != nil {
			if strict {
				return nil, err
			}
			m.log.Error("keys: skipping unusable key", "kid", k.KID, "err", err)
			continue
		}
		ks.public[k.KID] = pk
		published = append(published, k)
		if k.Status == storage.KeyRetired {
			continue
		}
		if s := prev[k.KID]; s != nil && s.err == nil && s.activatesAt.Equal(k.ActivatesAt) &&
			bytes.Equal(s.sealed, k.EncryptedPrivateKey) {
			ks.signers = append(ks.signers, s)
			continue
		}
		priv, err := openPrivate(m.sealer, k, pk)
		if err != nil {
			if strict {
				return nil, err
			}
			// Keep it as a signer that fails: silently signing with another key would break
			// the replicas' agreement on the active kid.
			m.log.Error("keys: cannot open signing key", "kid", k.KID, "err", err)
			ks.signers = append(ks.signers, &signer{kid: k.KID, alg: k.Alg, activatesAt: k.ActivatesAt, err: err})
			continue
		}
		ks.signers = append(ks.signers, newSigner(k.KID, k.Alg, k.ActivatesAt, k.EncryptedPrivateKey, priv))
	}
	slices.SortFunc(ks.signers, func(a, b *signer) int {
		return cmp.Or(a.activatesAt.Compare(b.activatesAt), strings.Compare(a.kid, b.kid))
	})
	if len(ks.signers) == 0 {
		return nil, errors.New("keys: no usable signing key in the store")
	}

	// Newest first: verifiers that try keys in order find the active one sooner.
	slices.SortFunc(published, func(a, b *storage.SigningKey) int {
		return cmp.Or(b.ActivatesAt.Compare(a.ActivatesAt), strings.Compare(b.KID, a.KID))
	})
	kids := make([]string, len(published))
	for i, k := range published {
		kids[i] = k.KID
	}
	ks.members = strings.Join(kids, ",")
	if old != nil && old.members == ks.members {
		ks.jwks, ks.etag = old.jwks, old.etag
		return ks, nil
	}
	var doc bytes.Buffer
	doc.WriteString(`{"keys":[`)
	for i, k := range published {
		if i > 0 {
			doc.WriteByte(',')
		}
		doc.Write(ks.public[k.KID].jwk)
	}
	doc.WriteString(`]}`)
	ks.jwks = doc.Bytes()
	sum := sha256.Sum256(ks.jwks)
	ks.etag = `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
	return ks, nil
}
