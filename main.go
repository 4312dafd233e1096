// Command sluice is a layer-4/layer-7 TCP load balancer with TLS SNI routing
// for game-server fleets. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"sluice/balancer"
)

// Config file watching (watch = true).
const (
	watchPoll     = 200 * time.Millisecond
	watchDebounce = 500 * time.Millisecond
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "config.toml", "path to the TOML configuration")
	check := fs.Bool("check", false, "load and validate the configuration, print every problem, and exit (0: valid, 1: invalid)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "sluice %s\n", version)
		return 0
	}

	if *check {
		// The pure phase only: nothing is started, bound or generated.
		if _, _, err := CompileFile(*configPath); err != nil {
			printConfigErrors(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: configuration is valid\n", *configPath)
		return 0
	}
	_, rt, err := LoadConfig(*configPath)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}

	// Signals are taken over before anything listens: a SIGHUP sent as soon
	// as the port answers must reload, not kill the process (its default).
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sig)

	log, rejectLog, err := newLoggers(rt.LogLevel, rt.LogFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice: %v\n", err)
		return 1
	}
	defer log.Sync()

	s := newServer(rt, log, rejectLog)
	s.configPath = *configPath
	if err := s.listen(); err != nil {
		log.Error("cannot listen", zap.Error(err))
		return 1
	}
	if rt.AdminListen != "" {
		adm := newAdmin(s, s.metrics, s.reload)
		addr, err := adm.start(rt.AdminListen)
		if err != nil {
			log.Error("cannot listen", zap.String("admin", rt.AdminListen), zap.Error(err))
			s.shutdown(0)
			return 1
		}
		log.Info("admin listening: /metrics, /healthz, /readyz, /api/v1/state, status page at /", zap.Stringer("address", addr))
		defer adm.stop() // stays up through the drain: /readyz answers 503, /metrics still answers
	}
	for _, name := range sortedKeys(rt.Listeners) {
		log.Info("listening", zap.String("listener", name), zap.Stringer("address", s.addr(name)))
	}
	for _, w := range rt.Warnings {
		log.Warn(w)
	}
	log.Info("sluice started", zap.String("version", version), zap.String("config", *configPath), zap.Int64("max_connections", s.maxConns.Load()))
	s.serve()
	if rt.Watch {
		s.startWatch(watchPoll, watchDebounce)
	}
	probeCtx, stopProbe := context.WithCancel(context.Background())
	var probes sync.WaitGroup
	probes.Add(1)
	go func() { defer probes.Done(); probeBackends(probeCtx, rt, log) }()

	for {
		sg := <-sig
		if sg == syscall.SIGHUP {
			log.Info("SIGHUP: reloading", zap.String("config", *configPath))
			s.reload() // logs its outcome; on error the running config keeps serving
			continue
		}
		drain := s.rt.Load().DrainTimeout
		log.Info("shutting down: no new connections; live ones may run for drain_timeout",
			zap.Stringer("signal", sg), zap.Duration("drain_timeout", drain), zap.Int64("active", s.active.Load()))
		stopProbe()
		done := make(chan struct{})
		go func() { s.shutdown(drain); probes.Wait(); close(done) }()
		select {
		case <-done:
			log.Info("stopped")
			return 0
		case sg := <-sig:
			log.Warn("second signal: exiting at once", zap.Stringer("signal", sg), zap.Int64("active", s.active.Load()))
			return 1
		}
	}
}

// printConfigErrors prints one line per problem, never a stack trace.
func printConfigErrors(w io.Writer, err error) {
	fmt.Fprintln(w, "sluice: invalid configuration:")
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			fmt.Fprintf(w, "  %v\n", e)
		}
		return
	}
	fmt.Fprintf(w, "  %v\n", err)
}

// newLoggers builds the access/lifecycle logger and a sampled one for
// refusals: the first 10 lines per second of each message, then 1 in 100,
// so a flood of bad clients cannot flood the log (RELIABILITY T26).
func newLoggers(level, format string, w io.Writer) (*zap.Logger, *zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, err
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)
	log := zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w))))
	sampled := zap.New(zapcore.NewSamplerWithOptions(core, time.Second, 10, 100))
	return log, sampled, nil
}

// probeBackends connects once to every backend at start and says which are
// down, so a fresh `go run .` explains why connections fail until the
// backends run. Continuous health checking belongs to the pools.
func probeBackends(ctx context.Context, rt *Runtime, log *zap.Logger) {
	var wg sync.WaitGroup
	for _, name := range sortedKeys(rt.Pools) {
		for _, b := range rt.Pools[name].Backends() {
			wg.Add(1)
			go func(pool string, b *balancer.Backend) {
				defer wg.Done()
				err := b.Probe(ctx, time.Second)
				switch {
				case errors.Is(err, context.Canceled):
				case err != nil:
					log.Warn("backend is down: connections routed to it will fail until it runs",
						zap.String("pool", pool), zap.String("backend", b.Addr()), zap.Error(err))
				default:
					log.Info("backend is up", zap.String("pool", pool), zap.String("backend", b.Addr()))
				}
			}(name, b)
		}
	}
	wg.Wait()
}
