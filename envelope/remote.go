package envelope

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Bounds on how long a fetched JWKS is trusted without asking again. The
// lower bound keeps a client's "max-age=0" from turning every exchange
// into a fetch; the upper bound makes key removals show up within a day.
const (
	remoteMinTTL     = time.Minute
	remoteMaxTTL     = 24 * time.Hour
	remoteDefaultTTL = 5 * time.Minute
	// remoteMaxStale is how long past its expiry a cached set is still used
	// while the jwks_uri fails, so a short outage of the client's key server
	// does not stop its exchanges.
	remoteMaxStale     = 24 * time.Hour
	remoteMaxRedirects = 3
)

// RemoteOptions tune a RemoteKeySet. Zero values pick the defaults.
type RemoteOptions struct {
	// HTTPClient makes the requests; nil means a new client with no
	// timeout of its own (Timeout below applies per fetch). Its redirects
	// are held to the same URL rules as the jwks_uri itself. Its Transport,
	// when it is nil or an *http.Transport, is copied with a dialer that
	// refuses non-public addresses (see AllowLoopback) and without a proxy,
	// so the check sees the real destination; any other RoundTripper is used
	// as it is, and that check is then its own.
	HTTPClient *http.Client
	// MinRefreshInterval is the least time between two fetches, so a flood
	// of envelopes with made-up kids costs at most one fetch per interval.
	// Default 1 minute.
	MinRefreshInterval time.Duration
	// MaxBytes limits the JWKS body. Default 256 KiB.
	MaxBytes int64
	// Timeout bounds one fetch. Default 5 seconds.
	Timeout time.Duration
	// AllowLoopback permits jwks_uri hosts that resolve to loopback
	// addresses (127.0.0.0/8, ::1), over http:// too (development and
	// tests). Other http:// URLs, and hosts that resolve to private,
	// link-local, multicast or otherwise non-public addresses, are always
	// refused: a jwks_uri must not reach into the network Mandate runs in.
	AllowLoopback bool
}

// RemoteKeySet is a client's jwks_uri, fetched lazily and cached. The cache
// honours Cache-Control max-age and Expires within [1m, 24h] (5m when the
// response says nothing), refetches on an unknown kid at most once per
// MinRefreshInterval, and runs one fetch at a time however many requests
// wait for it. Safe for concurrent use.
type RemoteKeySet struct {
	uri    string
	client *http.Client
	opts   RemoteOptions
	now    func() time.Time // time.Now; tests replace it

	mu        sync.Mutex
	keys      parsedSet // nil until the first successful fetch
	fresh     time.Time // keys are fresh until then
	lastFetch time.Time // start of the last fetch, successful or not
	lastErr   error     // result of the last fetch
	inflight  *fetchCall
}

type fetchCall struct {
	done chan struct{}
	err  error
}

// NewRemoteKeySet returns a key set for jwks_uri uri. It refuses URLs other
// than https (and, with AllowLoopback, http on loopback). No request is
// made until a key is needed.
func NewRemoteKeySet(uri string, opts RemoteOptions) (*RemoteKeySet, error) {
	if err := checkJWKSURL(uri, opts.AllowLoopback); err != nil {
		return nil, err
	}
	if opts.MinRefreshInterval <= 0 {
		opts.MinRefreshInterval = time.Minute
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 10
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	client := &http.Client{}
	if opts.HTTPClient != nil {
		c := *opts.HTTPClient
		client = &c
	}
	switch t := client.Transport.(type) {
	case nil:
		client.Transport = guardedTransport(http.DefaultTransport.(*http.Transport), opts.AllowLoopback)
	case *http.Transport:
		client.Transport = guardedTransport(t, opts.AllowLoopback)
	}
	next := client.CheckRedirect
	allowLoopback := opts.AllowLoopback
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= remoteMaxRedirects {
			return errors.New("too many redirects")
		}
		if err := checkJWKSURL(req.URL.String(), allowLoopback); err != nil {
			return err
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &RemoteKeySet{uri: uri, client: client, opts: opts, now: time.Now}, nil
}

// errNotPublic is a connection refused because of the address it would go to. The caller
// sees it as any other fetch failure (ErrKeysUnavailable): the answer to a client must not
// tell an internal address from an unreachable one.
var errNotPublic = errors.New("the address is not public")

// guardedTransport is a copy of base that connects only to public addresses (loopback too
// when allowed), checked after DNS resolution on the very address being dialled, so a name
// that resolves (or rebinds) to an internal address is refused as well. No proxy: through one
// the address dialled would be the proxy's.
func guardedTransport(base *http.Transport, allowLoopback bool) *http.Transport {
	t := base.Clone()
	t.Proxy = nil
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			ip, err := netip.ParseAddr(host)
			if err != nil || !publicAddress(ip, allowLoopback) {
				return fmt.Errorf("%w: %s", errNotPublic, host)
			}
			return nil
		}}
	t.DialContext = d.DialContext
	t.DialTLSContext = nil // the TLS handshake runs over DialContext's connection
	return t
}

// nonPublic are the ranges a jwks_uri must never reach beyond what netip classifies
// (loopback, private, link-local, multicast, unspecified): IANA's special-purpose registries.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, and broadcast
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("2001::/32"),       // Teredo: tunnels to an IPv4 address
}

// IPv6 prefixes that carry an IPv4 address, judged by that address.
var (
	nat64 = netip.MustParsePrefix("64:ff9b::/96") // the IPv4 address in the last 4 bytes
	sixTo = netip.MustParsePrefix("2002::/16")    // 6to4: the IPv4 address in bytes 2 to 5
)

