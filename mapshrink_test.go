package realtime

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mapPointer[M ~map[K]V, K comparable, V any](m M) uintptr {
	return reflect.ValueOf(m).Pointer()
}

// A map that shrinks far below its peak is replaced by a copy that holds
// every live entry; small maps are left alone.
func TestShrunkKeepsEveryLiveEntry(t *testing.T) {
	const n = 5000
	m := make(map[string]int)
	var peak int
	for i := range n {
		m[fmt.Sprint("k", i)] = i
		grown(&peak, len(m))
	}
	require.Equal(t, n, peak)

	copies := 0
	for i := range n - 10 {
		before := mapPointer(m)
		delete(m, fmt.Sprint("k", i))
		m = shrunk(m, &peak)
		if mapPointer(m) != before {
			copies++
			assert.Equal(t, len(m), peak, "the peak restarts from the copy's size")
			assert.LessOrEqual(t, len(m), n/shrinkFactor)
		}
		// Every entry not deleted is still there, with its value.
		if i%500 == 0 || mapPointer(m) != before {
			require.Len(t, m, n-i-1)
			for j := i + 1; j < n; j++ {
				v, ok := m[fmt.Sprint("k", j)]
				require.True(t, ok, "entry %d lost", j)
				require.Equal(t, j, v)
			}
		}
	}
	// 5000 → 1250 → 312: copied twice, then below shrinkMinPeak.
	assert.Equal(t, 2, copies)
	assert.Less(t, peak, shrinkMinPeak)

	small := map[int]int{1: 1, 2: 2}
	smallPeak := 2
	delete(small, 1)
	p := mapPointer(small)
	small = shrunk(small, &smallPeak)
	assert.Equal(t, p, mapPointer(small), "a small map is left as it is")
	assert.Equal(t, map[int]int{2: 2}, small)
}

// heapInUse returns the bytes of live heap objects after a full GC.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// The copy gives back the memory of the peak, which a map emptied in
// place keeps.
func TestShrunkGivesMemoryBack(t *testing.T) {
	const n = 1 << 17
	fill := func() (map[int]int, int) {
		m := make(map[int]int)
		var peak int
		for i := range n {
			m[i] = i
			grown(&peak, len(m))
		}
		return m, peak
	}

	base := heapInUse()
	kept, _ := fill()
	for i := range n - 10 {
		delete(kept, i)
	}
	keptBytes := heapInUse() - base
	runtime.KeepAlive(kept)
	kept = nil

	base = heapInUse()
	m, peak := fill()
	for i := range n - 10 {
		delete(m, i)
		m = shrunk(m, &peak)
	}
	shrunkBytes := heapInUse() - min(base, heapInUse())
	runtime.KeepAlive(m)

	require.Len(t, m, 10)
	assert.Greater(t, keptBytes, uint64(1<<20), "a map emptied in place keeps its room")
	assert.Less(t, shrunkBytes, keptBytes/20, "the shrunk map holds %d bytes, the emptied one %d", shrunkBytes, keptBytes)
}

// nopTransport discards what is written to it.
type nopTransport struct{}

func (nopTransport) Name() string                       { return "nop" }
func (nopTransport) Write(context.Context, Frame) error { return nil }
func (nopTransport) Close(CloseCode, string) error      { return nil }

// The hub's connection map is rebuilt once most of its connections have
// gone, and still finds every connection left.
func TestHubConnsShrinkAfterThePeak(t *testing.T) {
	h, err := New(nil)
	require.NoError(t, err)
	defer h.Close()

	const n, left = 3000, 100
	conns := make([]*Conn, n)
	for i := range conns {
		c, err := h.Connect(nopTransport{}, ConnInfo{})
		require.NoError(t, err)
		require.NoError(t, c.Join(context.Background(), fmt.Sprint("ch", i%2000)))
		conns[i] = c
	}
	h.mu.RLock()
	peakConns, peakChannels := mapPointer(h.conns), mapPointer(h.channels)
	assert.Equal(t, n, h.connsPeak)
	assert.Equal(t, 2000, h.channelsPeak)
	h.mu.RUnlock()

	for _, c := range conns[left:] {
		c.CloseNow(CloseNormal, "bye")
	}
	for _, c := range conns[left:] {
		<-c.Done()
	}

	h.mu.RLock()
	assert.NotEqual(t, peakConns, mapPointer(h.conns), "the connection map was not rebuilt")
	assert.NotEqual(t, peakChannels, mapPointer(h.channels), "the channel map was not rebuilt")
	assert.Less(t, h.connsPeak, shrinkMinPeak)
	assert.Len(t, h.channels, left)
	h.mu.RUnlock()

	require.Len(t, h.Conns(), left)
	for i, c := range conns[:left] {
		assert.Same(t, c, h.Conn(c.ID()))
		assert.Equal(t, []string{fmt.Sprint("ch", i)}, c.Channels())
		assert.Equal(t, []*Conn{c}, h.Members(fmt.Sprint("ch", i)))
	}
	assert.Equal(t, left, h.Stats().Connections)
}
