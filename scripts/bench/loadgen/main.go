// Command loadgen drives scripts/bench.sh: it runs the benchmark scenarios
// against each target (direct, haproxy, nginx, sluice), measures the CPU time
// of the process under test over exactly the measured window (utime+stime
// from /proc/PID/stat), and prints the comparison table.
//
//	loadgen run    -target SPEC... -scenarios LIST -reps N -duration D -storm-duration D -results FILE
//	loadgen report -results FILE -out FILE.md
//
// A target SPEC is
// name=NAME,pid=PID,l4=ADDR,pp=ADDR,tls=ADDR,wss=ADDR[,http=ADDR][,static=ADDR][,ppself];
// a row whose address the spec lacks is skipped for that target ("n/a").
// "run" runs the scenarios in the order LIST names them (all: the table's
// order) and appends one JSON line per measurement to the results file;
// "report" reads them back and prints the median of the repetitions with
// their spread.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"
)

type targetList []*target

func (l *targetList) String() string { return fmt.Sprint(len(*l)) }
func (l *targetList) Set(s string) error {
	t, err := parseTarget(s)
	if err != nil {
		return err
	}
	*l = append(*l, t)
	return nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadgen: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: loadgen run|report [flags]")
	}
	switch os.Args[1] {
	case "run":
		cmdRun(os.Args[2:])
	case "report":
		cmdReport(os.Args[2:])
	default:
		log.Fatalf("unknown command %q", os.Args[1])
	}
}

type config struct {
	duration      time.Duration
	stormDuration time.Duration // the measured window of the storm rows
	warmup        time.Duration
	idleConns     int
}

func cmdRun(args []string) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var targets targetList
	fs.Var(&targets, "target", "a target spec (repeatable; run in this order, rotated each repetition)")
	var (
		scen     = fs.String("scenarios", "all", "comma-separated scenario names, or all")
		reps     = fs.Int("reps", 3, "repetitions")
		repBase  = fs.Int("rep-base", 0, "number of the first repetition (in the results file)")
		duration = fs.Duration("duration", 2*time.Second, "measured window per run")
		stormDur = fs.Duration("storm-duration", 10*time.Second, "measured window of the storm rows")
		warmup   = fs.Duration("warmup", 300*time.Millisecond, "warm-up before each window")
		idle     = fs.Int("idle-conns", 8000, "connections for the idle scenarios")
		results  = fs.String("results", "", "append JSON results to this file")
	)
	_ = fs.Parse(args)
	if len(targets) == 0 || *results == "" {
		log.Fatal("run: -target and -results are required")
	}
	if err := makeHellos(); err != nil {
		log.Fatalf("ClientHello: %v", err)
	}
	var list []*scenario
	if *scen == "all" {
		list = scenarios
	} else {
		for _, n := range strings.Split(*scen, ",") {
			s := scenarioByName(n)
			if s == nil {
				log.Fatalf("unknown scenario %q", n)
			}
			list = append(list, s)
		}
	}
	f, err := os.OpenFile(*results, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	cfg := config{duration: *duration, stormDuration: *stormDur, warmup: *warmup, idleConns: *idle}
	enc := json.NewEncoder(f)
	broken := map[string]string{} // target → the storm after which it failed connections
	for r := 0; r < *reps; r++ {
		rep := *repBase + r
		for _, s := range list {
			for i := range targets {
				t := targets[(i+rep)%len(targets)] // alternate, rotating the order
				c := cfg
				if s.storm {
					c.duration = cfg.stormDuration
				}
				res := s.run(c, t, s)
				res.Scenario, res.Target, res.Rep = s.name, t.name, rep
				res.AfterBroken = broken[t.name]
				if res.After != nil && res.After.Broken() && broken[t.name] == "" {
					broken[t.name] = fmt.Sprintf("%s rep %d", s.name, rep+1)
				}
				fmt.Fprintf(os.Stderr, "  rep %d %-12s %-8s %s\n", rep+1, s.name, t.name, res.brief(s))
				if res.AfterBroken != "" {
					fmt.Fprintf(os.Stderr, "  !! %s/%s was measured after %s, after which %s failed connections\n",
						s.name, t.name, res.AfterBroken, t.name)
				}
				if err := enc.Encode(res); err != nil {
					log.Fatal(err)
				}
			}
		}
	}
}
