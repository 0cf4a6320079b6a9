package envelope

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is the verifier's JSON decoder for the envelope header and claims. It exists for
// speed only: encoding/json scans the payload once to validate it, then again through
// reflection, and once more for every member with its own UnmarshalJSON (aud, iat, exp, nbf),
// which made decoding a third of Verify's cost outside the signature check.
//
// It must accept exactly what json.Unmarshal into header and wireClaims accepts and produce
// the same values, including encoding/json's quirks: member names match case-insensitively
// (exact match first, then Unicode simple folding, as bytes.EqualFold), a repeated member
// decodes again into what the first one left (objects merge, arrays reuse their elements), null
// leaves a string or object unchanged and clears a pointer, invalid UTF-8 and lone surrogates
// in strings become U+FFFD, and any syntax error anywhere, even inside an ignored member, fails
// the whole document. FuzzDecodeClaims checks it against encoding/json.

var (
	errJSONSyntax = errors.New("invalid JSON")
	errJSONType   = errors.New("JSON value of the wrong type")
	errJSONDepth  = errors.New("JSON nests too deeply")
)

// maxJSONNesting is encoding/json's limit on nested objects and arrays.
const maxJSONNesting = 10000

type jsonDecoder struct {
	data  []byte
	pos   int
	depth int
}

func (d *jsonDecoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// next skips white space and returns the next byte without consuming it (0 at the end).
func (d *jsonDecoder) next() byte {
	d.skipSpace()
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

// document decodes one JSON object with member as the callback for each member, and requires
// nothing but white space after it. Verify trims data of white space first.
func (d *jsonDecoder) document(member func(key []byte) error) error {
	if d.next() != '{' {
		return errJSONSyntax
	}
	if err := d.object(member); err != nil {
		return err
	}
	if d.next() != 0 || d.pos != len(d.data) {
		return errJSONSyntax
	}
	return nil
}

// object consumes an object at d.pos, calling member with each (unquoted) name; member must
// consume the value.
func (d *jsonDecoder) object(member func(key []byte) error) error {
	d.pos++ // '{'
	d.depth++
	if d.depth > maxJSONNesting {
		return errJSONDepth
	}
	if d.next() == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		if d.next() != '"' {
			return errJSONSyntax
		}
		key, err := d.str()
		if err != nil {
			return err
		}
		if d.next() != ':' {
			return errJSONSyntax
		}
		d.pos++
		d.skipSpace()
		if err := member(key); err != nil {
			return err
		}
		switch d.next() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			d.depth--
			return nil
		default:
			return errJSONSyntax
		}
	}
}

// array consumes an array at d.pos, calling elem for each element, which must consume it.
func (d *jsonDecoder) array(elem func(i int) error) error {
	d.pos++ // '['
	d.depth++
	if d.depth > maxJSONNesting {
		return errJSONDepth
	}
	if d.next() == ']' {
		d.pos++
		d.depth--
		return nil
	}
	for i := 0; ; i++ {
		d.skipSpace()
		if err := elem(i); err != nil {
			return err
		}
		switch d.next() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			d.depth--
			return nil
		default:
			return errJSONSyntax
		}
	}
}

// skip consumes and validates any JSON value.
func (d *jsonDecoder) skip() error {
	switch c := d.next(); {
	case c == '{':
		return d.object(func([]byte) error { return d.skip() })
	case c == '[':
		return d.array(func(int) error { return d.skip() })
	case c == '"':
		_, err := d.str()
		return err
	case c == '-' || '0' <= c && c <= '9':
		_, err := d.number()
		return err
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	}
	return errJSONSyntax
}

func (d *jsonDecoder) literal(lit string) error {
	if !bytes.HasPrefix(d.data[d.pos:], []byte(lit)) {
		return errJSONSyntax
	}
	d.pos += len(lit)
	return nil
}

// null consumes a null literal when one is next and reports whether it did.
func (d *jsonDecoder) null() (bool, error) {
	if d.next() != 'n' {
		return false, nil
	}
	return true, d.literal("null")
}

// number consumes a number (RFC 8259 grammar) and returns its literal.
func (d *jsonDecoder) number() ([]byte, error) {
	b, start := d.data, d.pos
	i := start
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return nil, errJSONSyntax
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return nil, errJSONSyntax
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return nil, errJSONSyntax
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	d.pos = i
	return b[start:i], nil
}

// str consumes a string at d.pos and returns its unquoted bytes, which alias d.data when the
// string has no escapes and is valid UTF-8.
func (d *jsonDecoder) str() ([]byte, error) {
	b := d.data
	start := d.pos // the opening quote
	plain := true
	i := start + 1
	for {
		if i >= len(b) {
			return nil, errJSONSyntax
		}
		c := b[i]
		switch {
		case c == '"':
			d.pos = i + 1
			if plain {
				return b[start+1 : i], nil
			}
			t, ok := unquoteBytes(b[start : i+1])
			if !ok {
				return nil, errJSONSyntax
			}
			return t, nil
		case c < 0x20:
			return nil, errJSONSyntax
		case c == '\\':
			plain = false
			i++
			if i >= len(b) {
				return nil, errJSONSyntax
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return nil, errJSONSyntax
				}
				i += 5
			default:
				return nil, errJSONSyntax
			}
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				plain = false
			}
			i += n
		}
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// stringValue decodes into dst: a string sets it, null leaves it, anything else is an error.
func (d *jsonDecoder) stringValue(dst *string) error {
	switch d.next() {
	case '"':
		s, err := d.str()
		if err != nil {
			return err
		}
		*dst = string(s)
		return nil
	case 'n':
		return d.literal("null")
	}
	return d.typeError()
}

