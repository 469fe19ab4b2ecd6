package realtime

import "maps"

// A Go map keeps the room it grew for until it is dropped: one that held
// 10,000 connections at a peak keeps the memory of 10,000 after they have
// all gone. The maps that follow connections, sessions and channels note
// their peak size, and their owner, under the lock that guards the map,
// replaces one that has shrunk far below its peak with a copy sized to
// what it holds.

// shrinkMinPeak is the peak size below which a map is left as it is: the
// room it keeps is small, and copying it would gain nothing.
const shrinkMinPeak = 1024

// shrinkFactor is how far a map shrinks below its peak before it is
// copied. Each copy takes at least (1 - 1/shrinkFactor) of the peak in
// deletes since the last one, and copies at most 1/shrinkFactor of it,
// so deletes stay O(1) amortised.
const shrinkFactor = 4

// grown records the size of a map that has just gained an entry in peak,
// the largest size it has had since it was made.
func grown(peak *int, size int) {
	*peak = max(*peak, size)
}

// shrunk returns m as it is, or, once m holds at most 1/shrinkFactor of
// its peak entries and the peak reached shrinkMinPeak, a copy of m sized
// to what it holds, with peak reset to that size. Its caller stores the
// result in place of m under the lock that guards it; the copy holds
// every entry of m.
func shrunk[M ~map[K]V, K comparable, V any](m M, peak *int) M {
	if *peak < shrinkMinPeak || len(m) > *peak/shrinkFactor {
		return m
	}
	c := make(M, len(m))
	maps.Copy(c, m)
	*peak = len(c)
	return c
}
