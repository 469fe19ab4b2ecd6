package redisbackplane

import (
	"bytes"
	"strconv"
	"testing"
)

func FuzzDecode(f *testing.F) {
	f.Add(uint64(1), "AbCd_-", []byte("hello"))
	f.Add(uint64(18446744073709551615), "e", []byte{0, ' ', 0xff, '\n'})
	f.Add(uint64(7), "x", []byte{})
	f.Fuzz(func(t *testing.T, offset uint64, epoch string, data []byte) {
		envelope := strconv.FormatUint(offset, 10) + " " + epoch + " " + string(data)
		msg, err := decode("c", envelope)
		valid := offset > 0 && epoch != "" && !bytes.ContainsRune([]byte(epoch), ' ')
		if !valid {
			return
		}
		if err != nil {
			t.Fatalf("decode(%q): %v", envelope, err)
		}
		if msg.Position.Offset != offset || msg.Position.Epoch != epoch || !bytes.Equal(msg.Data, data) {
			t.Fatalf("decode(%q) = %+v", envelope, msg)
		}
	})
}

func FuzzDecodeAnything(f *testing.F) {
	f.Add("1 e data")
	f.Add("")
	f.Add("0 e x")
	f.Fuzz(func(t *testing.T, envelope string) {
		decode("c", envelope) // must not panic
	})
}
