package envelope

import (
	"sync"
	"testing"
)

func TestKeySetCache(t *testing.T) {
	var c KeySetCache
	a := jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "a", ""))
	b := jwksJSON(t, publicJWK(t, testKey(t, AlgEdDSA), "b", ""))
	ka1, err := c.Static(a)
	if err != nil {
		t.Fatal(err)
	}
	ka2, _ := c.Static(append([]byte(nil), a...))
	kb, _ := c.Static(b)
	if ka1 != ka2 || ka1 == kb {
		t.Fatal("inline sets must be shared by content and distinct across contents")
	}
	if _, err := c.Static([]byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"x"}]}`)); err == nil {
		t.Fatal("invalid set cached")
	}
	r1, err := c.RemoteSet("https://keys.example.com/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := c.RemoteSet("https://keys.example.com/jwks.json")
	if r1 != r2 {
		t.Fatal("remote sets must be shared by URI")
	}
	if _, err := c.RemoteSet("http://keys.example.com/jwks.json"); err == nil {
		t.Fatal("http URI accepted")
	}

	small := KeySetCache{MaxEntries: 1}
	first, _ := small.Static(a)
	_, _ = small.Static(b)
	if again, _ := small.Static(a); again == first {
		t.Fatal("MaxEntries not enforced")
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := c.Static(b); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}
