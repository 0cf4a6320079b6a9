package boundary

import "strings"

// Traceparent is a parsed W3C Trace Context traceparent header
// (https://www.w3.org/TR/trace-context/#traceparent-header).
type Traceparent struct {
	Version  string // two hex digits, never "ff"
	TraceID  string // 32 lowercase hex digits, not all zero
	ParentID string // 16 lowercase hex digits, not all zero
	Flags    string // two hex digits
}

// ParseTraceparent parses a traceparent header value. Version 00 must be exactly
// version-trace-parent-flags; a higher version may append more fields after a dash, which
// are ignored as the specification asks.
func ParseTraceparent(s string) (Traceparent, bool) {
	s = strings.TrimSpace(s)
	if len(s) < 55 {
		return Traceparent{}, false
	}
	tp := Traceparent{Version: s[0:2], TraceID: s[3:35], ParentID: s[36:52], Flags: s[53:55]}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return Traceparent{}, false
	}
	if !lowerHex(tp.Version) || tp.Version == "ff" || !lowerHex(tp.TraceID) || !lowerHex(tp.ParentID) || !lowerHex(tp.Flags) {
		return Traceparent{}, false
	}
	if tp.Version == "00" && len(s) != 55 {
		return Traceparent{}, false
	}
	if len(s) > 55 && s[55] != '-' {
		return Traceparent{}, false
	}
	if allZero(tp.TraceID) || allZero(tp.ParentID) {
		return Traceparent{}, false
	}
	return tp, true
}

// String formats tp as a version 00 header.
func (tp Traceparent) String() string {
	return "00-" + tp.TraceID + "-" + tp.ParentID + "-" + tp.Flags
}

// NewTraceID returns a random W3C trace id.
func NewTraceID() string { return randomHex(16) }

// NewSpanID returns a random W3C parent (span) id.
func NewSpanID() string { return randomHex(8) }

// Traceparent returns the header to send on a downstream call made for id: the same trace
// id, a new span id, the caller's flags. An identity whose trace id is not a W3C trace id
// (a custom opaque id) yields "" and the trace id travels in the token only.
func (id *Identity) Traceparent() string {
	if len(id.Session.TraceID) != 32 || !lowerHex(id.Session.TraceID) || allZero(id.Session.TraceID) {
		return ""
	}
	flags := id.TraceFlags
	if len(flags) != 2 || !lowerHex(flags) {
		flags = "01"
	}
	return Traceparent{TraceID: id.Session.TraceID, ParentID: NewSpanID(), Flags: flags}.String()
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}

func allZero(s string) bool { return strings.Trim(s, "0") == "" }
