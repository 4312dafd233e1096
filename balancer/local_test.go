package balancer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

// ClassifyLocal sees through the wrapping a dial adds (net.OpError,
// os.SyscallError, fmt %w) and names only local resource failures.
func TestClassifyLocal(t *testing.T) {
	wrap := func(errno syscall.Errno) error {
		return fmt.Errorf("attempt: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)})
	}
	for _, tc := range []struct {
		name string
		err  error
		want LocalReason
	}{
		{"bind in use", wrap(syscall.EADDRINUSE), LocalAddrInUse},
		{"no source port", wrap(syscall.EADDRNOTAVAIL), LocalNoSourcePort},
		{"emfile", wrap(syscall.EMFILE), LocalFDLimit},
		{"enfile", wrap(syscall.ENFILE), LocalFDLimit},
		{"enobufs", wrap(syscall.ENOBUFS), LocalNoBuffers},
		{"epoll watch limit", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("epoll_ctl", syscall.ENOSPC)}, LocalNoBuffers},
		{"refused is the backend's", wrap(syscall.ECONNREFUSED), NotLocal},
		{"reset is the backend's", wrap(syscall.ECONNRESET), NotLocal},
		{"timeout is the backend's", os.ErrDeadlineExceeded, NotLocal},
		{"nil", nil, NotLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ClassifyLocal(tc.err); got != tc.want {
				t.Fatalf("ClassifyLocal(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	de := &DialError{Pool: "p", Attempts: []AttemptError{
		{Backend: "a", Err: wrap(syscall.EADDRNOTAVAIL), Local: LocalNoSourcePort},
		{Backend: "b", Err: wrap(syscall.EMFILE), Local: LocalFDLimit},
	}}
	if !de.Local() {
		t.Fatal("every attempt local: Local() = false")
	}
	if !errors.Is(de, syscall.EMFILE) {
		t.Fatal("errors.Is does not see the attempt's errno")
	}
	de.Attempts = append(de.Attempts, AttemptError{Backend: "c", Err: wrap(syscall.ECONNREFUSED)})
	if de.Local() {
		t.Fatal("one refused attempt: Local() = true")
	}
	if (&DialError{Pool: "p", Stop: ErrBudgetExhausted}).Local() {
		t.Fatal("no attempt: Local() = true")
	}
}
