//go:build linux

package l4

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The epoll engine (Options.Engine = EngineEpoll) runs a raw TCP↔TCP relay
// without goroutines of its own: both sockets sit in an epoll set of
// sluice's own, edge-triggered for input and output, and a shard goroutine
// moves whatever is ready with recv/send (splice while a direction moves
// bulk) until the socket is drained or the peer's buffer is full. An idle
// relay holds its two sockets and a small struct: no goroutine, no buffer,
// no pipe.
//
// Each shard is one epoll fd plus one goroutine. The goroutine parks in Go's
// own netpoller on the epoll fd (an epoll fd is pollable), so no OS thread
// blocks in epoll_wait and the scheduler sees it like any network wait. It
// exits when its shard has no relay (goleak), and starts again with the
// next one. Timeouts are checked by a scan of the shard's relays every
// scanGap (at most 1 s, less for routes with short timeouts): they fire up
// to one gap late, never early.
//
// The sockets stay owned by their *net.TCPConn: every syscall on them runs
// inside RawConn.Control, so a Close from elsewhere (balancer's
// CloseConnections) cannot hand the fd number to another socket under us;
// the next scan sees the closed conn and ends the relay, as the goroutine
// engine does. Go's netpoller keeps its own registration of the sockets; no
// goroutine waits on it, so its events cost a no-op.
//
// A relay whose backend has an Owner (Options.Owner: the lease) keeps them
// so only until it has been idle for shedIdle: then it sheds Go's state of
// its backend socket, and of its client socket too if the caller gave it up
// (Options.ShedClient: the l4 path), about 0.5 KiB per socket, and works on
// descriptors of its own there; the owner ends it through Kill where it
// would have closed the backend's conn.
//
// StartSockets' backend (balancer's raw dial, the l4 path's) never had a
// *net.TCPConn: the relay owns its descriptor from the start, asks the
// owner to Detach at once, and sets the socket's deferred options itself
// (Options.BackendOptions) at the first scan after optionsDelay. WaitFD
// parks a dialling goroutine on a socket's readiness through the same
// epoll sets (wait_linux.go).

const (
	epollEvents = 128 // events taken per epoll_wait
	// turnBytes is what one direction moves per turn before the shard's
	// other relays get theirs: a bulk transfer must not hold up the small
	// messages of the players sharing its shard (the goroutine engine has
	// the Go scheduler for that). ≈0.1-0.3 ms of splice on loopback.
	turnBytes  = 256 << 10
	maxScanGap = time.Second
	minScanGap = 5 * time.Millisecond
)

// epoch is the monotonic base of the engine's times (nanoseconds since).
var epoch = time.Now()

func monoNow() int64 { return int64(time.Since(epoch)) }

type shard struct {
	mu      sync.Mutex
	epfd    int
	file    *os.File // epfd, registered with Go's netpoller
	raw     syscall.RawConn
	pollFn  func(fd uintptr) bool
	running bool // the shard goroutine is running (or about to)

	slots []*erelay // indexed by the epoll data; nil when free
	gens  []int32   // generation of each slot, bumped when freed
	free  []int32
	live  int // relays and waiters: the goroutine runs while there are any

	// WaitFD's waiters, by the epoll data of their events (whose Pad is
	// the bitwise complement of the generation: negative, where a relay's
	// is not).
	waits     []*fdWait
	waitGens  []int32
	waitsFree []int32

	now      int64 // time of the batch being handled
	gap      int64 // scan period
	nextScan int64
	events   [epollEvents]unix.EpollEvent

	// The relay being worked on and what to do with it: the Control
	// callbacks are the shard's, made once, not two closures per relay.
	cur        *erelay
	op         erelayOp
	evSide     side
	evMask     uint32
	ctlErr     error
	ctlFns     [2]func(fd uintptr)
	endReason  Reason // set by finish, read by the cleanup that follows it
	endErr     error
	drainWatch map[<-chan struct{}]*drainWatch

	// Directions that used up their turn with more to move, for the next
	// round (edge-triggered: no new event would come for what is queued).
	again, spare []turn
}

// turnsQueued counts turns pump queued (tests).
var turnsQueued atomic.Int64

type turn struct {
	slot, gen int32
	side      side
}

// drainWatch is one context.AfterFunc per shard and drain context (the
// server's, shared by every relay), instead of one per relay: ≈170 B and
// a registration on the parent context less per connection.
type drainWatch struct {
	stop func() bool
	n    int // live relays of the shard under this context
}

var (
	shardsOnce sync.Once
	shards     []*shard
	shardsErr  error
	nextShard  atomic.Uint32
)

// getShards makes the shards once: GOMAXPROCS of them.
func getShards() ([]*shard, error) {
	shardsOnce.Do(func() {
		n := max(1, runtime.GOMAXPROCS(0))
		for range n {
			s, err := newShard()
			if err != nil {
				shardsErr = err
				return
			}
			shards = append(shards, s)
		}
	})
	return shards, shardsErr
}

