package exchange

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/mandatehq/mandate/storage"
)

// Catalog reads clients and audiences through a small in-memory cache. They change rarely
// and are read on every request, so caching them buys the hot path two fewer round trips;
// the admin API calls the Invalidate hooks after every change so the replica that made it
// sees it at once, other replicas call them when the store's change feed tells them of it,
// and the TTL bounds staleness when that feed is down.
//
// Grant lookups are cached too, which leaves a granted exchange one round trip (the commit).
// They are cached per client and tenant while that client's grants there are few (the usual
// "*" grants an administrator creates): every user of the tenant is then answered from one
// entry. A client with more (per-user grants from consent, say) is looked up per user.
// That is safe for revocation because RecordIssuance re-checks, inside the commit, that the
// grant is still unrevoked: a cached grant can never issue a token after its revocation has
// committed. What the cache can delay, by at most its TTL on other replicas, is a newly
// created grant being seen; that errs towards refusing.
type Catalog struct {
	store storage.Store
	ttl   time.Duration
	now   func() time.Time

	mu sync.Mutex
	// gen moves on every invalidation: a load that began before one may have read what the
	// invalidated change replaced, and is not cached (see lookup).
	gen       uint64
	clients   map[string]cached[*storage.Client]
	audiences map[string]cached[*storage.Audience]
	resources map[string]cached[*storage.Audience]
	pairs     map[pairKey]cached[pairGrants]
	grants    map[grantKey]cached[[]storage.Grant]
}

// pairKey names one client's grants in one tenant.
type pairKey struct{ tenant, client string }

// pairGrants is every grant in force of one client in one tenant, unless there were more
// than maxPairGrants (many): then they are looked up per user.
type pairGrants struct {
	grants []storage.Grant
	many   bool
}

// grantKey is a GrantQuery without its time: the cached list is filtered by time on each use.
type grantKey struct{ tenant, subject, client, agent string }

type cached[T any] struct {
	v       T
	err     error // ErrNotFound is cached too, so unknown ids cannot hammer the store
	expires time.Time
}

// maxCatalogEntries bounds each map: ids come from requests, so an attacker could otherwise
// grow it without limit with made-up ids.
const maxCatalogEntries = 10000

// maxPairGrants and maxPairEntries bound the per-client grant lists: at most 64 grants in
// each of 1,024 client-and-tenant pairs (a full list is about 25 KB).
const (
	maxPairGrants  = 64
	maxPairEntries = 1024
)

// NewCatalog returns a Catalog over store. ttl <= 0 disables caching.
func NewCatalog(store storage.Store, ttl time.Duration, now func() time.Time) *Catalog {
	if now == nil {
		now = time.Now
	}
	return &Catalog{
		store: store, ttl: ttl, now: now,
		clients:   map[string]cached[*storage.Client]{},
		audiences: map[string]cached[*storage.Audience]{},
		resources: map[string]cached[*storage.Audience]{},
		pairs:     map[pairKey]cached[pairGrants]{},
		grants:    map[grantKey]cached[[]storage.Grant]{},
	}
}

// Client returns the client with id (storage.ErrNotFound when there is none). The record is
// shared: callers must not modify it.
func (c *Catalog) Client(ctx context.Context, id string) (*storage.Client, error) {
	return lookup(c, c.clients, maxCatalogEntries, id, func() (*storage.Client, error) { return c.store.GetClient(ctx, id) })
}

// Audience returns the audience with id.
func (c *Catalog) Audience(ctx context.Context, id string) (*storage.Audience, error) {
	return lookup(c, c.audiences, maxCatalogEntries, id, func() (*storage.Audience, error) { return c.store.GetAudience(ctx, id) })
}

// AudienceByResource returns the audience that registered the resource URI.
func (c *Catalog) AudienceByResource(ctx context.Context, uri string) (*storage.Audience, error) {
	return lookup(c, c.resources, maxCatalogEntries, uri, func() (*storage.Audience, error) { return c.store.GetAudienceByResource(ctx, uri) })
}

// Grants returns the grants in force for q. The list is shared: callers must not modify it.
func (c *Catalog) Grants(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	all, err := c.candidates(ctx, q)
	if err != nil {
		return nil, err
	}
	// Subject, agent and expiry are checked on every use: a client's list holds every
	// user's grants, and a cached list never outlives a grant.
	var live []storage.Grant
	for i := range all {
		g := &all[i]
		if (g.Subject == q.Subject || g.Subject == storage.AnySubject) &&
			(g.AgentID == "" || g.AgentID == q.AgentID) &&
			!q.Now.Before(g.NotBefore) && q.Now.Before(g.ExpiresAt) {
			live = append(live, *g)
		}
	}
	return live, nil
}

