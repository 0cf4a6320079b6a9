package envelope

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"math/big"
	"reflect"
	"strings"
	"testing"
)

// referenceDecode is how Verify decoded before decode.go: encoding/json into the wire types.
// decode.go must agree with it on every input.
func referenceDecode(data []byte, dst any) error {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(data, dst)
}

func referenceClaims(data []byte) (*Claims, error) {
	var w wireClaims
	c := new(Claims)
	err := referenceDecode(data, &w)
	if err == nil {
		err = w.into(c)
	}
	return c, err
}

var decodeSeeds = []string{
	`{"iss":"mcp","aud":"https://mandate.example","iat":1700000000,"exp":1700000060,"jti":"j1",` +
		`"actor":{"type":"user","sub":"u1","tenant":"acme"},"agent":{"type":"mcp_agent","id":"a1","client_id":"mcp"},` +
		`"session":{"id":"s1","trace_id":"t1"},"authorization":{"scopes":["orders:read","x"],"confidence":"verified"},` +
		`"delegation":{"mode":"on_behalf_of","allowed":["orders_api"]},"act":{"sub":"p","client_id":"o","act":{"sub":"q"}}}`,
	`{"ISS":"mcp","Aud":["a","b",null],"IAT":1.5,"exp":1e3,"nbf":null,"jti":"\u006a\ud83d\ude00\ud800x","x":[1,{"y":[true,false,null]}]}`,
	`{"iſs":"long s","aud":null,"actor":null,"act":null,"authorization":{"scopes":[]}}`,
	`{"authorization":{"scopes":["a","b","c"]},"authorization":{"scopes":["x"]},"authorization":{"scopes":["y",null,null]}}`,
	`{"actor":{"type":"user"},"actor":{"sub":"x"},"act":{"sub":"a"},"act":{"client_id":"b"}}`,
	`{"iss":5}`, `{"aud":{}}`, `{"iat":"1"}`, `{"iat":-1}`, `{"exp":1e400}`, `{"iat":-0}`, `{"exp":137438953473}`,
	`{"jti":"bad \x01"}`, `{"jti":"\xff\xfe"}`, `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":tru}`, `{} x`, ` {}  `,
	`{"a":"\'"}`, `{"a":"\u12"}`, `[]`, `{"act":"x"}`, `{"actor":[]}`, `{"authorization":{"scopes":"a"}}`,
	`{"authorization":{"scopes":[1]}}`, `{"iss":"a",}`, `{,}`, `{"iss" "a"}`, "\v{}\u00a0",
}

// FuzzDecodeClaims checks decodeClaims against encoding/json on arbitrary payloads.
func FuzzDecodeClaims(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	deep := `{"act":` + strings.Repeat(`{"sub":"x","act":`, 40) + `null` + strings.Repeat(`}`, 40) + `}`
	f.Add([]byte(deep))
	f.Add([]byte(`{"act":` + strings.Repeat(`{"sub":"x","act":`, 40) + `null` + strings.Repeat(`}`, 40) + `,"act":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		want, werr := referenceClaims(data)
		got := new(Claims)
		gerr := decodeClaims(bytes.TrimSpace(data), got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%q: encoding/json error %v, decodeClaims error %v", data, werr, gerr)
		}
		if werr == nil && !reflect.DeepEqual(want, got) {
			t.Fatalf("%q:\nencoding/json %#v\ndecodeClaims  %#v", data, want, got)
		}
	})
}

// FuzzDecodeHeader checks decodeHeader against encoding/json.
func FuzzDecodeHeader(f *testing.F) {
	for _, s := range append(decodeSeeds, `{"alg":"ES256","typ":"eie+jwt","kid":"k"}`, `{"crit":null}`,
		`{"b64":false,"KID":"k"}`, `{"crit":[1,}`) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want, got header
		werr := referenceDecode(data, &want)
		gerr := decodeHeader(bytes.TrimSpace(data), &got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("%q: encoding/json error %v, decodeHeader error %v", data, werr, gerr)
		}
		if werr != nil {
			return
		}
		// Verify only asks whether crit and b64 are present.
		if want.Alg != got.Alg || want.Typ != got.Typ || want.Kid != got.Kid ||
			(want.Crit == nil) != (got.Crit == nil) || (want.B64 == nil) != (got.B64 == nil) {
			t.Fatalf("%q:\nencoding/json %#v\ndecodeHeader  %#v", data, want, got)
		}
	})
}

// BenchmarkDecodeClaims compares the envelope payload decoders.
func BenchmarkDecodeClaims(b *testing.B) {
	data := []byte(decodeSeeds[0])
	b.Run("decodeClaims", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := decodeClaims(data, new(Claims)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := referenceClaims(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// rsToDER must give the encoding ecdsa.Verify hands to VerifyASN1, so both accept the same
// signatures.
func TestRSToDERMatchesVerify(t *testing.T) {
	key := testKey(t, AlgES256).(*ecdsa.PrivateKey)
	digest := sha256.Sum256([]byte("input"))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	cases := map[string][]byte{"valid": sig}
	for name, mut := range map[string]func(b []byte){
		"r zero":    func(b []byte) { clear(b[:32]) },
		"s zero":    func(b []byte) { clear(b[32:]) },
		"high bits": func(b []byte) { b[0], b[32] = 0xff, 0x80 },
		"short r":   func(b []byte) { clear(b[:31]) },
		"flipped":   func(b []byte) { b[63] ^= 1 },
	} {
		b := bytes.Clone(sig)
		mut(b)
		cases[name] = b
	}
	for name, b := range cases {
		want := ecdsa.Verify(&key.PublicKey, digest[:], new(big.Int).SetBytes(b[:32]), new(big.Int).SetBytes(b[32:]))
		got := verifySignature(AlgES256, &key.PublicKey, "input", b)
		if got != want {
			t.Errorf("%s: verifySignature %v, ecdsa.Verify %v", name, got, want)
		}
		if name == "valid" && !got {
			t.Error("valid signature refused")
		}
	}
}