func newShard() (*shard, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	// A nonblocking fd: os.NewFile registers it with the netpoller.
	f := os.NewFile(uintptr(fd), "sluice-epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &shard{epfd: fd, file: f, raw: raw, gap: int64(maxScanGap), drainWatch: map[<-chan struct{}]*drainWatch{}}
	s.pollFn = s.poll
	s.ctlFns[sideClient], s.ctlFns[sideBackend] = s.ctlClient, s.ctlBackend
	return s, nil
}

// kick wakes the shard goroutine out of its wait (mu held).
func (s *shard) kick() { _ = s.file.SetReadDeadline(time.Unix(1, 0)) }

// loop is the shard goroutine.
func (s *shard) loop() {
	for {
		s.mu.Lock()
		if s.live == 0 {
			s.running = false
			s.mu.Unlock()
			return
		}
		_ = s.file.SetReadDeadline(epoch.Add(time.Duration(s.nextScan)))
		s.mu.Unlock()
		// Returns on the scan deadline, a kick, or when the shard emptied.
		_ = s.raw.Read(s.pollFn)
		s.mu.Lock()
		s.now = monoNow()
		if s.now >= s.nextScan {
			s.scan()
		}
		s.mu.Unlock()
	}
}

// epollWait0 is a non-blocking epoll_wait (no P handoff for a syscall that
// cannot block).
func epollWait0(epfd int, ev []unix.EpollEvent) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&ev[0])),
		uintptr(len(ev)), 0, 0, 0)
	return int(n), errno
}

// poll is the RawConn.Read callback on the epoll fd: it handles every ready
// event, and returns false (park) once epoll_wait returned less than a full
// batch and no direction waits for another turn: the set was empty then,
// and any later event wakes the netpoller. mu is taken per round, so that
// Start is never held up by a busy shard for long.
func (s *shard) poll(fd uintptr) bool {
	for {
		s.mu.Lock()
		n, errno := epollWait0(int(fd), s.events[:])
		if errno == unix.EINTR {
			s.mu.Unlock()
			continue
		}
		if errno != 0 {
			s.mu.Unlock()
			return true // cannot happen; the loop scans and comes back
		}
		s.now = monoNow()
		for i := range n {
			s.handle(&s.events[i])
		}
		if len(s.again) > 0 {
			s.turns()
		}
		if s.now >= s.nextScan {
			s.scan()
		}
		empty, more := s.live == 0, n == len(s.events) || len(s.again) > 0
		s.mu.Unlock()
		if empty {
			return true
		}
		if !more {
			return false
		}
	}
}

// turns gives the directions queued by pump their next turn (mu held).
func (s *shard) turns() {
	work := s.again
	s.again = s.spare[:0]
	for _, t := range work {
		r := s.slots[t.slot]
		if r == nil || s.gens[t.slot] != t.gen || r.ended {
			continue
		}
		r.dirs[t.side].queued = false
		s.op, s.evSide = opTurn, t.side
		r.withFds()
		if r.ended {
			r.cleanup()
		}
	}
	s.spare = work[:0]
}

// handle runs one event (mu held).
func (s *shard) handle(ev *unix.EpollEvent) {
	if ev.Pad < 0 {
		s.wake(ev)
		return
	}
	i := int(ev.Fd)
	if i < 0 || i >= len(s.slots) {
		return
	}
	r := s.slots[i]
	if r == nil || s.gens[i] != ev.Pad>>1 || r.ended {
		return // an event of a relay that ended in this batch
	}
	s.op, s.evSide, s.evMask = opEvent, side(ev.Pad&1), ev.Events
	r.withFds()
	if r.ended {
		r.cleanup()
	}
}

// scan checks every relay's timeouts (mu held).
func (s *shard) scan() {
	for _, r := range s.slots {
		if r == nil || r.ended {
			continue
		}
		if r.killed.Load() {
			r.finish(ReasonError, errKilled, -1)
			r.cleanup()
			continue
		}
		s.op = opScan
		r.withFds()
		if r.ended {
			r.cleanup()
			continue
		}
		if r.optsAt != 0 && s.now >= r.optsAt {
			// StartSockets' backend lived optionsDelay: its keepalive and
			// TCP_USER_TIMEOUT, as balancer sets them on a conn's.
			r.optsAt = 0
			_ = r.setOpts(int(r.fds[sideBackend]))
		}
		if r.owner != nil && s.now-r.lastActivity >= int64(shedIdle) {
			r.shed()
		}
	}
	s.nextScan = s.now + s.gap
}

// shedIdle is how long a relay with an Owner is idle before it sheds Go's
// state of its sockets. An idle player is what that memory is for; a short
// connection does not pay the extra syscalls (a dup and a close per socket).
var shedIdle = time.Second

// errKilled is a relay's error when its owner closed the backend (Kill),
// the error a closed *net.TCPConn gives before shed.
var errKilled = &net.OpError{Op: "raw-control", Net: "tcp", Err: net.ErrClosed}

