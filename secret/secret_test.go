package secret

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func master(t *testing.T, s string) *Master {
	t.Helper()
	m, err := NewMaster(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMasterRejectsShortSecrets(t *testing.T) {
	if _, err := NewMaster(strings.Repeat("x", MinLength-1)); !errors.Is(err, ErrTooShort) {
		t.Fatalf("NewMaster(31 chars) = %v, want ErrTooShort", err)
	}
}

func TestDerivedKeysArePurposeBound(t *testing.T) {
	m := master(t, strings.Repeat("a", 40))
	a, b := m.Derive(PurposeKeyEncryption), m.Derive(PurposeClientSecrets)
	if len(a) != 32 || len(b) != 32 || string(a) == string(b) {
		t.Fatalf("derived keys must be 32 bytes and differ by purpose")
	}
	if string(a) != string(master(t, strings.Repeat("a", 40)).Derive(PurposeKeyEncryption)) {
		t.Fatalf("derivation is not deterministic")
	}
	if string(a) == string(master(t, strings.Repeat("b", 40)).Derive(PurposeKeyEncryption)) {
		t.Fatalf("different secrets derived the same key")
	}
}

func TestHasher(t *testing.T) {
	h := NewHasher(master(t, strings.Repeat("k", 32)))
	plain, hash := h.Generate()
	if !strings.HasPrefix(plain, SecretPrefix) || len(plain) < len(SecretPrefix)+43 {
		t.Fatalf("generated secret %q is not 256 bits with the prefix", plain)
	}
	if strings.Contains(string(hash), plain) {
		t.Fatalf("hash contains the secret")
	}
	if !h.Verify(plain, hash) {
		t.Fatalf("a generated secret does not verify")
	}
	for _, bad := range []string{"", plain[:len(plain)-1], plain + "x", strings.ToUpper(plain)} {
		if h.Verify(bad, hash) {
			t.Fatalf("Verify(%q) = true", bad)
		}
	}
	if h.Verify(plain, nil) {
		t.Fatalf("an empty hash verified")
	}
	other := NewHasher(master(t, strings.Repeat("z", 32)))
	if other.Verify(plain, hash) {
		t.Fatalf("a hash verified under another deployment secret")
	}
	if p2, _ := h.Generate(); p2 == plain {
		t.Fatalf("two generated secrets are equal")
	}
}

func TestLoadOrCreateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db.secret")
	s1, created, err := LoadOrCreateFile(path)
	if err != nil || !created || len(s1) < MinLength {
		t.Fatalf("first call = %q, %v, %v", s1, created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode = %v, want 0600", st.Mode().Perm())
	}
	s2, created, err := LoadOrCreateFile(path)
	if err != nil || created || s2 != s1 {
		t.Fatalf("second call = %q, %v, %v; want the same secret, not created", s2, created, err)
	}
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("tiny\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateFile(short); !errors.Is(err, ErrTooShort) {
		t.Fatalf("short file = %v, want ErrTooShort", err)
	}
}

func TestLoadOrCreateFileRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mandate.db.secret")
	const n = 16
	got := make(chan string, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			s, _, err := LoadOrCreateFile(path)
			got <- s
			errs <- err
		}()
	}
	first := ""
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("a racing start failed: %v", err)
		}
		s := <-got
		if first == "" {
			first = s
		}
		if s != first {
			t.Fatalf("racing starts disagree on the secret")
		}
	}
	left, _ := filepath.Glob(path + ".tmp-*")
	if len(left) > 0 {
		t.Fatalf("temporary files left behind: %v", left)
	}
}

func TestMasterIsRedacted(t *testing.T) {
	m := master(t, strings.Repeat("s", 40))
	if strings.Contains(fmt.Sprint(m), "sss") || strings.Contains(fmt.Sprintf("%v %s", m, m), "sss") {
		t.Fatalf("the secret shows when printed")
	}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "master", m)
	if strings.Contains(b.String(), "sss") {
		t.Fatalf("the secret shows in a log line: %s", b.String())
	}
}