// typeError validates the mistyped value (a syntax error wins, as in encoding/json, which
// checks the whole document first) and reports the type error.
func (d *jsonDecoder) typeError() error {
	if err := d.skip(); err != nil {
		return err
	}
	return errJSONType
}

// stringSlice decodes an array of strings into dst the way encoding/json decodes into a
// []string: null sets nil, an array reuses dst's elements (a null element keeps what was
// there), and an empty array gives an empty, non-nil slice.
func (d *jsonDecoder) stringSlice(dst *[]string) error {
	if isNull, err := d.null(); isNull || err != nil {
		if err == nil {
			*dst = nil
		}
		return err
	}
	if d.next() != '[' {
		return d.typeError()
	}
	s := *dst
	n := 0
	err := d.array(func(i int) error {
		if i >= cap(s) {
			s = append(s[:i], "")
		}
		if i >= len(s) {
			s = s[:i+1]
		}
		n = i + 1
		return d.stringValue(&s[i])
	})
	if err != nil {
		return err
	}
	if n < len(s) {
		s = s[:n]
	}
	if n == 0 {
		s = []string{}
	}
	*dst = s
	return nil
}

// audience decodes aud as Audience.UnmarshalJSON does.
func (d *jsonDecoder) audience(dst *Audience) error {
	switch d.next() {
	case 'n':
		if err := d.literal("null"); err != nil {
			return err
		}
		*dst = nil
		return nil
	case '"':
		s, err := d.str()
		if err != nil {
			return err
		}
		*dst = Audience{string(s)}
		return nil
	case '[':
		var l []string
		if err := d.stringSlice(&l); err != nil {
			return err
		}
		*dst = Audience(l)
		return nil
	}
	return d.typeError()
}

// numeric is a NumericDate member as decoded: set is false when absent or null.
type numeric struct {
	set bool
	t   time.Time
}

