//go:build !unix

package realtime

import "net"

// awaitReadable returns at once: the reader waits in its read.
func awaitReadable(net.Conn) {}

// peekSocket finds nothing: pongs are left to the WebSocket library.
func peekSocket(net.Conn, []byte) int { return 0 }
