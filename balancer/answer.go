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

// awaitAnswer waits until c has a byte to read (without consuming it), the
// peer closes or resets, deadline passes, or ctx ends. It returns nil when a
// byte is there or the deadline passed (a slow backend is not a failed one),
// an error wrapping ErrNoAnswer when the peer closed or reset first, and
// ctx's error when ctx ended.
func awaitAnswer(ctx context.Context, c *net.TCPConn, deadline time.Time) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	err := peekByte(c)
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
