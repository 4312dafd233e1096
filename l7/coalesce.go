package l7

import (
	"net"
	"sync"

	"sluice/l4"
	"sluice/tlsutil"
)

// recordWriter sits between a *tls.Conn and its socket. crypto/tls writes
// each record of a Write with its own write(2) (crypto/tls conn.go,
// writeRecordLocked), and a response body is several records: a 16 KiB
// maximum, and smaller ones early in a connection (dynamic record sizing).
// While vconn.Write holds it open (collect, then flush), the records are
// collected and written with one syscall: issue 10's http-static bench, a
// 20 KiB file, went from 3 writes per response to 2. A static response is
// collected whole (vconn.hold), up to maxHeld bytes: 1 write.
//
// Every write of the *tls.Conn goes through here, those of other goroutines
// included (an alert sent by a read, close_notify): they take mu, so bytes
// reach the socket in the order crypto/tls produced them.
//
// Once a wss:// tunnel runs, the epoll relay drives the *tls.Conn through
// nb (l4.NonblockingTransport): no goroutine and no buffer while idle.
type recordWriter struct {
	net.Conn // tlsutil.PrefixConn over the *net.TCPConn

	mu  sync.Mutex
	buf *[]byte // collecting when non-nil

	// waitFor, when set by the reader (vconn.fill), makes the next Read
	// wait until that socket is readable before it reads: no read(2) that
	// finds nothing. Only the reading goroutine touches it.
	waitFor *net.TCPConn

	nb l4.NBIO // on only while the epoll relay works on the tunnel

	// sock, if set, reads and writes the socket under Conn once no prefix
	// is left (rawio_linux.go).
	sock sockIO
}

// sockIO is a socket's Read and Write without the scheduler's syscall
// bookkeeping (rawio_linux.go).
type sockIO interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}

// conn is what Writes go to: the socket's raw calls if set, else Conn.
func (w *recordWriter) conn() interface{ Write([]byte) (int, error) } {
	if w.sock != nil {
		return w.sock
	}
	return w.Conn
}

var _ l4.NonblockingTransport = (*recordWriter)(nil)

// Nonblocking gives the relay the NBIO, unless bytes wait above the socket
// (a prefix the handshake left unread), a collection is on (its writes
// would stay in the buffer) or a wait is set.
func (w *recordWriter) Nonblocking() *l4.NBIO {
	if p, ok := w.Conn.(*tlsutil.PrefixConn); ok && p.Buffered() > 0 {
		return nil
	}
	w.mu.Lock()
	collecting := w.buf != nil
	w.mu.Unlock()
	if w.waitFor != nil || collecting {
		return nil
	}
	return &w.nb
}

// Read reads from the conn, after waitFor's wait if set.
func (w *recordWriter) Read(p []byte) (int, error) {
	if w.nb.On() {
		return w.nb.Read(p)
	}
	if c := w.waitFor; c != nil {
		w.waitFor = nil // once: crypto/tls may Read again for the rest of a record
		if err := waitReadable(c); err != nil {
			return 0, err
		}
	}
	if w.sock != nil {
		if pc, ok := w.Conn.(*tlsutil.PrefixConn); !ok || pc.Buffered() == 0 {
			return w.sock.Read(p)
		}
	}
	return w.Conn.Read(p)
}

// minCollect and maxCollect bound the Writes worth collecting: up to
// minCollect bytes always fit in one record; past maxCollect the buffer
// would cost more memory than the syscalls it saves.
const (
	minCollect = 1 << 10
	maxCollect = 64 << 10
	maxHeld    = 64 << 10
)

var recordBufs = sync.Pool{New: func() any { b := make([]byte, 0, 32<<10); return &b }}

// NetConn returns the conn under it, so that unwrapping reaches the socket.
func (w *recordWriter) NetConn() net.Conn { return w.Conn }

func (w *recordWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf != nil {
		*w.buf = append(*w.buf, p...)
		return len(p), nil
	}
	if w.nb.On() {
		return w.nb.Write(p)
	}
	return w.conn().Write(p)
}

// collect starts collecting the records of a Write of n bytes; it reports
// whether it did (then flush must follow).
func (w *recordWriter) collect(n int) bool {
	if n <= minCollect || n > maxCollect {
		return false
	}
	w.start()
	return true
}

// start collects from now on, if not yet.
func (w *recordWriter) start() {
	w.mu.Lock()
	if w.buf == nil {
		w.buf = recordBufs.Get().(*[]byte)
	}
	w.mu.Unlock()
}

// collected returns how many bytes wait for flush.
func (w *recordWriter) collected() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf == nil {
		return 0
	}
	return len(*w.buf)
}

// flush writes what was collected and stops collecting; without a
// collection it does nothing.
func (w *recordWriter) flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := w.buf
	if b == nil {
		return nil
	}
	w.buf = nil
	var err error
	if len(*b) > 0 {
		_, err = w.conn().Write(*b)
	}
	putRecordBuf(b)
	return err
}

// putRecordBuf returns a buffer to recordBufs, unless it grew too large to
// keep.
func putRecordBuf(b *[]byte) {
	if cap(*b) <= 2*maxHeld {
		*b = (*b)[:0]
		recordBufs.Put(b)
	}
}
