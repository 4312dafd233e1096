package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"sort"
	"strings"
	"unicode/utf8"
)

func cmdReport(args []string) {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	var (
		results = fs.String("results", "", "the JSON results file written by run")
		out     = fs.String("out", "", "also write the tables as Markdown to this file")
		header  = fs.String("header", "", "a line printed above the tables (settings, machine)")
	)
	_ = fs.Parse(args)
	f, err := os.Open(*results)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	type key struct{ scenario, target string }
	all := map[key][]result{}
	skipped := map[key]string{} // not measured on that target: why
	targetSeen := map[string]bool{}
	httpRows := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			log.Fatalf("%s: %v", *results, err)
		}
		targetSeen[r.Target] = true
		httpRows = httpRows || strings.HasPrefix(r.Scenario, "http-") || strings.HasPrefix(r.Scenario, "h2-")
		if r.Skip != "" {
			skipped[key{r.Scenario, r.Target}] = r.Skip
			continue
		}
		all[key{r.Scenario, r.Target}] = append(all[key{r.Scenario, r.Target}], r)
	}
	targets := []string{}
	for _, t := range []string{"direct", "haproxy", "nginx", "sluice"} {
		if targetSeen[t] {
			targets = append(targets, t)
			delete(targetSeen, t)
		}
	}
	for t := range targetSeen {
		targets = append(targets, t)
	}
	peers := []string{}
	for _, t := range targets {
		if t == "haproxy" || t == "nginx" {
			peers = append(peers, t)
		}
	}

	head := append([]string{"scenario", "headline"}, targets...)
	head = append(head, "sluice/best", "sluice/direct", "beside")
	head = append(head, targets...)
	head = append(head, "sluice/best", "sluice/direct", "errors")
	tbl := [][]string{append(head, targets...)}
	lat := [][]string{append([]string{"scenario (p50/p99/p99.9 µs)"}, targets...)}
	var notes, warnings []string
	for _, s := range scenarios {
		stats := map[string]*agg{}
		errCells := map[string]string{}
		for _, t := range targets {
			if why := skipped[key{s.name, t}]; why != "" && len(all[key{s.name, t}]) == 0 {
				notes = append(notes, fmt.Sprintf("%s/%s: n/a, not measured: %s", s.name, t, why))
			}
			if rs := all[key{s.name, t}]; len(rs) > 0 {
				stats[t] = aggregate(rs)
				var errs int64
				mark := ""
				for _, r := range rs {
					errs += r.Errors
					if r.Ops == 0 {
						mark = " FAILED"
					}
					if r.Errors > 0 || r.Err != "" {
						n := fmt.Sprintf("%s/%s rep %d: %d errors", s.name, t, r.Rep+1, r.Errors)
						if len(r.ErrKinds) > 0 {
							n += " (" + kindList(r.ErrKinds) + ")"
						}
						notes = append(notes, n+", first: "+r.Err)
					}
					if r.Reconnects > 0 {
						notes = append(notes, fmt.Sprintf("%s/%s rep %d: the server closed %d keep-alive connections (Connection: close); the client reconnected",
							s.name, t, r.Rep+1, r.Reconnects))
					}
					if r.After != nil && r.After.Broken() {
						mark += " !"
						warnings = append(warnings, fmt.Sprintf("WARNING %s/%s rep %d: %s; %s's rows measured after it are suspect",
							s.name, t, r.Rep+1, r.After, t))
					}
					if r.AfterBroken != "" {
						mark += " *"
						warnings = append(warnings, fmt.Sprintf("WARNING %s/%s rep %d was measured after %s, after which %s failed connections (%d errors in this run)",
							s.name, t, r.Rep+1, r.AfterBroken, t, r.Errors))
					}
				}
				errCells[t] = fmt.Sprint(errs) + mark
			}
		}
		if len(stats) == 0 {
			continue
		}
		// CPU and memory: lower is better; throughput: higher is better
		// (fds per connection: lower is better).
		sideLower := s.sideK == 0
		row := []string{s.title, s.unit}
		for _, t := range targets {
			row = append(row, stats[t].cell(func(a *agg) float64 { return a.value }, true))
		}
		row = append(row, ratio(stats, peers, func(a *agg) float64 { return a.value }, true),
			ratio(stats, []string{"direct"}, func(a *agg) float64 { return a.value }, true), s.side)
		for _, t := range targets {
			row = append(row, stats[t].cell(func(a *agg) float64 { return a.side }, false))
		}
		row = append(row, ratio(stats, peers, func(a *agg) float64 { return a.side }, sideLower),
			ratio(stats, []string{"direct"}, func(a *agg) float64 { return a.side }, sideLower), "all reps")
		for _, t := range targets {
			if c, ok := errCells[t]; ok {
				row = append(row, c)
			} else {
				row = append(row, "n/a")
			}
		}
		tbl = append(tbl, row)
		if s.lat {
			lr := []string{s.title}
			for _, t := range targets {
				a := stats[t]
				if a == nil || a.n == 0 {
					lr = append(lr, "n/a")
					continue
				}
				lr = append(lr, fmt.Sprintf("%s/%s/%s", num(a.p50), num(a.p99), num(a.p999)))
			}
			lat = append(lat, lr)
		}
	}

	var b strings.Builder
	if *header != "" {
		fmt.Fprintln(&b, *header)
		fmt.Fprintln(&b)
	}
	explain := []string{
		"Headline: CPU time (utime+stime from /proc/PID/stat) of the process under test per operation, over exactly the measured window; idle rows: RSS growth per connection.",
		"Cells: median of the repetitions ±half their min-max spread as % of the median. Ratios use medians; sluice/best compares with the better of HAProxy and nginx (> 1: sluice spends more CPU/memory, or moves more per second).",
		"direct: no proxy; the process measured is the backends process (one endpoint doing the same work), so its CPU and memory are a scale, not a proxy.",
		"errors: failed operations summed over the repetitions, warm-up and window (kinds in the notes: connect, reset, closed before answering, short answer, timeout); FAILED: a repetition completed none;" +
			" !: right after this storm the target failed ordinary connections (probed for up to " + probeTime.String() + "); *: measured after such a storm.",
		"storm rows: " + fmt.Sprint(stormWorkers) + " client loops each opening a connection, writing PROXY (direct only), hello, command and data in one write, reading the answer and closing first; all to one backend.",
	}
	if httpRows {
		explain = append(explain, "http rows: "+fmt.Sprint(httpConns)+" keep-alive HTTP/1.1 connections over TLS the proxy terminates (one handshake each, before the window), one GET at a time on each;"+
			" http-small: a 19-byte body from one backend (proxied as plain HTTP, backend connections kept alive); h2-small: the same over HTTP/2 (ALPN h2, net/http's client; backends still get HTTP/1.1; direct: n/a, the backends speak HTTP/1.1 only); http-static: a 20 KiB file the proxy serves from disk itself"+
			" (HAProxy: n/a, it serves no files: `http-request return file` holds at most one buffer, tune.bufsize 16 KiB, and raising it would change every other row); direct: Go net/http over TLS.")
	}
	notes = append(warnings, notes...)
	writeTable(&b, tbl, false)
	fmt.Fprintln(&b)
	writeTable(&b, lat, false)
	fmt.Fprintln(&b)
	for _, e := range explain {
		fmt.Fprintln(&b, e)
	}
	for _, n := range notes {
		fmt.Fprintln(&b, "note:", n)
	}
	fmt.Print(b.String())

	if *out != "" {
		var m strings.Builder
		if *header != "" {
			fmt.Fprintf(&m, "%s\n\n", *header)
		}
		writeTable(&m, tbl, true)
		fmt.Fprintln(&m)
		writeTable(&m, lat, true)
		fmt.Fprintln(&m)
		for _, e := range explain {
			fmt.Fprintf(&m, "- %s\n", e)
		}
		for _, n := range notes {
			fmt.Fprintf(&m, "- note: %s\n", n)
		}
		if err := os.WriteFile(*out, []byte(m.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

type agg struct {
	n                       int
	value, vmin, vmax, side float64
	sideMin, sideMax        float64
	p50, p99, p999          float64
	ticksMin                int64
	failed                  bool
}

func aggregate(rs []result) *agg {
	a := &agg{ticksMin: math.MaxInt64}
	var vals, sides, p50, p99, p999 []float64
	for _, r := range rs {
		if r.Ops == 0 {
			a.failed = true
			continue
		}
		vals = append(vals, r.Value)
		sides = append(sides, r.Side)
		if r.P50 > 0 {
			p50, p99, p999 = append(p50, r.P50), append(p99, r.P99), append(p999, r.P999)
		}
		if r.Ticks < a.ticksMin {
			a.ticksMin = r.Ticks
		}
	}
	a.n = len(vals)
	if a.n == 0 {
		return a
	}
	a.value, a.vmin, a.vmax = median(vals)
	a.side, a.sideMin, a.sideMax = median(sides)
	if len(p50) > 0 {
		a.p50, _, _ = median(p50)
		a.p99, _, _ = median(p99)
		a.p999, _, _ = median(p999)
	}
	return a
}

func median(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func (a *agg) cell(get func(*agg) float64, spread bool) string {
	if a == nil || a.n == 0 {
		return "n/a"
	}
	v := get(a)
	s := num(v)
	if a.n > 1 && v != 0 {
		lo, hi := a.vmin, a.vmax
		if !spread {
			lo, hi = a.sideMin, a.sideMax
		}
		s += fmt.Sprintf(" ±%.0f%%", (hi-lo)/2/math.Abs(v)*100)
	}
	return s
}

// ratio is sluice over the best of the others (lowest when lower is better).
func ratio(stats map[string]*agg, others []string, get func(*agg) float64, lowerBetter bool) string {
	sl := stats["sluice"]
	if sl == nil || sl.n == 0 {
		return "n/a"
	}
	best := math.NaN()
	for _, o := range others {
		a := stats[o]
		if a == nil || a.n == 0 {
			continue
		}
		v := get(a)
		if math.IsNaN(best) || (lowerBetter && v < best) || (!lowerBetter && v > best) {
			best = v
		}
	}
	if math.IsNaN(best) || best == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", get(sl)/best)
}

func num(v float64) string {
	av := math.Abs(v)
	switch {
	case av >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case av >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case av >= 100:
		return fmt.Sprintf("%.0f", v)
	case av >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func writeTable(b *strings.Builder, rows [][]string, md bool) {
	if len(rows) == 0 {
		return
	}
	w := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			if i < len(w) && utf8.RuneCountInString(c) > w[i] {
				w[i] = utf8.RuneCountInString(c)
			}
		}
	}
	for ri, r := range rows {
		if md {
			b.WriteString("|")
		}
		for i, c := range r {
			pad := strings.Repeat(" ", w[i]-utf8.RuneCountInString(c))
			if md {
				b.WriteString(" " + c + pad + " |")
			} else if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		b.WriteString("\n")
		if md && ri == 0 {
			b.WriteString("|")
			for i := range r {
				if i == 0 {
					b.WriteString(" " + strings.Repeat("-", w[i]) + " |")
				} else {
					b.WriteString(" " + strings.Repeat("-", w[i]-1) + ": |")
				}
			}
			b.WriteString("\n")
		}
	}
}
