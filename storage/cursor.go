package storage

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// Cursors are base64url of a kind tag and the last row's sort key, so a cursor from one list
// (or anything else) is refused by another. Both backends page with them; callers treat them
// as opaque.

const cursorSep = "\x00"

// EncodeCursor is the cursor of kind that resumes after the row whose sort key is key.
func EncodeCursor(kind string, key ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + cursorSep + strings.Join(key, cursorSep)))
}

// DecodeCursor returns the n key parts of c, or ErrBadCursor.
func DecodeCursor(kind, c string, n int) ([]string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrBadCursor)
	}
	parts := strings.Split(string(raw), cursorSep)
	if len(parts) != n+1 || parts[0] != kind {
		return nil, fmt.Errorf("%w: not a %s cursor", ErrBadCursor, kind)
	}
	return parts[1:], nil
}

// AfterID reads p's cursor over a list of kind ordered by id alone: the id to resume after,
// "" (before every id) when p has no cursor.
func (p Page) AfterID(kind string) (string, error) {
	if p.Cursor == "" {
		return "", nil
	}
	key, err := DecodeCursor(kind, p.Cursor, 1)
	if err != nil {
		return "", err
	}
	return key[0], nil
}

// TrimPage cuts items, fetched with one row more than limit, to limit and says where the next
// page starts ("" when this one is the last).
func TrimPage[T any](items []T, limit int, cursor func(last *T) string) ([]T, string) {
	if len(items) <= limit {
		return items, ""
	}
	items = items[:limit]
	return items, cursor(&items[limit-1])
}
