package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is 100
// on every Linux architecture Go supports (sysconf(_SC_CLK_TCK) without cgo).
const clockTicks = 100

// procSet is the process under test: a root PID and, for nginx, its workers.
type procSet struct{ root int }

// pids returns the root and its direct children (nginx's master and
// workers). Children are found by scanning /proc for the parent PID.
func (p procSet) pids() []int {
	out := []int{p.root}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.root {
			continue
		}
		if ppid, err := parentOf(pid); err == nil && ppid == p.root {
			out = append(out, pid)
		}
	}
	return out
}

// statFields returns the fields of /proc/PID/stat after the command name.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

func parentOf(pid int) (int, error) {
	f, err := statFields(pid)
	if err != nil || len(f) < 2 {
		return 0, fmt.Errorf("stat %d: %v", pid, err)
	}
	return strconv.Atoi(f[1]) // field 4 (ppid); f[0] is field 3 (state)
}

// cpuTicks is utime+stime (fields 14 and 15) summed over the set, in clock ticks.
func (p procSet) cpuTicks() (int64, error) {
	var sum int64
	for _, pid := range p.pids() {
		f, err := statFields(pid)
		if err != nil {
			return 0, err
		}
		if len(f) < 13 {
			return 0, fmt.Errorf("/proc/%d/stat: short", pid)
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
		}
		sum += u + s
	}
	return sum, nil
}

// rssKiB is VmRSS summed over the set.
func (p procSet) rssKiB() (int64, error) {
	var sum int64
	for _, pid := range p.pids() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/status: VmRSS %q", pid, v)
				}
				sum += n
			}
		}
	}
	return sum, nil
}

// fds counts open file descriptors over the set.
func (p procSet) fds() (int, error) {
	sum := 0
	for _, pid := range p.pids() {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			return 0, err
		}
		sum += len(ents)
	}
	return sum, nil
}

// cpuNanos is the scheduler's on-CPU time (the first field of
// /proc/PID/task/TID/schedstat, in ns) summed over every thread of the set:
// a cross-check of cpuTicks without its 10 ms granularity. Threads that
// exited during the window are missed.
func (p procSet) cpuNanos() (int64, error) {
	var sum int64
	for _, pid := range p.pids() {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return 0, err
		}
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				continue // the thread exited
			}
			f := strings.Fields(string(b))
			if len(f) < 1 {
				continue
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("schedstat %d/%s: %v", pid, t.Name(), err)
			}
			sum += n
		}
	}
	return sum, nil
}