// publicAddress reports whether a jwks_uri may connect to ip; with allowLoopback, loopback
// addresses may be connected to as well.
func publicAddress(ip netip.Addr, allowLoopback bool) bool {
	ip = ip.Unmap()
	if b := ip.As16(); ip.Is6() {
		switch {
		case nat64.Contains(ip):
			return publicAddress(netip.AddrFrom4([4]byte(b[12:16])), allowLoopback)
		case sixTo.Contains(ip):
			return publicAddress(netip.AddrFrom4([4]byte(b[2:6])), allowLoopback)
		}
	}
	if ip.IsLoopback() {
		return allowLoopback
	}
	if !ip.IsValid() || ip.IsPrivate() || ip.IsUnspecified() || ip.IsLinkLocalUnicast() ||
		ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() || ip.IsMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// checkJWKSURL enforces https, except http on loopback when allowed.
func checkJWKSURL(raw string, allowLoopback bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("envelope: jwks_uri is not a URL: %w", err)
	}
	if u.Host == "" || u.User != nil {
		return errors.New("envelope: jwks_uri must be an absolute URL with a host and no user info")
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return nil
	case "http":
		if allowLoopback && isLoopbackHost(u.Hostname()) {
			return nil
		}
		return errors.New("envelope: jwks_uri must use https (http only on loopback, when allowed)")
	}
	return errors.New("envelope: jwks_uri must use https")
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	addr, err := netip.ParseAddr(host)
	return err == nil && addr.IsLoopback()
}

// Key implements KeySet.
func (r *RemoteKeySet) Key(ctx context.Context, kid string) (jwk.Key, error) {
	vk, err := r.verificationKey(ctx, kid)
	if err != nil {
		return nil, err
	}
	return vk.jwk, nil
}

func (r *RemoteKeySet) verificationKey(ctx context.Context, kid string) (*verificationKey, error) {
	r.mu.Lock()
	now := r.now()
	if r.keys != nil && now.Before(r.fresh) {
		if vk, ok := r.keys[kid]; ok {
			r.mu.Unlock()
			return vk, nil
		}
	}
	// Stale, missing, or an unknown kid: fetch, unless one was started
	// too recently. A fetch already in flight is always joined.
	if r.inflight == nil && !r.lastFetch.IsZero() && now.Sub(r.lastFetch) < r.opts.MinRefreshInterval {
		defer r.mu.Unlock()
		return r.lookupLocked(kid, now, r.lastErr)
	}
	call := r.inflight
	if call == nil {
		call = &fetchCall{done: make(chan struct{})}
		r.inflight = call
		r.lastFetch = now
		go r.fetch(ctx, call)
	}
	r.mu.Unlock()

	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookupLocked(kid, r.now(), call.err)
}

// lookupLocked answers from the cache after a fetch (or a skipped one):
// fresh keys, or stale keys within remoteMaxStale when fetching failed.
func (r *RemoteKeySet) lookupLocked(kid string, now time.Time, fetchErr error) (*verificationKey, error) {
	if r.keys == nil || !now.Before(r.fresh.Add(remoteMaxStale)) {
		if fetchErr == nil {
			fetchErr = errors.New("no keys cached")
		}
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, fetchErr)
	}
	if vk, ok := r.keys[kid]; ok {
		return vk, nil
	}
	if fetchErr != nil {
		// The kid may be in the set we could not fetch.
		return nil, fmt.Errorf("%w: %w", ErrKeysUnavailable, fetchErr)
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownKID, kid)
}

// fetch runs detached from the caller's cancellation (other callers wait
// for it too), bounded by Timeout.
func (r *RemoteKeySet) fetch(ctx context.Context, call *fetchCall) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.Timeout)
	defer cancel()
	keys, ttl, err := r.get(ctx)

	r.mu.Lock()
	if err == nil {
		r.keys = keys
		r.fresh = r.now().Add(ttl)
	}
	r.lastErr = err
	call.err = err
	r.inflight = nil
	r.mu.Unlock()
	close(call.done)
}

func (r *RemoteKeySet) get(ctx context.Context) (parsedSet, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.uri, nil)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("fetching jwks_uri: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("jwks_uri answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.opts.MaxBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("reading jwks_uri: %w", err)
	}
	if int64(len(body)) > r.opts.MaxBytes {
		return nil, 0, fmt.Errorf("jwks_uri body exceeds %d bytes", r.opts.MaxBytes)
	}
	keys, err := parseJWKS(body, false)
	if err != nil {
		return nil, 0, err
	}
	return keys, cacheTTL(resp.Header, r.now()), nil
}

// cacheTTL reads Cache-Control max-age (no-store and no-cache count as 0)
// or, failing that, Expires, and clamps the result to [remoteMinTTL,
// remoteMaxTTL].
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl, found := time.Duration(0), false
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			d = strings.ToLower(strings.TrimSpace(d))
			switch {
			case d == "no-store" || d == "no-cache":
				return remoteMinTTL
			case strings.HasPrefix(d, "max-age="):
				n, err := strconv.ParseInt(strings.Trim(d[len("max-age="):], `"`), 10, 64)
				if err == nil && n >= 0 {
					ttl, found = time.Duration(min(n, int64(remoteMaxTTL/time.Second)))*time.Second, true
				}
			}
		}
	}
	if !found {
		if exp := h.Get("Expires"); exp != "" {
			t, err := http.ParseTime(exp)
			if err != nil {
				return remoteMinTTL // RFC 9111 §5.3: an invalid Expires means already expired
			}
			ttl, found = t.Sub(now), true
		}
	}
	if !found {
		return remoteDefaultTTL
	}
	return min(max(ttl, remoteMinTTL), remoteMaxTTL)
}
