package realtime

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func FuzzDecodeFrame(f *testing.F) {
	for _, seed := range []string{
		`{"type":"join","id":1,"channel":"a"}`,
		`[{"type":"publish","channel":"a","data":{"x":[1,2]}},{"type":"ping"}]`,
		`{"type":"publish","channel":"a","b64":"AAEC"}`,
		`[1,"x",null]`, `{"id":9007199254740992}`, `{"id":"1"}`, ``, `[`, "\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		items, err := decodeFrame(frame)
		if err != nil {
			return
		}
		for _, raw := range items {
			cmd, perr := decodeCommand(raw)
			if perr != nil {
				assert.NotEmpty(t, perr.code)
				continue
			}
			require.NotNil(t, cmd)
			assert.LessOrEqual(t, cmd.id, uint64(maxRequestID))
			if p, perr := cmd.payload(); perr == nil && cmd.Data != nil {
				assert.True(t, json.Valid(p))
			}
		}
	})
}

func FuzzAppendString(f *testing.F) {
	for _, seed := range []string{"", "plain", "q\"b\\s", "\x00\x1f\n\r\t", "漢字😀", "\u2028\u2029", "\xff\xfe", "a\xc3"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendString(nil, s)
		assert.False(t, bytes.ContainsAny(enc, "\r\n"), "raw line break in %q", enc)
		var got string
		require.NoError(t, json.Unmarshal(enc, &got), "%q", enc)
		want := string([]rune(s)) // each invalid byte becomes U+FFFD
		assert.Equal(t, want, got)
		assert.True(t, utf8.Valid(enc))
	})
}

// FuzzPublication checks that every payload survives encoding byte for
// byte, in the form PROTOCOL.md says, and that frames hold no line break.
func FuzzPublication(f *testing.F) {
	for _, seed := range []string{`{"a":1}`, `"x"`, "42\n", " 1", "", "\x00\xff", `{"a": [1, 2]}`, "{\n}", `"\u2028"`} {
		f.Add([]byte(seed), "room")
	}
	f.Fuzz(func(t *testing.T, data []byte, channel string) {
		msg := encodePublication(Message{Channel: channel, Data: data, Position: Position{"e", 7}})
		frame := append(append(append(append([]byte("["), msg...), ','), msg...), ']')
		assert.False(t, bytes.ContainsAny(frame, "\r\n"), "raw line break in %q", frame)
		var got []struct {
			Type   string
			Data   json.RawMessage
			B64    *string
			Epoch  string
			Offset uint64
		}
		require.NoError(t, json.Unmarshal(frame, &got), "%q", frame)
		require.Len(t, got, 2)
		m := got[0]
		assert.Equal(t, "message", m.Type)
		assert.Equal(t, uint64(7), m.Offset)
		if m.B64 != nil {
			assert.Nil(t, m.Data)
			p, err := base64.StdEncoding.DecodeString(*m.B64)
			require.NoError(t, err)
			assert.Equal(t, data, p)
			assert.False(t, isInlineJSON(data))
		} else {
			assert.Equal(t, string(data), string(m.Data))
		}
	})
}

func TestTruncateReason(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"short", "short"},
		{string(bytes.Repeat([]byte("a"), 130)), string(bytes.Repeat([]byte("a"), 123))},
		{string(bytes.Repeat([]byte("a"), 122)) + "漢", string(bytes.Repeat([]byte("a"), 122))},
	} {
		got := truncateReason(tc.in)
		assert.Equal(t, tc.want, got)
		assert.True(t, utf8.ValidString(got))
	}
}

func FuzzParseCursor(f *testing.F) {
	for _, seed := range []string{"", "room:e:1", "a%3Ab:ep%2C:7,b::0", "x", "a:b", "::", "a:b:-1", "a:b:99999999999999999999"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		positions, err := parseCursor(s, 1000)
		if err != nil {
			return
		}
		// What parses encodes back to something that parses the same.
		again, err := parseCursor(encodeCursor(positions), 1000)
		require.NoError(t, err)
		assert.Equal(t, positions, again)
		for name := range positions {
			assert.NotEmpty(t, name)
		}
	})
}
