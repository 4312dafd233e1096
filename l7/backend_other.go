//go:build !unix

package l7

import "net"

// peekIdle cannot look without reading here: a closed conn is found when
// it fails (a replayable request is then sent again on a new conn).
func peekIdle(*net.TCPConn) bool { return true }

// writeThenRead writes held, the end of a request, then reads the answer.
func writeThenRead(bc *backendConn, held, p []byte) (int, error) {
	if _, err := bc.c.Write(held); err != nil {
		bc.werr = err
	}
	return bc.c.Read(p)
}