// shed replaces the relay's backend *net.TCPConn, and its client one if
// shedClient (never a terminated client's: crypto/tls works on it), by
// descriptors of its own: a dup of each, then Go's conn closed, which frees
// its netFD, its addresses and the netpoller's pollDesc (≈0.5 KiB a
// socket, half of it outside the heap). The relay's epoll registration
// outlives the descriptor number it was made with: it is the socket's, and
// its data names the slot. Go's close removes Go's own registration.
// Called by scan, with s.mu held and outside Control; on any failure the
// relay stays as it was.
func (r *erelay) shed() {
	first := sideBackend
	if r.shedClient && r.tc == nil {
		first = sideClient
	}
	if r.det[first] && r.det[sideBackend] {
		r.owner = nil // nothing left to shed (StartSockets' backend, no client to shed)
		return
	}
	fds := [2]int{-1, -1}
	undo := func() {
		for _, fd := range fds {
			if fd >= 0 {
				closeFD(fd)
			}
		}
	}
	for i := first; i <= sideBackend; i++ {
		if r.det[i] {
			continue // StartSockets' backend: a descriptor of its own from the start
		}
		var derr error
		err := r.raws[i].Control(func(fd uintptr) {
			fds[i], derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		})
		if err == nil {
			err = derr
		}
		if err != nil {
			fds[i] = -1
			undo()
			return
		}
	}
	if !r.owner.Detach(r) {
		undo()
		return
	}
	for i := first; i <= sideBackend; i++ {
		if r.conns[i] == nil {
			continue
		}
		_ = r.conns[i].Close()
		r.conns[i], r.raws[i] = nil, nil
		r.fds[i], r.det[i] = int32(fds[i]), true
	}
	r.owner = nil
	shedCount.Add(1)
}

// shedAtStart sheds a relay with an Owner as soon as it starts (tests: the
// relay suite runs detached from its first byte).
var shedAtStart bool

// shedCount counts sheds: Sheds.
var shedCount atomic.Int64

// Sheds returns how many relays have shed Go's state of their sockets
// since the process started.
func Sheds() int64 { return shedCount.Load() }

// rawStarts counts relays started with both sides as descriptors: RawStarts.
var rawStarts atomic.Int64

// RawStarts returns how many relays started with both sides as
// descriptors of their own (the l4 path's raw accept and raw dial): they
// never held Go's socket state, so they have none to shed.
func RawStarts() int64 { return rawStarts.Load() }

// Kill is Killer's, for the relay's owner after shed: the relay ends at
// the next scan, as it would see a closed conn.
func (r *erelay) Kill() { r.killed.Store(true) }

type erelayOp uint8

const (
	opRegister erelayOp = iota
	opEvent
	opScan
	opTurn
)

// edir is one direction of an epoll relay: src → dst. Fields are sized
// and ordered for a small idle relay.
type edir struct {
	buf          *[]byte // held only while data is in flight
	p            *pipe   // held only while data is in flight
	bytes        int64
	spliced      int64
	stallFrom    int64 // since when a blocked write made no progress
	lastProgress int64
	src, dst     int32 // fds, valid inside withFds
	off, n       int32 // buf[off:n] is still to be sent
	inPipe       int32
	chunk        int32 // size of the chunk in flight
	fallbacks    int32

	srcSide, dstSide side
	path             Path
	bulk             bool
	over             bool // src ended (FIN relayed) or the relay ended
	hup              bool // src reported RDHUP/HUP/ERR: read it to the end
	rdhup            bool // src reported its FIN (RDHUP) without an error
	finNext          bool // the chunk in flight is src's last: its FIN follows
	blocked          bool // dst is full: the rest waits for EPOLLOUT
	queued           bool // on the shard's again list
	viaBuf           bool // the chunk in flight is in buf, not in the pipe
	tlsSrc, tlsDst   bool // src / dst is the relay's *tls.Conn (no splice)
	finQueued        bool // dst's FIN waits behind bytes its NBIO queued
}

// erelay is one relay of the epoll engine. Every field is guarded by its
// shard's mu.
type erelay struct {
	s     *shard
	conns [2]*net.TCPConn // by side: the sockets
	raws  [2]syscall.RawConn
	// A terminated client (l7's wss:// tunnel): the *tls.Conn on
	// conns[sideClient], driven through nb while the relay's fds are held.
	// Both nil for raw TCP.
	tc    *tls.Conn
	nb    *NBIO
	drain <-chan struct{} // the drain context's Done; nil if none
	done  func(Stats)

	idle, halfClose, stall int64 // the timeouts; halfClose is min(idle, half-close)
	lastActivity           int64
	finAt                  int64 // when the first direction ended with a FIN; 0 if none

	dirs    [2]edir // by src side: [sideClient] is client→backend
	slot    int32
	eofs    uint8
	finSent [2]bool // FIN sent to the side
	ended   bool

	// After shed: the relay's own descriptors, by side (det); conns and
	// raws are nil there.
	owner      Owner
	fds        [2]int32
	det        [2]bool
	shedClient bool // Options.ShedClient
	// StartSockets: the backend's deferred socket options (Options.BackendOptions),
	// set by the first scan from optsAt on; optsAt is 0 once they are.
	setOpts func(fd int) error
	optsAt  int64
	killed  atomic.Bool // Kill: the owner closed the backend
	// Both sides ended while bytes for the client (close_notify at
	// least) still wait in nb: flushTLS ends the relay once they are out.
	endQueued bool
}

