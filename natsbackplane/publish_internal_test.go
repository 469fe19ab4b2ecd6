package natsbackplane

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/realtimekit/realtime"
)

func header(epoch string, last uint64, count int) nats.Header {
	h := nats.Header{}
	h.Set(epochHeader, epoch)
	h.Set(offsetHeader, strconv.FormatUint(last, 10))
	if count > 1 {
		h.Set(countHeader, strconv.Itoa(count))
	}
	return h
}

// TestBatchEncoding stores several messages in one body and reads them
// back at consecutive positions, with every byte of each.
func TestBatchEncoding(t *testing.T) {
	payloads := [][]byte{nil, []byte("a"), bytes.Repeat([]byte{0x80}, 127), bytes.Repeat([]byte{0}, 128), bytes.Repeat([]byte("z"), 70000)}
	var batch []*pending
	size := 0
	for _, p := range payloads {
		batch = append(batch, &pending{data: p})
		size += encodedLen(p)
	}
	body := encodeBatch(batch)
	assert.Len(t, body, size)

	msgs, ok := unpack("ch", header("e", 41, len(payloads)), body)
	require.True(t, ok)
	require.Len(t, msgs, len(payloads))
	for i, m := range msgs {
		assert.Equal(t, "ch", m.Channel)
		assert.Equal(t, realtime.Position{Epoch: "e", Offset: 37 + uint64(i)}, m.Position)
		assert.True(t, bytes.Equal(payloads[i], m.Data), "payload %d", i)
	}

	// One message is stored as it is.
	one := encodeBatch(batch[2:3])
	assert.Equal(t, payloads[2], one)
	msgs, ok = unpack("ch", header("e", 7, 1), one)
	require.True(t, ok)
	assert.Equal(t, []realtime.Message{{Channel: "ch", Data: payloads[2], Position: realtime.Position{Epoch: "e", Offset: 7}}}, msgs)
}

// TestBatchDecodingRefusesDamage reads bodies and headers that do not
// agree: none yields messages.
func TestBatchDecodingRefusesDamage(t *testing.T) {
	body := encodeBatch([]*pending{{data: []byte("ab")}, {data: []byte("cd")}})
	for name, c := range map[string]struct {
		h    nats.Header
		body []byte
	}{
		"too few":           {header("e", 5, 3), body},
		"too many":          {header("e", 5, 1), append(bytes.Clone(body), 0)},
		"cut":               {header("e", 5, 2), body[:len(body)-1]},
		"left over":         {header("e", 5, 2), append(bytes.Clone(body), 'x')},
		"count past offset": {header("e", 1, 2), body},
		"no epoch":          {header("", 5, 2), body},
		"zero offset":       {header("e", 0, 2), body},
	} {
		if name == "too many" {
			c.h.Set(countHeader, "1")
		}
		_, ok := unpack("ch", c.h, c.body)
		assert.False(t, ok, name)
	}
	h := header("e", 5, 2)
	h.Set(countHeader, "x")
	_, ok := unpack("ch", h, body)
	assert.False(t, ok, "bad count")
}

// FuzzUnpack reads whatever a stream message may hold: it never panics,
// and what it accepts is the count of messages the headers state, at
// consecutive positions, which encode back to the same body.
func FuzzUnpack(f *testing.F) {
	f.Add(encodeBatch([]*pending{{data: []byte("ab")}, {data: []byte("cd")}}), uint64(5), uint64(2))
	f.Add([]byte{0xff, 0xff, 0xff}, uint64(1<<40), uint64(1<<39))
	f.Fuzz(func(t *testing.T, body []byte, last, count uint64) {
		h := nats.Header{}
		h.Set(epochHeader, "e")
		h.Set(offsetHeader, strconv.FormatUint(last, 10))
		h.Set(countHeader, strconv.FormatUint(count, 10))
		msgs, ok := unpack("ch", h, body)
		if !ok {
			assert.Empty(t, msgs)
			return
		}
		require.Len(t, msgs, int(count))
		batch := make([]*pending, len(msgs))
		for i, m := range msgs {
			assert.Equal(t, last-count+1+uint64(i), m.Position.Offset)
			batch[i] = &pending{data: m.Data}
		}
		if count > 1 {
			assert.Equal(t, body, encodeBatch(batch))
		}
	})
}
