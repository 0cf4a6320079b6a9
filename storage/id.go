package storage

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"time"
)

// NewID returns prefix + "_" + 26 hex digits: 48 bits of Unix milliseconds, so ids sort by
// creation time (the audit log's tie-break), then 56 random bits, so they cannot be guessed.
func NewID(prefix string) string {
	var b [13]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(time.Now().UnixMilli()))
	copy(b[:6], ms[2:])
	_, _ = rand.Read(b[6:]) // crypto/rand.Read never fails on supported platforms
	return prefix + "_" + hex.EncodeToString(b[:])
}