// startEpoll starts a relay on the epoll engine and reports whether it did;
// false (nothing changed) for anything but a *net.TCPConn backend and a
// *net.TCPConn or drivable *tls.Conn client (tlsClient), or when epoll is
// not available: the caller runs the goroutine engine.
func startEpoll(ctx context.Context, client, backend net.Conn, opts Options, done func(Stats)) bool {
	return startEpollFD(ctx, client, -1, backend, -1, opts, done)
}

// Socket is one side given to StartSockets: Conn, or (Conn nil) FD, the
// descriptor of a connected nonblocking TCP socket that the relay takes
// over (a raw accept's, a raw dial's).
type Socket struct {
	Conn net.Conn
	FD   int
}

// StartSockets is Start with either side a conn or a descriptor the relay
// takes over (the l4 path's client accepted raw, its backend dialled raw),
// always on the epoll engine. It reports whether the relay started; from
// then on the relay owns and closes the descriptors, and with a backend
// descriptor an Owner is asked to Detach at once (the relay ends as killed
// if it refuses: its connection was closed before the relay started).
// false: nothing changed, the caller still owns both (a client the engine
// cannot drive, no epoll).
func StartSockets(ctx context.Context, client, backend Socket, opts Options, done func(Stats)) bool {
	if (client.Conn == nil && client.FD < 0) || (backend.Conn == nil && backend.FD < 0) {
		return false
	}
	cfd, bfd := -1, -1
	if client.Conn == nil {
		cfd = client.FD
	}
	if backend.Conn == nil {
		bfd = backend.FD
	}
	return startEpollFD(ctx, client.Conn, cfd, backend.Conn, bfd, opts, done)
}

// startEpollFD is startEpoll with either side as a conn, or as a
// descriptor of its own (fd >= 0, conn nil).
func startEpollFD(ctx context.Context, client net.Conn, cfd int, backend net.Conn, bfd int, opts Options, done func(Stats)) bool {
	var tc *tls.Conn
	var nb *NBIO
	c, ok := client.(*net.TCPConn)
	if cfd >= 0 {
		ok = true
	} else if !ok {
		tc, nb, c = tlsClient(client)
		ok = c != nil
	}
	b, ok2 := backend.(*net.TCPConn)
	if bfd >= 0 {
		ok2 = true
	}
	if !ok || !ok2 {
		return false
	}
	ss, err := getShards()
	if err != nil {
		return false
	}
	o := opts.withDefaults()
	r := &erelay{conns: [2]*net.TCPConn{c, b}, tc: tc, nb: nb, drain: ctx.Done(), done: done,
		owner: opts.Owner, shedClient: opts.ShedClient,
		idle: int64(o.IdleTimeout), halfClose: int64(min(o.IdleTimeout, o.HalfCloseTimeout)), stall: int64(o.WriteStallTimeout)}
	if cfd >= 0 {
		r.conns[sideClient] = nil
		r.fds[sideClient], r.det[sideClient] = int32(cfd), true
	}
	if bfd >= 0 {
		r.conns[sideBackend] = nil
		r.fds[sideBackend], r.det[sideBackend] = int32(bfd), true
	}
	for i, tc := range r.conns {
		if r.det[i] {
			continue
		}
		raw, err := tc.SyscallConn()
		if err != nil {
			return false
		}
		r.raws[i] = raw
	}
	r.dirs[sideClient] = edir{srcSide: sideClient, dstSide: sideBackend, path: PathBuffer, tlsSrc: tc != nil}
	r.dirs[sideBackend] = edir{srcSide: sideBackend, dstSide: sideClient, path: PathBuffer, tlsDst: tc != nil}
	// The shard a WaitFD left the backend's (or the client's) descriptor
	// in, if any: its registration is re-armed there (register).
	var s *shard
	if bfd >= 0 {
		s = waitReg(bfd, false)
	}
	if s == nil && cfd >= 0 {
		s = waitReg(cfd, false)
	}
	if s == nil {
		s = ss[nextShard.Add(1)%uint32(len(ss))]
	}
	r.s = s

	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = monoNow()
	r.lastActivity = s.now
	r.dirs[0].lastProgress, r.dirs[1].lastProgress = s.now, s.now
	if len(s.free) > 0 {
		r.slot = s.free[len(s.free)-1]
		s.free = s.free[:len(s.free)-1]
		s.slots[r.slot] = r
	} else {
		r.slot = int32(len(s.slots))
		s.slots = append(s.slots, r)
		s.gens = append(s.gens, 0)
	}
	s.op = opRegister
	if err := r.withFds(); err != nil {
		s.freeSlot(r.slot)
		return false
	}
	s.live++
	if bfd >= 0 && opts.BackendOptions != nil {
		r.setOpts, r.optsAt = opts.BackendOptions, s.now+int64(optionsDelay)
	}
	if r.drain != nil {
		// If ctx is done already, the AfterFunc runs at once, on a
		// goroutine that waits for mu and finds this relay.
		w := s.drainWatch[r.drain]
		if w == nil {
			w = &drainWatch{}
			ch := r.drain
			w.stop = context.AfterFunc(ctx, func() { s.drainAll(ch) })
			s.drainWatch[ch] = w
		}
		w.n++
	}
	if r.det[sideClient] && r.det[sideBackend] {
		rawStarts.Add(1)
	}
	if bfd >= 0 && r.owner != nil && !r.owner.Detach(r) {
		// Its connection was closed (CloseConnections) before it started.
		r.finish(ReasonError, errKilled, -1)
		r.cleanup()
		return true
	}
	if shedAtStart && r.owner != nil {
		r.shed()
	}
	if tc != nil {
		// crypto/tls may hold records read before the relay: no event
		// would come for them.
		s.op, s.evSide = opTurn, sideClient
		if r.withFds(); r.ended {
			r.cleanup()
		}
	}
	s.gap = min(s.gap, max(min(r.idle, r.halfClose, r.stall)/8, int64(minScanGap)))
	if !s.run() && s.nextScan > s.now+s.gap {
		s.nextScan = s.now + s.gap
		_ = s.file.SetReadDeadline(epoch.Add(time.Duration(s.nextScan)))
	}
	return true
}

