//go:build unix && !linux

package l7

import "golang.org/x/sys/unix"

// rawRecv and rawSend: see rawio_linux.go; here they are the ordinary
// calls.
func rawRecv(fd uintptr, b []byte, flags uintptr) (int, unix.Errno) {
	n, _, err := unix.Recvfrom(int(fd), b, int(flags)|unix.MSG_DONTWAIT)
	return n, errnoOf(err)
}

func rawRead(fd uintptr, b []byte) (int, unix.Errno) {
	n, err := unix.Read(int(fd), b)
	return n, errnoOf(err)
}

func rawSend(fd uintptr, b []byte) (int, unix.Errno) {
	n, err := unix.Write(int(fd), b)
	return n, errnoOf(err)
}

func errnoOf(err error) unix.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(unix.Errno); ok {
		return e
	}
	return unix.EIO
}