// numericDate decodes as (*numericDate).UnmarshalJSON does; null clears it like the pointer.
func (d *jsonDecoder) numericDate(dst *numeric) error {
	c := d.next()
	if c == 'n' {
		if err := d.literal("null"); err != nil {
			return err
		}
		*dst = numeric{}
		return nil
	}
	if c != '-' && (c < '0' || c > '9') {
		return d.typeError()
	}
	lit, err := d.number()
	if err != nil {
		return err
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil {
		return errJSONType // out of float64 range, as encoding/json reports it
	}
	if math.IsNaN(f) || f < 0 || f > maxNumericDate {
		return errors.New("NumericDate out of range")
	}
	sec, frac := math.Modf(f)
	*dst = numeric{set: true, t: time.Unix(int64(sec), int64(frac*1e9)).UTC()}
	return nil
}

// structValue decodes an object member by member into an existing struct (merging, as
// encoding/json does); null leaves it unchanged.
func (d *jsonDecoder) structValue(member func(key []byte) error) error {
	switch d.next() {
	case '{':
		return d.object(member)
	case 'n':
		return d.literal("null")
	}
	return d.typeError()
}

// is reports whether the member name key selects the field called name.
func is(key []byte, name string) bool {
	return string(key) == name || bytes.EqualFold(key, []byte(name))
}

func (d *jsonDecoder) actor(a *Actor) error {
	return d.structValue(func(k []byte) error {
		switch {
		case is(k, "type"):
			return d.stringValue(&a.Type)
		case is(k, "sub"):
			return d.stringValue(&a.Sub)
		case is(k, "tenant"):
			return d.stringValue(&a.Tenant)
		}
		return d.skip()
	})
}

func (d *jsonDecoder) agent(a *Agent) error {
	return d.structValue(func(k []byte) error {
		switch {
		case is(k, "type"):
			return d.stringValue(&a.Type)
		case is(k, "id"):
			return d.stringValue(&a.ID)
		case is(k, "client_id"):
			return d.stringValue(&a.ClientID)
		}
		return d.skip()
	})
}

func (d *jsonDecoder) session(s *Session) error {
	return d.structValue(func(k []byte) error {
		switch {
		case is(k, "id"):
			return d.stringValue(&s.ID)
		case is(k, "trace_id"):
			return d.stringValue(&s.TraceID)
		}
		return d.skip()
	})
}

func (d *jsonDecoder) authorization(a *Authorization) error {
	return d.structValue(func(k []byte) error {
		switch {
		case is(k, "scopes"):
			return d.stringSlice(&a.Scopes)
		case is(k, "confidence"):
			return d.stringValue(&a.Confidence)
		}
		return d.skip()
	})
}

func (d *jsonDecoder) delegation(g *Delegation) error {
	return d.structValue(func(k []byte) error {
		switch {
		case is(k, "mode"):
			return d.stringValue(&g.Mode)
		case is(k, "allowed"):
			return d.stringSlice(&g.Allowed)
		}
		return d.skip()
	})
}

// act decodes an act chain link: null clears the pointer, an object decodes into the link
// already there or a new one.
func (d *jsonDecoder) act(dst **Act) error {
	switch d.next() {
	case 'n':
		if err := d.literal("null"); err != nil {
			return err
		}
		*dst = nil
		return nil
	case '{':
		if *dst == nil {
			*dst = new(Act)
		}
		a := *dst
		return d.object(func(k []byte) error {
			switch {
			case is(k, "sub"):
				return d.stringValue(&a.Sub)
			case is(k, "client_id"):
				return d.stringValue(&a.ClientID)
			case is(k, "act"):
				return d.act(&a.Act)
			}
			return d.skip()
		})
	}
	return d.typeError()
}

// decodeClaims decodes an envelope payload (already trimmed of white space) into c, with the
// result json.Unmarshal into wireClaims followed by wireClaims.into would give.
func decodeClaims(data []byte, c *Claims) error {
	d := jsonDecoder{data: data}
	var iat, exp, nbf numeric
	err := d.document(func(k []byte) error {
		switch {
		case is(k, "iss"):
			return d.stringValue(&c.Issuer)
		case is(k, "aud"):
			return d.audience(&c.Audience)
		case is(k, "iat"):
			return d.numericDate(&iat)
		case is(k, "exp"):
			return d.numericDate(&exp)
		case is(k, "nbf"):
			return d.numericDate(&nbf)
		case is(k, "jti"):
			return d.stringValue(&c.JTI)
		case is(k, "actor"):
			return d.actor(&c.Actor)
		case is(k, "agent"):
			return d.agent(&c.Agent)
		case is(k, "session"):
			return d.session(&c.Session)
		case is(k, "authorization"):
			return d.authorization(&c.Authorization)
		case is(k, "delegation"):
			return d.delegation(&c.Delegation)
		case is(k, "act"):
			return d.act(&c.Act)
		}
		return d.skip()
	})
	if err != nil {
		return err
	}
	if c.Act.Depth() > maxActDepth {
		return errors.New("act nests deeper than 32")
	}
	c.IssuedAt, c.ExpiresAt, c.NotBefore = iat.t, exp.t, nbf.t
	return nil
}

// decodeHeader decodes a protected header as json.Unmarshal into header would: crit and b64
// count as present with any value, null included (json.RawMessage keeps the "null").
func decodeHeader(data []byte, h *header) error {
	d := jsonDecoder{data: data}
	present := func(dst *[]byte) error {
		start := d.pos
		if err := d.skip(); err != nil {
			return err
		}
		*dst = d.data[start:d.pos]
		return nil
	}
	return d.document(func(k []byte) error {
		switch {
		case is(k, "alg"):
			return d.stringValue(&h.Alg)
		case is(k, "typ"):
			return d.stringValue(&h.Typ)
		case is(k, "kid"):
			return d.stringValue(&h.Kid)
		case is(k, "crit"):
			return present((*[]byte)(&h.Crit))
		case is(k, "b64"):
			return present((*[]byte)(&h.B64))
		}
		return d.skip()
	})
}

// unquoteBytes is encoding/json's: it turns a quoted JSON string literal into its bytes,
// coercing invalid UTF-8 and lone surrogates to U+FFFD.
func unquoteBytes(s []byte) (t []byte, ok bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return
	}
	s = s[1 : len(s)-1]
	b := make([]byte, len(s)+2*utf8.UTFMax)
	w, r := 0, 0
	for r < len(s) {
		if w >= len(b)-2*utf8.UTFMax {
			nb := make([]byte, (len(b)+utf8.UTFMax)*2)
			copy(nb, b[0:w])
			b = nb
		}
		switch c := s[r]; {
		case c == '\\':
			r++
			if r >= len(s) {
				return
			}
			switch s[r] {
			default:
				return
			case '"', '\\', '/', '\'':
				b[w] = s[r]
				r++
				w++
			case 'b':
				b[w] = '\b'
				r++
				w++
			case 'f':
				b[w] = '\f'
				r++
				w++
			case 'n':
				b[w] = '\n'
				r++
				w++
			case 'r':
				b[w] = '\r'
				r++
				w++
			case 't':
				b[w] = '\t'
				r++
				w++
			case 'u':
				r--
				rr := getu4(s[r:])
				if rr < 0 {
					return
				}
				r += 6
				if utf16.IsSurrogate(rr) {
					rr1 := getu4(s[r:])
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						r += 6
						w += utf8.EncodeRune(b[w:], dec)
						break
					}
					rr = unicode.ReplacementChar
				}
				w += utf8.EncodeRune(b[w:], rr)
			}
		case c == '"', c < ' ':
			return
		case c < utf8.RuneSelf:
			b[w] = c
			r++
			w++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			r += size
			w += utf8.EncodeRune(b[w:], rr)
		}
	}
	return b[0:w], true
}

func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c = c - '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
