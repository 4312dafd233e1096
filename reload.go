package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// reloader is the config side of a running sluice: the current Runtime,
// the file it came from, its watch, reloads (one at a time) and the drains
// of the backends they remove. It asks the acceptor for the listeners a new
// config adds and closes the ones it drops; install readies a new Runtime
// before it becomes current (the server's limiters, caps and health log).
type reloader struct {
	log     *zap.Logger
	acc     *acceptor
	install func(*Runtime)

	rt         atomic.Pointer[Runtime] // the current config: new connections take it
	configPath string                  // what reload reads
	onReload   func(ok bool)           // counts attempts (metrics)

	mu       sync.Mutex // one reload at a time
	stopOnce sync.Once
	stopped  chan struct{} // closed by stop: the watch ends, reloads are refused
	watchers sync.WaitGroup

	timersMu sync.Mutex
	timers   map[*time.Timer]struct{} // drains of backends removed by a reload
}

func newReloader(log *zap.Logger, acc *acceptor, install func(*Runtime)) *reloader {
	return &reloader{
		log:     log,
		acc:     acc,
		install: install,
		stopped: make(chan struct{}),
		timers:  map[*time.Timer]struct{}{},
	}
}

// stop ends the watch and refuses reloads from now on; it returns once a
// reload in progress has finished.
func (s *reloader) stop() {
	s.stopOnce.Do(func() { close(s.stopped) })
	s.watchers.Wait()
	s.mu.Lock()
	//lint:ignore SA2001 the empty critical section is a barrier
	s.mu.Unlock()
}

// stopDrains cancels the pending drains of removed backends.
func (s *reloader) stopDrains() {
	s.timersMu.Lock()
	defer s.timersMu.Unlock()
	for t := range s.timers {
		t.Stop()
		delete(s.timers, t)
	}
}

// reload applies the config file again: compile it (parse, strict decode,
// check every key, load every certificate file: the pure phase, so a
// rejected file starts nothing), build it, bind every new listener, then one
// atomic swap. On any error the running config keeps serving and the error
// is returned (and logged). Connections in flight keep the config they
// started with; new ones use the new one at once. Listeners whose address is
// unchanged are kept, removed ones stop accepting, added ones start.
// Backends keep their health and connection counts across it when their
// address is unchanged; a removed backend's connections are closed after
// drain_timeout (0: kept until they end).
func (s *reloader) reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.stopped:
		return errors.New("shutting down: reload refused")
	default:
	}
	start := time.Now()
	_, rt, err := LoadConfig(s.configPath) // CompileFile, then Build
	if err != nil {
		s.log.Error("reload rejected: the running config keeps serving", zap.String("config", s.configPath), zap.Error(err))
		s.reloaded(false)
		return err
	}
	old := s.rt.Load()
	added, err := s.acc.bind(rt.listenAddrs())
	if err != nil {
		rt.Close()
		s.log.Error("reload rejected: the running config keeps serving", zap.String("config", s.configPath), zap.Error(err))
		s.reloaded(false)
		return err
	}
	for name, p := range rt.Pools {
		if op := old.Pools[name]; op != nil {
			p.Adopt(op)
		}
	}
	s.install(rt)
	s.rt.Store(rt)
	s.acc.start(added)
	removed := s.acc.closeUnless(func(key string) bool { return rt.byAddr[key] != nil })
	drained := s.drainRemovedBackends(old, rt)
	old.retire()

	for _, w := range rt.Warnings {
		s.log.Warn(w)
	}
	if rt.LogLevel != old.LogLevel || rt.LogFormat != old.LogFormat {
		s.log.Warn("log level and format apply at restart", zap.String("level", rt.LogLevel), zap.String("format", rt.LogFormat))
	}
	if rt.Watch != old.Watch {
		s.log.Warn("watch applies at restart", zap.Bool("watch", rt.Watch))
	}
	if rt.AdminListen != old.AdminListen {
		s.log.Warn("admin.listen applies at restart", zap.String("listen", rt.AdminListen))
	}
	s.log.Info("config reloaded",
		zap.String("config", s.configPath), zap.String("version", rt.Version), zap.String("previous", old.Version),
		zap.Strings("listeners_added", added), zap.Strings("listeners_removed", removed),
		zap.Strings("backends_removed", drained), zap.Duration("took", time.Since(start)))
	s.reloaded(true)
	return nil
}

// reloaded counts a reload attempt (metrics hook).
func (s *reloader) reloaded(ok bool) {
	if s.onReload != nil {
		s.onReload(ok)
	}
}

// drainRemovedBackends schedules, for every backend of old that rt no
// longer has (in the pool of the same name), the close of its connections
// after drain_timeout. It returns their "pool/address" names.
func (s *reloader) drainRemovedBackends(old, rt *Runtime) []string {
	var removed []string
	for _, name := range sortedKeys(old.Pools) {
		op := old.Pools[name]
		keep := map[string]bool{}
		if np := rt.Pools[name]; np != nil {
			for _, b := range np.Backends() {
				keep[b.Addr()] = true
			}
		}
		for _, b := range op.Backends() {
			if keep[b.Addr()] {
				continue
			}
			removed = append(removed, name+"/"+b.Addr())
			if rt.DrainTimeout <= 0 {
				continue // kept until they end
			}
			addr := b.Addr()
			s.timersMu.Lock()
			var t *time.Timer
			t = time.AfterFunc(rt.DrainTimeout, func() {
				s.timersMu.Lock()
				delete(s.timers, t)
				s.timersMu.Unlock()
				if n, _ := op.CloseConnections(addr); n > 0 {
					s.log.Info("closed the connections of a removed backend", zap.String("pool", name), zap.String("backend", addr), zap.Int("connections", n))
				}
			})
			s.timers[t] = struct{}{}
			s.timersMu.Unlock()
		}
	}
	return removed
}

// watchConfig reloads when the config file changes (watch = true). It polls
// the path (following symlinks, so a rename or a symlink swap is seen like
// an edit) and waits until the content has been stable for debounce, so a
// file written in several steps is applied once, as finally written. A
// content equal to the last applied one is not reloaded.
func (s *reloader) watchConfig(poll, debounce time.Duration) {
	defer s.watchers.Done()
	sum := func() ([32]byte, bool) {
		b, err := os.ReadFile(s.configPath)
		if err != nil {
			return [32]byte{}, false
		}
		return sha256.Sum256(b), true
	}
	applied, _ := sum()
	var pending [32]byte
	var since time.Time
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-s.stopped:
			return
		case now := <-t.C:
			cur, ok := sum()
			if !ok || cur == applied {
				since = time.Time{}
				continue
			}
			if since.IsZero() || !bytes.Equal(cur[:], pending[:]) {
				pending, since = cur, now
				continue
			}
			if now.Sub(since) < debounce {
				continue
			}
			s.log.Info("config file changed: reloading", zap.String("config", s.configPath))
			applied, since = cur, time.Time{}
			s.reload() // logs its own outcome; a broken file is retried when it changes again
		}
	}
}

// startWatch starts watchConfig (stopped by shutdown).
func (s *reloader) startWatch(poll, debounce time.Duration) {
	s.watchers.Add(1)
	go s.watchConfig(poll, debounce)
}
