package natsbackplane

import (
	"fmt"
	"strings"
)

// token returns channel as a single NATS subject token, so that every
// channel name, of any bytes, has its own subject and no name can reach
// into another's. Bytes other than ASCII letters, digits and "_-:@/=+"
// become '%' and two upper-case hex digits: that covers '.', '*' and '>',
// which NATS gives a meaning, whitespace and control bytes, which end a
// subject, bytes outside ASCII, and '%' itself. The empty name, which no
// encoding of another name can equal, becomes "%".
func token(channel string) string {
	if channel == "" {
		return "%"
	}
	n := 0
	for i := 0; i < len(channel); i++ {
		if !plain(channel[i]) {
			n++
		}
	}
	if n == 0 {
		return channel
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(channel) + 2*n)
	for i := 0; i < len(channel); i++ {
		c := channel[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// plain reports whether c stands for itself in a token.
func plain(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("_-:@/=+", c) >= 0
}

// validName reports whether s is made of [A-Za-z0-9_-] only, as node
// names and prefix tokens are.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// maxToken bounds a channel's subject token. The server cuts the
// connection of a client that sends a protocol line longer than its
// max_control_line (4 KiB by default), so longer names are refused
// before they reach it. Escaping triples a byte at most: any name of up
// to 340 bytes fits.
const maxToken = 1024

// channelToken returns the subject token of channel, or an error if the
// channel's name is too long for a subject.
func channelToken(channel string) (string, error) {
	tok := token(channel)
	if len(tok) > maxToken {
		return "", fmt.Errorf("natsbackplane: channel name of %d bytes too long for a NATS subject", len(channel))
	}
	return tok, nil
}
