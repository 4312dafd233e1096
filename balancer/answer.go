package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// ErrNoAnswer wraps the failure of a backend that closed or reset the
// connection after accepting it and before sending a byte.
var ErrNoAnswer = errors.New("backend closed before answering")

// awaitAnswer writes payload to c (a connection fresh from connect), then
// waits until c has a byte to read (without consuming it), the peer closes
// or resets, deadline passes, or ctx ends. It returns nil when a byte is
// there or the deadline passed (a slow backend is not a failed one), the
// write's error as attemptWith reports it, an error wrapping ErrNoAnswer
// when the peer closed or reset first, and ctx's error when ctx ended.
//
// The payload goes out inside the wait (sendPeek): after the poller's read
// readiness is reset and before it is awaited, so the answer cannot be
// missed, and the first look at the socket comes after the poller saw the
// answer. Peeking right after a Write costs a recvfrom that is nearly always
// EAGAIN: the backend cannot have answered yet on a real network, nor on
// loopback under load (issue 11: 0.8 of the 1.8 peeks per L4 connection at
// 16 concurrent connections). What one send does not take (a full socket
// buffer) is written under writeDeadline, as attemptWith writes, and then
// peeked. A backend that speaks before it is spoken to (no TLS or HTTP
// server does: AwaitAnswer is for those) may have its first bytes seen by
// the poller before the wait starts (1 dial in 100 on loopback): the wait
// then ends at its next bytes, its close, or the deadline, which returns
// the connection as it is, as before, only later.
func awaitAnswer(ctx context.Context, c *net.TCPConn, payload []byte, writeDeadline, deadline time.Time) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	sent, werr, err := sendPeek(c, payload)
	if werr != nil {
		return fmt.Errorf("write proxy header and prefix: %w", &net.OpError{
			Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", werr)})
	}
	if sent < len(payload) && ctx.Err() == nil {
		if err := writePayload(c, payload[sent:], writeDeadline); err != nil {
			return err
		}
		_, _, err = sendPeek(c, nil)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = nil
	case err == io.EOF:
		return fmt.Errorf("%w: EOF", ErrNoAnswer)
	default:
		return fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	return nil
}
