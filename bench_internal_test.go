package realtime

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingTransport counts the messages written to it and discards them.
type countingTransport struct {
	frames, bytes atomic.Int64
	msgs          atomic.Int64
	arrived       chan struct{} // signalled on every write
	gate          chan struct{} // if set, writes wait until it closes
}

func (t *countingTransport) Name() string { return "counting" }

func (t *countingTransport) Write(ctx context.Context, f Frame) error {
	if t.gate != nil {
		<-t.gate
	}
	t.frames.Add(1)
	t.bytes.Add(int64(len(f.Data)))
	n := int64(0)
	depth := 0
	for _, b := range f.Data {
		switch b {
		case '{':
			if depth == 1 {
				n++
			}
			depth++
		case '[':
			depth++
		case '}', ']':
			depth--
		}
	}
	t.msgs.Add(n)
	select {
	case t.arrived <- struct{}{}:
	default:
	}
	return nil
}

func (t *countingTransport) Close(CloseCode, string) error { return nil }

// benchHub returns a hub with n connections in channel "c", each on a
// countingTransport.
func benchHub(tb testing.TB, n int) (*Hub, []*countingTransport) {
	h, err := New(&Options{QueueMessages: 1 << 16, QueueBytes: 64 << 20})
	require.NoError(tb, err)
	tb.Cleanup(func() { h.Close() })
	ts := make([]*countingTransport, n)
	for i := range ts {
		ts[i] = &countingTransport{arrived: make(chan struct{}, 1)}
		c, err := h.Connect(ts[i], ConnInfo{})
		require.NoError(tb, err)
		require.NoError(tb, c.Join(context.Background(), "c"))
	}
	// The welcome and the joined reply are written: the writers are idle.
	for _, t := range ts {
		for t.msgs.Load() < 2 {
			<-t.arrived
		}
	}
	return h, ts
}

// BenchmarkEncodePublication encodes one 128-byte JSON payload, once per
// publish whatever the number of members.
func BenchmarkEncodePublication(b *testing.B) {
	m := Message{Channel: "room:lobby", Data: []byte(`{"text":"` + string(make([]byte, 110)) + `"}`),
		Position: Position{Epoch: "abcdefgh", Offset: 123456}}
	for i := range m.Data[9:119] {
		m.Data[9+i] = 'x'
	}
	b.ReportAllocs()
	for b.Loop() {
		encodePublication(m)
	}
}

// BenchmarkFanOut publishes to 1,000 local members and waits until each
// has been written every message: the hub's whole path without a
// network.
func BenchmarkFanOut(b *testing.B) {
	const members = 1000
	h, ts := benchHub(b, members)
	data := []byte(`"` + string(make([]byte, 126)) + `"`)
	for i := 1; i < len(data)-1; i++ {
		data[i] = 'x'
	}
	base := make([]int64, members)
	for i, t := range ts {
		base[i] = t.msgs.Load()
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.Publish(ctx, "c", data); err != nil {
			b.Fatal(err)
		}
	}
	for i, t := range ts {
		for t.msgs.Load()-base[i] < int64(b.N) {
			<-t.arrived
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*members)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkQueue pushes messages into one connection's queue and lets its
// writer take them.
func BenchmarkQueue(b *testing.B) {
	h, ts := benchHub(b, 1)
	c := h.Conns()[0]
	it := item{data: []byte(`{"type":"message","channel":"c","data":1}`), ref: &itemRef{kind: itemMessage, channel: "c"}}
	base := ts[0].msgs.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for !c.push(it) {
			<-ts[0].arrived // queue full: let the writer catch up
		}
	}
	for ts[0].msgs.Load()-base < int64(b.N) {
		<-ts[0].arrived
	}
}

// Delivering a message allocates its encoding once, however many members
// the channel has; queues grow by amortised appends only.
func TestDeliverAllocationsDoNotGrowWithMembers(t *testing.T) {
	allocs := func(members int) float64 {
		h, ts := benchHub(t, members)
		// Writers stay blocked in their first write, so that only the
		// deliveries allocate while they are counted.
		gate := make(chan struct{})
		defer close(gate)
		for _, ct := range ts {
			ct.gate = gate
		}
		m := Message{Channel: "c", Data: []byte(`"x"`), Position: Position{Epoch: "e", Offset: 1}}
		return testing.AllocsPerRun(200, func() {
			m.Position.Offset++
			h.deliver(m)
		})
	}
	one, thousand := allocs(1), allocs(1000)
	assert.LessOrEqual(t, one, 2.0, "allocations to deliver to one member")
	assert.Less(t, (thousand-one)/999, 0.1, "allocations per further member (%v for 1,000 members)", thousand)
	// What a message costs each member while it waits in the queue.
	assert.LessOrEqual(t, unsafe.Sizeof(item{}), uintptr(32), "bytes per queued message")
}

func BenchmarkCursor(b *testing.B) {
	cursor := map[string]Position{}
	for i := 0; i < 5; i++ {
		cursor["room:"+strconv.Itoa(i)] = Position{Epoch: "abcdefgh", Offset: uint64(1000 + i)}
	}
	b.ReportAllocs()
	for b.Loop() {
		encodeCursor(cursor)
	}
}
