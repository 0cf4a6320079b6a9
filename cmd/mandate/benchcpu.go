package main

// CPU of a process tree from /proc, for `mandate bench --postgres-pid`: what the database
// spends per exchange is half of what an exchange costs, and the part group commit changes.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// userHZ is the unit of /proc/*/stat's CPU times: fixed at 100 by the kernel's ABI,
// whatever the kernel's own tick rate.
const userHZ = 100

// treeCPU returns the user+system CPU time, so far, of process root and all its descendants
// alive now. A descendant that exited since an earlier call takes its time with it; Postgres
// backends live as long as their pooled connections, so over a bench run that loses nothing.
func treeCPU(procDir string, root int) (time.Duration, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return 0, err
	}
	type proc struct {
		ppid  int
		ticks int64
	}
	procs := make(map[int]proc, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		ppid, ticks, err := parseStat(b)
		if err != nil {
			return 0, fmt.Errorf("%s/%d/stat: %w", procDir, pid, err)
		}
		procs[pid] = proc{ppid, ticks}
	}
	if _, ok := procs[root]; !ok {
		return 0, fmt.Errorf("no process %d", root)
	}
	var total int64
	for pid, p := range procs {
		for cur, seen := pid, 0; seen < 64; seen++ { // a process tree deeper than 64 is not Postgres
			if cur == root {
				total += p.ticks
				break
			}
			parent, ok := procs[cur]
			if !ok || parent.ppid == cur {
				break
			}
			cur = parent.ppid
		}
	}
	return time.Duration(total) * time.Second / userHZ, nil
}

// parseStat reads ppid (field 4) and utime+stime (fields 14 and 15) from a /proc/PID/stat
// line. The command name, field 2, is in parentheses and may hold spaces and parentheses
// itself, so fields are counted from its last ')'.
func parseStat(b []byte) (ppid int, ticks int64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("no command name")
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, 0, errors.New("too few fields")
	}
	ppid, err = strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, err
	}
	utime, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return ppid, utime + stime, nil
}
