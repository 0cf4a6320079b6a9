package exchange

import (
	"errors"
	"sync"
	"time"

	"github.com/mandatehq/mandate/envelope"
	"github.com/mandatehq/mandate/storage"
)

// ErrNoKeys is returned by KeySets.For for a client that registered neither jwks nor jwks_uri.
var ErrNoKeys = errors.New("exchange: client has no registered keys")

// KeySets resolves a client's public keys (for envelopes and private_key_jwt assertions).
// Parsing a JWKS costs far more than the rest of the exchange, so an inline set is parsed once
// per client version (id + updated_at) and a remote set is shared per jwks_uri, letting its
// own cache and refresh policy work across every client that names it.
type KeySets struct {
	newRemote func(uri string) (envelope.KeySet, error)

	mu     sync.Mutex
	inline map[string]inlineSet // by client id
	remote map[string]envelope.KeySet
}

type inlineSet struct {
	version time.Time
	jwks    string // the exact bytes parsed, in case updated_at did not move
	set     envelope.KeySet
	err     error
}

// NewKeySets returns a resolver. newRemote builds the key set for a jwks_uri (normally
// RemoteKeySets below); nil refuses clients that use jwks_uri.
func NewKeySets(newRemote func(uri string) (envelope.KeySet, error)) *KeySets {
	return &KeySets{newRemote: newRemote, inline: map[string]inlineSet{}, remote: map[string]envelope.KeySet{}}
}

// For returns the key set of client c. An inline jwks wins over jwks_uri.
func (k *KeySets) For(c *storage.Client) (envelope.KeySet, error) {
	switch {
	case len(c.JWKS) > 0:
		k.mu.Lock()
		defer k.mu.Unlock()
		if e, ok := k.inline[c.ID]; ok && e.version.Equal(c.UpdatedAt) && e.jwks == string(c.JWKS) {
			return e.set, e.err
		}
		var e inlineSet
		e.version, e.jwks = c.UpdatedAt, string(c.JWKS)
		set, err := envelope.NewStaticKeySet(c.JWKS)
		if err != nil {
			e.err = err
		} else {
			e.set = set
		}
		if len(k.inline) >= maxCatalogEntries {
			clear(k.inline)
		}
		k.inline[c.ID] = e
		return e.set, e.err
	case c.JWKSURI != "":
		if k.newRemote == nil {
			return nil, ErrNoKeys
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if s, ok := k.remote[c.JWKSURI]; ok {
			return s, nil
		}
		s, err := k.newRemote(c.JWKSURI)
		if err != nil {
			return nil, err
		}
		if len(k.remote) >= maxCatalogEntries {
			clear(k.remote)
		}
		k.remote[c.JWKSURI] = s
		return s, nil
	}
	return nil, ErrNoKeys
}

// Forget drops the parsed inline set of client id (after an update or delete).
func (k *KeySets) Forget(id string) {
	k.mu.Lock()
	delete(k.inline, id)
	k.mu.Unlock()
}

// RemoteKeySets adapts envelope.NewRemoteKeySet for NewKeySets.
func RemoteKeySets(opts envelope.RemoteOptions) func(uri string) (envelope.KeySet, error) {
	return func(uri string) (envelope.KeySet, error) {
		s, err := envelope.NewRemoteKeySet(uri, opts)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
}
