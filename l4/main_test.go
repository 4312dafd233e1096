package l4

import (
	"flag"
	"runtime"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The parallel subtests here wait on the relay's timers (idle,
	// half-close, write stall), not on CPUs: let more of them wait at once
	// than -parallel's default, GOMAXPROCS (2 on the CI box, where
	// TestIdleTimeout alone took 10 s). An explicit -parallel wins.
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", strconv.Itoa(max(8, 4*runtime.GOMAXPROCS(0))))
	}
	goleak.VerifyTestMain(m)
}
