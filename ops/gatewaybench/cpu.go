package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// every Linux this runs on).
const clockTick = 10 * time.Millisecond

// cpuTime is the user plus system CPU time spent so far by every process in
// the given process groups, with 0 standing for this process alone (it
// shares its group with wrk). On a shared machine this is steadier than
// throughput: it is what one request costs the proxy, however many other
// processes are running. Zero where /proc cannot be read.
func cpuTime(groups []int) time.Duration {
	var total time.Duration
	want := map[int]bool{}
	for _, g := range groups {
		if g == 0 {
			total += statCPU("/proc/self/stat", -1)
			continue
		}
		want[g] = true
	}
	if len(want) == 0 {
		return total
	}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		for g := range want {
			total += statCPU(p, g)
		}
	}
	return total
}

// statCPU reads utime+stime from one /proc stat file, counting it only
// when the process is in group pgrp (any group when pgrp < 0).
func statCPU(path string, pgrp int) time.Duration {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses; the fields after
	// its closing parenthesis are plain.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	if pgrp >= 0 {
		if g, err := strconv.Atoi(f[2]); err != nil || g != pgrp {
			return 0
		}
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * clockTick
}

// boxTicks reads the machine's busy and total CPU ticks from /proc/stat's
// first line (every CPU together); zeros where it cannot be read.
func boxTicks() (busy, total int64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	// user nice system idle iowait irq softirq steal (guest time is
	// already in user and nice).
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0
		}
		total += n
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy, total
}

// busyShare is the share of the machine's CPU time that was busy between
// two boxTicks readings.
func busyShare(busy0, total0, busy1, total1 int64) float64 {
	if total1 <= total0 {
		return 0
	}
	return float64(busy1-busy0) / float64(total1-total0)
}