// run starts the shard goroutine if it is not running, and reports whether
// it did (mu held, s.now current).
func (s *shard) run() bool {
	if s.running {
		return false
	}
	s.running = true
	s.nextScan = s.now + s.gap
	go s.loop()
	return true
}

func (s *shard) freeSlot(i int32) {
	s.slots[i] = nil
	s.gens[i] = (s.gens[i] + 1) & (1<<30 - 1)
	s.free = append(s.free, i)
}

// drainAll is the AfterFunc of a drain context (shutdown, a removed
// backend's drain): it ends the shard's relays under it.
func (s *shard) drainAll(ch <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.slots {
		if r != nil && !r.ended && r.drain == ch {
			r.finish(ReasonDrain, nil, -1)
			r.cleanup()
		}
	}
}

// withFds runs s.op on r with both fds held (RawConn.Control on each): a
// Close elsewhere waits for it, and a closed conn ends the relay as an
// error (except while registering: the caller falls back).
func (r *erelay) withFds() error {
	s := r.s
	s.cur, s.ctlErr = r, nil
	var err error
	if r.det[sideClient] {
		s.ctlClient(uintptr(r.fds[sideClient]))
		err = s.ctlErr
	} else if err = r.raws[sideClient].Control(s.ctlFns[sideClient]); err == nil {
		err = s.ctlErr
	}
	s.cur = nil
	if err != nil && s.op != opRegister {
		r.finish(ReasonError, err, -1)
	}
	return err
}

func (s *shard) ctlClient(fd uintptr) {
	r := s.cur
	r.dirs[sideClient].src, r.dirs[sideBackend].dst = int32(fd), int32(fd)
	if r.nb != nil {
		r.nb.fd, r.nb.on = int32(fd), true
	}
	if r.det[sideBackend] {
		s.ctlBackend(uintptr(r.fds[sideBackend]))
	} else {
		s.ctlErr = r.raws[sideBackend].Control(s.ctlFns[sideBackend])
	}
	if r.nb != nil {
		r.nb.on = false
	}
}

func (s *shard) ctlBackend(fd uintptr) {
	r := s.cur
	r.dirs[sideBackend].src, r.dirs[sideClient].dst = int32(fd), int32(fd)
	switch s.op {
	case opRegister:
		s.ctlErr = r.register()
	case opEvent:
		r.event()
	case opScan:
		r.checkTimeouts()
	case opTurn:
		if d := &r.dirs[s.evSide]; !d.blocked {
			r.pump(d)
		}
	}
}

// register adds both sockets to the shard's epoll set, edge-triggered, for
// input and output at once: no epoll_ctl per message. Whatever is already
// queued raises the first event. A descriptor a WaitFD left in this set
// (waitRegs) is re-armed with MOD.
func (r *erelay) register() error {
	s := r.s
	var fds [2]int
	fds[sideClient], fds[sideBackend] = int(r.dirs[sideClient].src), int(r.dirs[sideBackend].src)
	for i, fd := range fds {
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
			Fd:     r.slot,
			Pad:    s.gens[r.slot]<<1 | int32(i),
		}
		mod := false
		if r.det[i] {
			// A registration left in another shard stays there, disarmed,
			// until the descriptor closes.
			mod = waitReg(fd, true) == s
		}
		if errno := ctlArm(s, fd, mod, &ev); errno != 0 {
			if i == 1 {
				_ = epollCtl(s.epfd, unix.EPOLL_CTL_DEL, fds[0], nil)
			}
			return os.NewSyscallError("epoll_ctl", errno)
		}
	}
	return nil
}

// event handles readiness of side evSide.
func (r *erelay) event() {
	m, x := r.s.evMask, r.s.evSide
	in := &r.dirs[x]    // reads this side
	out := &r.dirs[1-x] // writes this side
	if m&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && out.blocked {
		if r.flush(out) {
			// While blocked the direction let src's input edges pass
			// (below): whatever came then raises none now, so src is
			// read to EAGAIN whatever the size of the chunk just sent.
			r.afterChunk(out)
			r.pump(out)
		}
	}
	if r.ended {
		return
	}
	if m&(unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		in.hup = true
	}
	if m&(unix.EPOLLRDHUP|unix.EPOLLERR) == unix.EPOLLRDHUP {
		in.rdhup = true
	}
	if m&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) != 0 && !in.blocked {
		r.pump(in)
	}
}

