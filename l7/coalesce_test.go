package l7

import (
	"bytes"
	"net"
	"testing"

	"sluice/tlsutil"
)

// countConn records the writes that reach it.
type countConn struct {
	net.Conn
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

// The records of a collected Write leave in one write, in order; small and
// huge Writes, and writes outside a collection, pass straight through.
func TestRecordWriter(t *testing.T) {
	cc := &countConn{}
	w := &recordWriter{Conn: cc}
	if w.collect(minCollect) || w.collect(maxCollect+1) {
		t.Fatal("collected a Write that fits one record, or a huge one")
	}
	w.Write([]byte("alert"))
	if !w.collect(20 << 10) {
		t.Fatal("did not collect a 20 KiB Write")
	}
	for _, r := range []string{"rec1", "rec2", "rec3"} {
		if n, err := w.Write([]byte(r)); n != 4 || err != nil {
			t.Fatalf("Write: %d %v", n, err)
		}
	}
	if len(cc.writes) != 1 {
		t.Fatalf("%d writes before flush", len(cc.writes))
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("close_notify"))
	want := [][]byte{[]byte("alert"), []byte("rec1rec2rec3"), []byte("close_notify")}
	if len(cc.writes) != len(want) {
		t.Fatalf("writes %q", cc.writes)
	}
	for i := range want {
		if !bytes.Equal(cc.writes[i], want[i]) {
			t.Fatalf("writes %q, want %q", cc.writes, want)
		}
	}
	if w.NetConn() != cc {
		t.Fatal("NetConn does not unwrap")
	}
}

// A held collection spans Writes until flush; flush without one is a no-op.
func TestRecordWriterHeld(t *testing.T) {
	cc := &countConn{}
	w := &recordWriter{Conn: cc}
	if err := w.flush(); err != nil || len(cc.writes) != 0 {
		t.Fatalf("flush without a collection: %v, %d writes", err, len(cc.writes))
	}
	w.start()
	w.Write([]byte("head"))
	w.start() // already collecting: kept
	w.Write([]byte("body"))
	if n := w.collected(); n != 8 || len(cc.writes) != 0 {
		t.Fatalf("collected %d, %d writes", n, len(cc.writes))
	}
	if err := w.flush(); err != nil || len(cc.writes) != 1 || string(cc.writes[0]) != "headbody" {
		t.Fatalf("flush: %v, writes %q", err, cc.writes)
	}
	if w.collected() != 0 {
		t.Fatal("still collecting after flush")
	}
}

// The epoll relay drives a tunnel's *tls.Conn only when nothing waits
// above the socket: no unread prefix, no collection, no wait set.
func TestRecordWriterNonblocking(t *testing.T) {
	cc := &countConn{}
	w := &recordWriter{Conn: tlsutil.NewPrefixConn(cc, []byte("hello"))}
	if w.Nonblocking() != nil {
		t.Fatal("NBIO given with an unread prefix")
	}
	if _, err := w.Read(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	if w.Nonblocking() == nil {
		t.Fatal("no NBIO once the prefix is read")
	}
	w.start()
	if w.Nonblocking() != nil {
		t.Fatal("NBIO given while collecting")
	}
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	if w.Nonblocking() == nil || w.Nonblocking().On() {
		t.Fatal("after the flush: want an NBIO, off until the relay turns it on")
	}
}
