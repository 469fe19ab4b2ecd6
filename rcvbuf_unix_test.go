//go:build unix

package realtime_test

import "syscall"

// smallReceiveBuffer is a net.Dialer Control that gives the socket a
// 32 KiB receive buffer before it connects, so that a client that stops
// reading stalls the server's writes soon.
func smallReceiveBuffer(network, address string, rc syscall.RawConn) error {
	var err error
	rc.Control(func(fd uintptr) {
		err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10)
	})
	return err
}