func (r *erelay) progress(d *edir) {
	d.lastProgress = r.s.now
	r.lastActivity = r.s.now
}

// pump moves src→dst until src is drained (a short recv, or EAGAIN), dst is
// full, or the direction ends.
func (r *erelay) pump(d *edir) {
	moved := 0
	for !r.ended && !d.over && !d.blocked {
		var ok bool
		if d.bulk {
			ok = r.spliceIn(d)
		} else {
			ok = r.recvIn(d)
		}
		if !ok || !r.flush(d) {
			return
		}
		moved += int(d.chunk)
		if !r.afterChunk(d) {
			return
		}
		if moved >= turnBytes {
			// More may be queued: a turn for the shard's others first.
			if !d.queued {
				d.queued = true
				turnsQueued.Add(1)
				s := r.s
				s.again = append(s.again, turn{r.slot, s.gens[r.slot], d.srcSide})
			}
			return
		}
	}
}

// afterChunk runs when a chunk is all sent; it switches between recv/send
// and splice (HAProxy splice-auto style, as the goroutine engine) and
// reports whether src may hold more.
func (r *erelay) afterChunk(d *edir) bool {
	if d.tlsSrc || d.tlsDst {
		// No splice through crypto/tls. A short Read of a *tls.Conn does
		// not prove its socket drained (it reads ahead): read on to
		// ErrWouldBlock. A short recv from the raw side does.
		if d.tlsSrc || d.chunk == recvBufSize || d.hup {
			return true
		}
		d.putBuf()
		return false
	}
	if d.bulk {
		if d.viaBuf {
			d.putBuf()
		} else if d.chunk < recvBufSize {
			d.bulk = false
			d.releasePipe()
		}
		return true // a short splice does not prove src drained: read to EAGAIN
	}
	if d.chunk == recvBufSize {
		d.bulk, d.path = true, PathSplice
		d.putBuf()
		return true
	}
	if d.hup {
		return true // keep the buffer: read on to the EOF or the error
	}
	// A short recv drained src: with edge triggering, anything arriving
	// later raises a new event.
	d.putBuf()
	return false
}

func (d *edir) putBuf() {
	if d.buf != nil {
		recvPool.Put(d.buf)
		d.buf = nil
		recvBufsOut.Add(-1)
	}
}

func (d *edir) releasePipe() {
	if d.p == nil {
		return
	}
	if d.inPipe > 0 {
		d.p.close()
	} else {
		pipes.put(d.p)
	}
	d.p, d.inPipe = nil, 0
}

// recvIn reads one chunk from src into a buffer taken only now; it reports
// whether it got data.
func (r *erelay) recvIn(d *edir) bool {
	if d.buf == nil {
		d.buf = recvPool.Get().(*[]byte)
		recvBufsOut.Add(1)
	}
	b := *d.buf
	if d.tlsSrc {
		return r.tlsRecv(d, b)
	}
	for {
		n, errno := recvNB(d.src, b, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN:
			d.putBuf()
			return false
		case errno != 0:
			d.putBuf()
			r.readErr(d, os.NewSyscallError("recvfrom", errno))
			return false
		case n == 0:
			d.putBuf()
			r.gotEOF(d)
			return false
		}
		d.off, d.n, d.chunk, d.viaBuf = 0, int32(n), int32(n), true
		// src's FIN is in and a short recv drained what came before it:
		// the next recv is the EOF, whose shutdown (or close) follows this
		// chunk's send at once. Sent with MSG_MORE, the chunk waits in dst's
		// socket for that FIN and leaves in the same segment, as HAProxy's
		// does: one packet less to the peer at the end of most connections.
		d.finNext = d.rdhup && n < len(b)
		r.progress(d)
		return true
	}
}

// spliceIn splices one chunk from src into a pipe taken only now; without a
// pipe (EMFILE/ENFILE) it reads the chunk into a buffer instead.
func (r *erelay) spliceIn(d *edir) bool {
	if d.p == nil {
		p, err := pipes.get()
		if err != nil {
			d.fallbacks++
			return r.recvIn(d)
		}
		d.p = p
	}
	for {
		n, err := unix.Splice(int(d.src), nil, d.p.w, nil, d.p.size, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			d.releasePipe() // empty
			return false
		case err != nil:
			d.releasePipe()
			r.readErr(d, os.NewSyscallError("splice", err))
			return false
		case n == 0:
			d.releasePipe()
			r.gotEOF(d)
			return false
		}
		d.inPipe, d.chunk, d.viaBuf = int32(n), int32(n), false
		r.progress(d)
		return true
	}
}

