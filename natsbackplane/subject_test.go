package natsbackplane_test

import (
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"

	"github.com/realtimekit/realtime/natsbackplane"
)

func TestTokenEscapes(t *testing.T) {
	for _, tc := range []struct{ channel, want string }{
		{"room-1", "room-1"},
		{"a:b@c/d=e+f_g", "a:b@c/d=e+f_g"},
		{"a.b", "a%2Eb"},
		{"*", "%2A"},
		{">", "%3E"},
		{"a b\tc", "a%20b%09c"},
		{"100%", "100%25"},
		{"é", "%C3%A9"},
		{"", "%"},
	} {
		assert.Equal(t, tc.want, natsbackplane.Token(tc.channel), "%q", tc.channel)
	}
}

// unescape inverts the token encoding, so that the fuzz test can show it
// loses nothing.
func unescape(tok string) (string, bool) {
	if tok == "%" {
		return "", true
	}
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		if tok[i] != '%' {
			b.WriteByte(tok[i])
			continue
		}
		if i+2 >= len(tok) {
			return "", false
		}
		var v byte
		for _, c := range []byte(tok[i+1 : i+3]) {
			switch {
			case '0' <= c && c <= '9':
				v = v<<4 | (c - '0')
			case 'A' <= c && c <= 'F':
				v = v<<4 | (c - 'A' + 10)
			default:
				return "", false
			}
		}
		b.WriteByte(v)
		i += 2
	}
	return b.String(), true
}

// FuzzToken checks that every channel name becomes one valid subject
// token from which the name can be read back: no two names share a
// subject, and none reaches into another token.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "room", "a.b", "a%2Eb", "%", "*", ">", " ", "\x00\xff", "漢字", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, channel string) {
		tok := natsbackplane.Token(channel)
		if tok == "" {
			t.Fatalf("token(%q) is empty", channel)
		}
		for _, r := range tok {
			if r > unicode.MaxASCII || r <= ' ' || r == 0x7f || strings.ContainsRune(".*>", r) {
				t.Fatalf("token(%q) = %q holds %q", channel, tok, r)
			}
		}
		back, ok := unescape(tok)
		if !ok || back != channel {
			t.Fatalf("token(%q) = %q reads back as %q", channel, tok, back)
		}
	})
}
