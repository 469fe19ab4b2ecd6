package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

// FuzzMessageNotification builds a payload as the publish statement does
// and decodes it; whatever it is given, decodeMessage must not panic.
func FuzzMessageNotification(f *testing.F) {
	f.Add("room", []byte("hello"), uint64(1), "AbCdEfGh_-12")
	f.Add("", []byte{}, uint64(18446744073709551615), "e")
	f.Add("a b\x00\xff", []byte{0, 0xff, ' ', '\n'}, uint64(42), "x")
	f.Fuzz(func(t *testing.T, channel string, data []byte, offset uint64, epoch string) {
		if offset == 0 || epoch == "" || strings.Contains(epoch, " ") {
			// Not a position the database hands out.
			decodeMessage(channel)
			return
		}
		kind, tail := messageTail(channel, data)
		payload := kind + " " + strconv.FormatUint(offset, 10) + " " + epoch + tail
		if len(epoch) <= maxEpoch && len(payload) > maxPayload {
			t.Fatalf("payload of %d bytes exceeds the notification limit", len(payload))
		}
		n, err := decodeMessage(payload)
		if err != nil {
			t.Fatalf("decode %q: %v", payload, err)
		}
		if n.msg.Channel != channel || n.msg.Position.Offset != offset || n.msg.Position.Epoch != epoch {
			t.Fatalf("decoded %+v from %q", n.msg, payload)
		}
		if n.stored != (kind == kindStoredMessage) {
			t.Fatalf("stored = %v for kind %q", n.stored, kind)
		}
		if !n.stored && !bytes.Equal(n.msg.Data, data) {
			t.Fatalf("data differs")
		}
	})
}

// FuzzDirectNotification decodes arbitrary direct payloads without
// panicking, and round-trips whole ones.
func FuzzDirectNotification(f *testing.F) {
	f.Add([]byte("hello"), "dr 12")
	f.Add([]byte{}, "d")
	f.Add([]byte{0, 0xff}, "dr -1")
	f.Fuzz(func(t *testing.T, data []byte, raw string) {
		decodeDirect(raw)
		got, id, err := decodeDirect(kindDirect + " " + b64.EncodeToString(data))
		if err != nil || id != 0 || !bytes.Equal(got, data) {
			t.Fatalf("round trip of %x: %x, %d, %v", data, got, id, err)
		}
	})
}