// candidates returns a superset of the grants in force for q: the client's whole list in the
// tenant while it is short, else the user's own. Grants loaded are those in force at load
// time: one that starts later waits for the next load, as a new grant does.
func (c *Catalog) candidates(ctx context.Context, q storage.GrantQuery) ([]storage.Grant, error) {
	if c.ttl > 0 {
		pair, err := lookup(c, c.pairs, maxPairEntries, pairKey{q.Tenant, q.ClientID}, func() (pairGrants, error) {
			g, err := c.store.ActiveGrantsOf(ctx, q.Tenant, q.ClientID, q.Now, maxPairGrants+1)
			switch {
			case err != nil:
				return pairGrants{}, err
			case len(g) > maxPairGrants:
				return pairGrants{many: true}, nil
			case len(g) == 0:
				return pairGrants{}, storage.ErrNotFound // evicted first, like unknown ids
			}
			return pairGrants{grants: g}, nil
		})
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return nil, nil
		case err != nil:
			return nil, err
		case !pair.many:
			return pair.grants, nil
		}
	}
	key := grantKey{q.Tenant, q.Subject, q.ClientID, q.AgentID}
	all, err := lookup(c, c.grants, maxCatalogEntries, key, func() ([]storage.Grant, error) {
		g, err := c.store.FindActiveGrants(ctx, q)
		if err == nil && len(g) == 0 {
			// Cached as "not found", so made-up subjects are the first to be evicted.
			err = storage.ErrNotFound
		}
		return g, err
	})
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	return all, err
}

// ForgetGrants drops the cached grant list for q (after a commit found one revoked).
func (c *Catalog) ForgetGrants(q storage.GrantQuery) {
	c.mu.Lock()
	c.gen++
	delete(c.pairs, pairKey{q.Tenant, q.ClientID})
	delete(c.grants, grantKey{q.Tenant, q.Subject, q.ClientID, q.AgentID})
	c.mu.Unlock()
}

// ForgetGrantsOf drops every cached grant list of subject (and of "*") with client in
// tenant, whichever agent it was for: a grant just created or revoked applies to all of them.
func (c *Catalog) ForgetGrantsOf(tenant, subject, client string) {
	c.mu.Lock()
	c.gen++
	delete(c.pairs, pairKey{tenant, client})
	for k := range c.grants {
		if k.tenant == tenant && k.client == client && (k.subject == subject || subject == storage.AnySubject) {
			delete(c.grants, k)
		}
	}
	c.mu.Unlock()
}

// InvalidateClient drops the cached client id.
func (c *Catalog) InvalidateClient(id string) {
	c.mu.Lock()
	c.gen++
	delete(c.clients, id)
	c.mu.Unlock()
}

// InvalidateAll drops every cached client and audience.
func (c *Catalog) InvalidateAll() {
	c.mu.Lock()
	c.gen++
	clear(c.clients)
	clear(c.audiences)
	clear(c.resources)
	clear(c.pairs)
	clear(c.grants)
	c.mu.Unlock()
}

// InvalidateAudiences drops every cached audience (resource URIs map to audiences, so one
// change can affect several keys; audiences are few).
func (c *Catalog) InvalidateAudiences() {
	c.mu.Lock()
	c.gen++
	clear(c.audiences)
	clear(c.resources)
	c.mu.Unlock()
}

// lookup returns m's entry for key, loading and caching it (in a map of at most limit
// entries) when it is missing or expired.
func lookup[K comparable, T any](c *Catalog, m map[K]cached[T], limit int, key K, load func() (T, error)) (T, error) {
	now := c.now()
	var gen uint64
	if c.ttl > 0 {
		c.mu.Lock()
		e, ok := m[key]
		gen = c.gen
		c.mu.Unlock()
		if ok && now.Before(e.expires) {
			return e.v, e.err
		}
	}
	v, err := load()
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		var zero T
		return zero, err // faults are not cached
	}
	if c.ttl > 0 {
		c.mu.Lock()
		if c.gen != gen { // invalidated while loading: what was loaded may be stale
			c.mu.Unlock()
			return v, err
		}
		if len(m) >= limit {
			makeRoom(m, limit, now)
		}
		m[key] = cached[T]{v: v, err: err, expires: now.Add(c.ttl)}
		c.mu.Unlock()
	}
	return v, err
}

// makeRoom frees a full map: the expired entries, then every "not found" one, then (only if
// real records alone fill it) arbitrary entries down to three quarters. Ids come from
// requests, so junk can only ever be "not found": a flood of made-up ids evicts itself and
// never the records the clients in use need.
func makeRoom[K comparable, T any](m map[K]cached[T], limit int, now time.Time) {
	for k, e := range m {
		if !now.Before(e.expires) || e.err != nil {
			delete(m, k)
		}
	}
	for k := range m { // map order is arbitrary enough
		if len(m) < limit*3/4 {
			break
		}
		delete(m, k)
	}
}
