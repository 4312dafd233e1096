package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = 100 * time.Millisecond
)

// acceptor is the accept side of a running sluice: it binds the listening
// sockets (with the per-OS options of listenConfig, sockopt_*.go), runs one
// accept loop per socket and closes them. It knows listeners only by key
// (listenerRuntime.key: the address, or address#name for port 0) and hands every accepted
// connection to handle, which owns it from then on. A reload binds new keys
// and closes removed ones; a key that stays keeps its socket, so a reload
// never refuses a connection.
type acceptor struct {
	log    *zap.Logger
	handle func(key string, c *net.TCPConn, accepted time.Time)
	// raw, if set, says per connection whether key's next one is
	// accepted raw (acceptRaw) and given to handleRaw instead.
	raw       func(key string) bool
	handleRaw func(key string, fd int, peer netip.AddrPort, accepted time.Time)

	released chan struct{} // wakes a loop backing off on EMFILE
	closed   chan struct{} // closed by close: backoffs end at once

	mu        sync.Mutex
	listeners map[string]*net.TCPListener
	// rawFiles holds, by key, a duplicate of the listening socket as an
	// *os.File: its RawConn can wait for a connection (a listener's
	// cannot), for acceptRaw. nil where raw accept is unsupported.
	rawFiles map[string]*os.File
	shut     bool
	loops    sync.WaitGroup
}

func newAcceptor(log *zap.Logger, handle func(key string, c *net.TCPConn, accepted time.Time)) *acceptor {
	return &acceptor{
		log:       log,
		handle:    handle,
		released:  make(chan struct{}, 1),
		closed:    make(chan struct{}),
		listeners: map[string]*net.TCPListener{},
		rawFiles:  map[string]*os.File{},
	}
}

// listenAddr names one socket to bind: the listener's config name (for
// errors), its key and its address.
type listenAddr struct{ name, key, address string }

// bind binds the addresses not bound yet, all or none, and returns their
// keys; none is accepted on until start. Addresses already bound are kept
// as they are.
func (a *acceptor) bind(addrs []listenAddr) ([]string, error) {
	lc := listenConfig()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.shut {
		return nil, errors.New("shutting down")
	}
	var added []string
	for _, l := range addrs {
		if _, bound := a.listeners[l.key]; bound {
			continue
		}
		ln, err := lc.Listen(context.Background(), "tcp", l.address)
		if err != nil {
			for _, k := range added {
				a.closeKey(k)
			}
			return nil, fmt.Errorf("listeners.%s: %w", l.name, err)
		}
		a.listeners[l.key] = ln.(*net.TCPListener)
		if f := rawListenerFile(a.listeners[l.key]); f != nil {
			a.rawFiles[l.key] = f
		}
		added = append(added, l.key)
	}
	return added, nil
}

// start runs an accept loop on each bound key of keys (from bind).
func (a *acceptor) start(keys []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range keys {
		if ln := a.listeners[k]; ln != nil {
			a.loops.Add(1)
			go a.loop(k, ln, a.rawFiles[k])
		}
	}
}

// closeUnless closes the sockets whose key keep rejects and returns their
// keys. Connections they accepted are not touched.
func (a *acceptor) closeUnless(keep func(key string) bool) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var removed []string
	for k := range a.listeners {
		if !keep(k) {
			a.closeKey(k)
			removed = append(removed, k)
		}
	}
	return removed
}

// closeKey closes key's listener and its raw duplicate (a.mu held): a
// loop waiting on either wakes with an error, and isClosed is true.
func (a *acceptor) closeKey(k string) {
	ln, f := a.listeners[k], a.rawFiles[k]
	delete(a.listeners, k)
	delete(a.rawFiles, k)
	ln.Close()
	if f != nil {
		f.Close()
	}
}

// isClosed reports whether key's listener was closed (closeKey): an
// *os.File's RawConn says so with an error errors.Is does not name.
func (a *acceptor) isClosed(key string, ln *net.TCPListener) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.listeners[key] != ln
}

// close closes every socket and returns when every accept loop has ended.
// Nothing can be bound after it.
func (a *acceptor) close() {
	a.mu.Lock()
	if !a.shut {
		a.shut = true
		close(a.closed)
	}
	a.mu.Unlock()
	a.closeUnless(func(string) bool { return false })
	a.loops.Wait()
}

// addr returns the bound address of key (tests listen on port 0), or nil.
func (a *acceptor) addr(key string) net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ln := a.listeners[key]; ln != nil {
		return ln.Addr()
	}
	return nil
}

// wake tells a loop backing off on a descriptor shortage that one was just
// released.
func (a *acceptor) wake() {
	select {
	case a.released <- struct{}{}:
	default:
	}
}

// loop accepts until the socket closes. It never spins: temporary errors
// (EMFILE, ENFILE, ENOBUFS...) back off from 5 ms doubling to 100 ms, waking
// early when a connection is released (RELIABILITY rule 9).
func (a *acceptor) loop(key string, ln *net.TCPListener, raw *os.File) {
	defer a.loops.Done()
	var delay time.Duration
	var lastLog time.Time
	var rc syscall.RawConn
	if raw != nil {
		rc, _ = raw.SyscallConn()
	}
	for {
		var c *net.TCPConn
		var err error
		if rc != nil && a.raw != nil && a.raw(key) {
			var fd int
			var peer netip.AddrPort
			if fd, peer, err = acceptRaw(rc); err == nil {
				delay = 0
				a.handleRaw(key, fd, peer, time.Now())
				continue
			}
		} else {
			c, err = ln.AcceptTCP()
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || a.isClosed(key, ln) {
				return
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			if now := time.Now(); now.Sub(lastLog) >= time.Second {
				lastLog = now
				a.log.Warn("accept failed; backing off", zap.String("address", key), zap.Duration("backoff", delay), zap.Error(err))
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-a.released:
			case <-a.closed:
			}
			t.Stop()
			continue
		}
		delay = 0
		a.handle(key, c, time.Now())
	}
}
