package envelope

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

// SPEC §7: a jwks_uri that resolves to a loopback, private, link-local or otherwise
// non-public address is refused at fetch time, after DNS resolution, unless loopback is
// explicitly allowed (development).
func TestPublicAddress(t *testing.T) {
	refused := []string{
		"127.0.0.1", "127.1.2.3", "::1", // loopback
		"10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fc00::1", "fd12:3456::1", // private, ULA
		"169.254.169.254", "169.254.0.1", "fe80::1", // link-local, cloud metadata
		"0.0.0.0", "0.1.2.3", "::", // unspecified, "this network"
		"224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1", // multicast
		"100.64.0.1", "100.127.255.254", // CGNAT
		"255.255.255.255", "240.0.0.1", // broadcast, reserved
		"192.0.0.8", "198.18.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1", // special-purpose, documentation
		"::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", // IPv4-mapped
		"64:ff9b::a00:1", "64:ff9b::7f00:1", // NAT64 of 10.0.0.1 and 127.0.0.1
		"2002:a00:1::1", "2002:7f00:1::1", // 6to4 of 10.0.0.1 and 127.0.0.1
		"2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo
	}
	allowed := []string{"8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888", "2606:4700:4700::1111",
		"::ffff:8.8.8.8", "64:ff9b::808:808", "172.32.0.1", "100.128.0.1", "11.0.0.1"}
	for _, s := range refused {
		if publicAddress(netip.MustParseAddr(s), false) {
			t.Errorf("%s counts as public", s)
		}
	}
	for _, s := range allowed {
		if !publicAddress(netip.MustParseAddr(s), false) {
			t.Errorf("%s does not count as public", s)
		}
	}
	for _, s := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		if !publicAddress(netip.MustParseAddr(s), true) {
			t.Errorf("%s refused with loopback allowed", s)
		}
	}
	for _, s := range []string{"10.0.0.1", "169.254.169.254", "fe80::1"} {
		if publicAddress(netip.MustParseAddr(s), true) {
			t.Errorf("%s allowed with loopback allowed: only loopback is", s)
		}
	}
}

// The check happens when connecting, on the address DNS gave: a name that resolves to a
// loopback address ("localhost") is refused like the literal address, the server never sees
// a request, and the caller sees the failure every fetch failure gives (no oracle).
func TestRemoteKeySetRefusesNonPublicAddressesWhenConnecting(t *testing.T) {
	var hits atomic.Int32
	good := jwksJSON(t, publicJWK(t, testKey(t, AlgES256), "k1", ""))
	hs := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write(good)
	}))
	t.Cleanup(hs.Close)
	port := hs.URL[strings.LastIndex(hs.URL, ":"):]
	for _, uri := range []string{hs.URL + "/jwks.json", "https://localhost" + port + "/jwks.json"} {
		ks, err := NewRemoteKeySet(uri, RemoteOptions{HTTPClient: hs.Client()})
		if err != nil {
			t.Fatal(err)
		}
		_, err = ks.Key(context.Background(), "k1")
		if !errors.Is(err, ErrKeysUnavailable) {
			t.Errorf("%s: %v, want ErrKeysUnavailable", uri, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the loopback server got %d requests, want none", n)
	}
	// The same with loopback allowed, for development.
	ks, err := NewRemoteKeySet(hs.URL+"/jwks.json", RemoteOptions{HTTPClient: hs.Client(), AllowLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Key(context.Background(), "k1"); err != nil {
		t.Errorf("with AllowLoopback: %v", err)
	}
}
