//go:build !linux

package realtime

import (
	"net"
	"time"
)

// setUserTimeout does nothing where the kernel has no TCP_USER_TIMEOUT:
// a vanished peer is found when writes to it fail.
func setUserTimeout(c net.Conn, d time.Duration) {}
