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
	// TestIdleTimeout alone took 10 s). An explicit -parallel wins, and so
	// does fuzzing, where -parallel is the number of fuzz workers.
	flag.Parse()
	keep := flag.Lookup("test.fuzz").Value.String() != ""
	flag.Visit(func(f *flag.Flag) { keep = keep || f.Name == "test.parallel" })
	if !keep {
		flag.Set("test.parallel", strconv.Itoa(max(8, 4*runtime.GOMAXPROCS(0))))
	}
	goleak.VerifyTestMain(m)
}
