package envelope

import (
	"crypto/sha256"
	"sync"
)

// KeySetCache keeps parsed key sets across exchanges: parsing an inline
// JWKS costs about as much as verifying an envelope, and a RemoteKeySet is
// only useful if it lives long enough for its HTTP cache to matter. Inline
// sets are keyed by their content, so a client whose jwks changes gets a new
// set with no invalidation step; remote sets are keyed by URI. Safe for
// concurrent use.
type KeySetCache struct {
	// Remote configures the RemoteKeySets the cache creates.
	Remote RemoteOptions
	// MaxEntries bounds each map; when full it is emptied and refilled on
	// demand (simple, and a cache miss only costs a parse). Default 10000.
	MaxEntries int

	mu     sync.Mutex
	static map[[sha256.Size]byte]*StaticKeySet
	remote map[string]*RemoteKeySet
}

func (c *KeySetCache) maxEntries() int {
	if c.MaxEntries <= 0 {
		return 10000
	}
	return c.MaxEntries
}

// Static returns the parsed form of an inline JWKS (see NewStaticKeySet).
func (c *KeySetCache) Static(jwksJSON []byte) (*StaticKeySet, error) {
	sum := sha256.Sum256(jwksJSON)
	c.mu.Lock()
	ks, ok := c.static[sum]
	c.mu.Unlock()
	if ok {
		return ks, nil
	}
	ks, err := NewStaticKeySet(jwksJSON)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.static == nil || len(c.static) >= c.maxEntries() {
		c.static = make(map[[sha256.Size]byte]*StaticKeySet)
	}
	c.static[sum] = ks
	return ks, nil
}

// RemoteSet returns the RemoteKeySet for uri, creating it on first use
// (see NewRemoteKeySet).
func (c *KeySetCache) RemoteSet(uri string) (*RemoteKeySet, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ks, ok := c.remote[uri]; ok {
		return ks, nil
	}
	ks, err := NewRemoteKeySet(uri, c.Remote)
	if err != nil {
		return nil, err
	}
	if c.remote == nil || len(c.remote) >= c.maxEntries() {
		c.remote = make(map[string]*RemoteKeySet)
	}
	c.remote[uri] = ks
	return ks, nil
}
