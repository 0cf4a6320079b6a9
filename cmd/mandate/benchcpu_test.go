package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may choose.
	line := []byte("4242 (postgres: a (b) c) S 4100 4242 4242 0 -1 4194560 1024 0 0 0 731 269 0 0 20 0 1 0 100 0 0\n")
	ppid, ticks, err := parseStat(line)
	if err != nil || ppid != 4100 || ticks != 1000 {
		t.Errorf("parseStat = %d, %d, %v; want 4100, 1000, nil", ppid, ticks, err)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S", "1 (x) S y 1 1 0 -1 0 0 0 0 0 1 1"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) accepted it", bad)
		}
	}
}

// A child that burns CPU counts toward its parent's tree; an unrelated tree does not.
func TestTreeCPUCountsDescendants(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc on this system") // Linux only, like the flag it serves
	}
	// A shell (our child) whose own child spins until the test kills the group.
	cmd := exec.Command("sh", "-c", `sh -c 'while :; do :; done' & wait`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }
	defer stop()
	before, err := treeCPU("/proc", cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	during, err := treeCPU("/proc", cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if spent := during - before; spent < 50*time.Millisecond {
		t.Errorf("the spinning grandchild's CPU was not counted: %s in 400 ms", spent)
	}
	if _, err := treeCPU("/proc", cmd.Process.Pid); err == nil {
		t.Error("treeCPU of an exited process reported no error")
	}

	// A fake /proc: 10 is the root, 11 its child, 12 a grandchild, 20 someone else's.
	dir := t.TempDir()
	for pid, stat := range map[string]string{
		"10": "10 (postgres) S 1 0 0 0 0 0 0 0 0 0 100 50 0 0",
		"11": "11 (postgres: w) S 10 0 0 0 0 0 0 0 0 0 10 5 0 0",
		"12": "12 (postgres: x) S 11 0 0 0 0 0 0 0 0 0 1 1 0 0",
		"20": "20 (other) S 1 0 0 0 0 0 0 0 0 0 1000 1000 0 0",
	} {
		if err := os.MkdirAll(filepath.Join(dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pid, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := treeCPU(dir, 10)
	if want := 167 * 10 * time.Millisecond; err != nil || got != want {
		t.Errorf("treeCPU of the fake tree = %s, %v; want %s", got, err, want)
	}
}