// flush sends what the direction holds to dst. It reports true when all of
// it went; false when dst is full (the direction waits for EPOLLOUT,
// holding the rest) or the relay ended.
func (r *erelay) flush(d *edir) bool {
	if d.tlsDst {
		return r.flushTLS(d)
	}
	advanced := false
	for d.off < d.n || d.inPipe > 0 {
		var n int
		var errno error
		op := "sendto"
		if d.off < d.n {
			b := *d.buf
			var flags uintptr
			if d.finNext {
				flags = unix.MSG_MORE
			}
			k, e := sendNBFlags(d.dst, b[d.off:d.n], flags)
			n = k
			if e != 0 {
				n, errno = 0, e
			}
			if n > 0 {
				d.off += int32(n)
			}
		} else {
			op = "splice"
			k, e := unix.Splice(d.p.r, nil, int(d.dst), nil, int(d.inPipe), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			n = int(k)
			if e != nil {
				n, errno = 0, e
			}
			if n > 0 {
				d.inPipe -= int32(n)
				d.spliced += int64(n)
			}
		}
		if n > 0 {
			d.bytes += int64(n)
			advanced = true
			continue
		}
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if !d.blocked || advanced {
				d.stallFrom = r.s.now
			}
			d.blocked = true
			return false
		case nil:
			errno = syscall.EIO // a zero-byte send: cannot happen on a stream socket
		}
		d.putBuf()
		d.releasePipe()
		r.writeErr(d, os.NewSyscallError(op, errno))
		return false
	}
	d.blocked = false
	d.off, d.n = 0, 0
	if advanced {
		r.progress(d)
	}
	return true
}

// gotEOF relays a FIN from src as a shutdown(SHUT_WR) of dst; the other
// direction goes on under the half-close limit.
func (r *erelay) gotEOF(d *edir) {
	d.over = true
	r.finSent[d.dstSide] = true
	r.eofs++
	if d.tlsDst {
		// close_notify first, as the goroutine engine's CloseWrite.
		_ = r.tc.CloseWrite()
		r.noteQueued()
		if r.nb.pending() > 0 && r.eofs == 1 {
			d.finQueued = true // flushTLS sends the FIN after it
			r.finAt = max(r.s.now, 1)
			return
		}
	}
	if r.eofs == 2 && r.nb != nil && r.nb.pending() > 0 {
		// The client's close_notify (or more) is still queued: the
		// close waits for it (flushTLS), within write_stall_timeout.
		r.endQueued = true
		return
	}
	if r.eofs == 2 {
		// Both sides sent their FIN and were read to the end: the close
		// that follows sends dst's FIN (no unread data, so no RST); a
		// shutdown first would be one more syscall for the same packet.
		r.finish(ReasonEOF, nil, -1)
		return
	}
	shutdownWrite(d.dst)
	if r.finAt == 0 {
		r.finAt = max(r.s.now, 1)
	}
}

// readErr ends the relay after an error reading src: a reset from src's
// side, passed on to dst unless dst already got our FIN.
func (r *erelay) readErr(d *edir, err error) {
	reason := resetReason(d.srcSide, err)
	rst := -1
	if reason != ReasonError && !r.finSent[d.dstSide] {
		rst = int(d.dstSide)
	}
	r.finish(reason, err, rst)
}

// writeErr ends the relay after an error writing dst (EPIPE, ECONNRESET):
// a reset from dst's side, passed on to src unless src already got our FIN
// (Envoy #45190).
func (r *erelay) writeErr(d *edir, err error) {
	reason := resetReason(d.dstSide, err)
	rst := -1
	if reason != ReasonError && !r.finSent[d.srcSide] {
		rst = int(d.srcSide)
	}
	r.finish(reason, err, rst)
}

// finish records the first cause and resets side rst (SO_LINGER 0) if it is
// not -1. cleanup closes, outside any Control.
func (r *erelay) finish(reason Reason, err error, rst int) {
	if r.ended {
		return
	}
	r.ended = true
	r.s.endReason, r.s.endErr = reason, err
	switch {
	case rst < 0:
	case r.det[rst]:
		setLingerZero(r.fds[rst])
	default:
		_ = r.conns[rst].SetLinger(0)
	}
}

// srcPending reports whether fd has bytes waiting.
func srcPending(fd int32) bool {
	var b [1]byte
	n, errno := recvNB(fd, b[:], unix.MSG_PEEK)
	return errno == 0 && n > 0
}

// checkTimeouts ends the relay on write stall, half-close or idle timeout,
// with the goroutine engine's rules.
func (r *erelay) checkTimeouts() {
	now := r.s.now
	for i := range r.dirs {
		d := &r.dirs[i]
		if d.blocked && now-d.stallFrom >= r.stall {
			r.finish(ReasonWriteStall, nil, -1)
			return
		}
	}
	var buf [2]*edir
	open := buf[:0]
	for i := range r.dirs {
		if d := &r.dirs[i]; !d.over {
			open = append(open, d)
		}
	}
	for _, d := range open {
		if d.blocked {
			return // inside a write: not quiet; a stuck write is the stall's business
		}
	}
	reason, deadline := ReasonIdleTimeout, r.lastActivity+r.idle
	if r.finAt != 0 && len(open) == 1 {
		reason = ReasonHalfCloseTimeout
		deadline = max(r.finAt, open[0].lastProgress) + r.halfClose
	}
	if now < deadline {
		return
	}
	for _, d := range open {
		if srcPending(d.src) {
			// Data raced the deadline (or an edge was missed): move it,
			// it is not quiet.
			r.pump(d)
			return
		}
	}
	r.finish(reason, nil, -1)
}

