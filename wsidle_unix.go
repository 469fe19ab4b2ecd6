//go:build unix

package realtime

import (
	"net"
	"syscall"
)

// awaitReadable blocks until conn has bytes to read or has ended, by
// peeking at its socket: nothing is consumed. It returns at once for a
// connection that is not a socket of its own, such as TLS, whose reads
// are buffered above the socket.
func awaitReadable(conn net.Conn) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	var b [1]byte
	rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		// EAGAIN: nothing yet, and the runtime waits for the socket to
		// become readable. Bytes, the end of the stream or an error: the
		// read that follows sees them.
		return err != syscall.EAGAIN
	})
}

// peekSocket copies the bytes at the head of conn's socket into b
// without consuming them, and returns how many there were. It does not
// wait.
func peekSocket(conn net.Conn, b []byte) int {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return 0
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	rc.Control(func(fd uintptr) {
		n, _, _ = syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK)
	})
	return max(n, 0)
}