// cleanup ends a finished relay (mu held, no Control): releases what it
// holds, closes both conns (which also takes them out of the epoll set) and
// hands the Stats to done on a goroutine of its own, so that a slow done
// never holds up the shard.
func (r *erelay) cleanup() {
	s := r.s
	for i := range r.dirs {
		d := &r.dirs[i]
		d.over = true
		d.putBuf()
		d.releasePipe()
	}
	if r.nb != nil {
		r.nb.releaseOut()
	}
	s.freeSlot(r.slot)
	s.live--
	if r.drain != nil {
		if w := s.drainWatch[r.drain]; w != nil {
			if w.n--; w.n == 0 {
				w.stop()
				delete(s.drainWatch, r.drain)
			}
		}
	}
	for i, c := range r.conns {
		if r.det[i] {
			closeFD(int(r.fds[i]))
		} else {
			closeNow(c)
		}
	}
	in, out := &r.dirs[sideClient], &r.dirs[sideBackend]
	st := Stats{
		BytesIn:         in.bytes,
		BytesOut:        out.bytes,
		PathIn:          in.path,
		PathOut:         out.path,
		SplicedIn:       in.spliced,
		SplicedOut:      out.spliced,
		SpliceFallbacks: int(in.fallbacks + out.fallbacks),
		Reason:          s.endReason,
		Err:             s.endErr,
	}
	s.endReason, s.endErr = "", nil
	go r.done(st)
	if s.live == 0 {
		s.kick()
	}
}

// tlsClient returns the parts of a client the engine can drive: a *tls.Conn
// whose handshake is done, over a NonblockingTransport over a *net.TCPConn.
// c is nil when client is not that.
func tlsClient(client net.Conn) (tc *tls.Conn, nb *NBIO, c *net.TCPConn) {
	tc, ok := client.(*tls.Conn)
	if !ok || !tc.ConnectionState().HandshakeComplete {
		return nil, nil, nil
	}
	t, ok := tc.NetConn().(NonblockingTransport)
	if !ok {
		return nil, nil, nil
	}
	raw, ok := innermost(client).(*net.TCPConn)
	if nb = t.Nonblocking(); nb == nil || !ok {
		return nil, nil, nil
	}
	return tc, nb, raw
}

// tlsRecv reads the *tls.Conn into b (the direction's buffer): one record's
// plaintext at most. It reports whether it got data.
func (r *erelay) tlsRecv(d *edir, b []byte) bool {
	n, err := r.tc.Read(b)
	r.noteQueued() // an alert or a KeyUpdate answer the socket did not take
	if n > 0 {
		// A (n, err) pair: the data first; a sticky err comes back on
		// the next Read (crypto/tls keeps EOF and failures).
		d.off, d.n, d.chunk, d.viaBuf = 0, int32(n), int32(n), true
		r.progress(d)
		return true
	}
	d.putBuf()
	switch {
	case errors.Is(err, ErrWouldBlock):
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		r.gotEOF(d) // ErrUnexpectedEOF: a FIN mid-record, a FIN all the same
	case err != nil:
		r.readErr(d, err)
	}
	return false
}

// noteQueued: when the *tls.Conn's socket holds back bytes, the direction
// writing the client waits for EPOLLOUT to send them, as for its own.
func (r *erelay) noteQueued() {
	if d := &r.dirs[sideBackend]; r.nb.pending() > 0 && !d.blocked {
		d.blocked, d.stallFrom = true, r.s.now
	}
}

// flushTLS is flush for a *tls.Conn dst: what the NBIO queued goes first,
// then the direction's chunk goes through crypto/tls (which the NBIO takes
// whole). It reports true when all of it reached the socket; false when the
// socket is full (blocked, as flush) or the relay ended.
func (r *erelay) flushTLS(d *edir) bool {
	nb := r.nb
	sent0 := nb.sent
	for {
		if err := nb.flushOut(); err != nil {
			d.putBuf()
			nb.releaseOut()
			r.writeErr(d, err)
			return false
		}
		if nb.pending() > 0 {
			if !d.blocked || nb.sent != sent0 {
				d.stallFrom = r.s.now
			}
			d.blocked = true
			return false
		}
		if d.off >= d.n {
			break
		}
		b := *d.buf
		k, err := r.tc.Write(b[d.off:d.n])
		d.off += int32(k)
		d.bytes += int64(k)
		if err != nil {
			d.putBuf()
			nb.releaseOut()
			r.writeErr(d, err)
			return false
		}
	}
	d.blocked = false
	d.off, d.n = 0, 0
	if nb.sent != sent0 {
		r.progress(d)
	}
	if d.finQueued {
		d.finQueued = false
		shutdownWrite(d.dst)
	}
	if r.endQueued {
		r.finish(ReasonEOF, nil, -1)
	}
	return true
}
