package realtime

import (
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// A cursor is a connection's resume state in one string: for every
// channel, the position of the last message the client has. Its form,
// given in PROTOCOL.md, is
//
//	channel:epoch:offset,channel:epoch:offset
//
// with channel and epoch query-escaped (so neither holds ':' or ','),
// channels sorted.

// maxCursor bounds the size of a cursor a client may hand back.
const maxCursor = 16 << 10

var errBadCursor = errors.New("realtime: malformed cursor")

func encodeCursor(positions map[string]Position) string {
	if len(positions) == 0 {
		return ""
	}
	names := make([]string, 0, len(positions))
	for name := range positions {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	for i, name := range names {
		p := positions[name]
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(url.QueryEscape(name))
		b.WriteByte(':')
		b.WriteString(url.QueryEscape(p.Epoch))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(p.Offset, 10))
	}
	return b.String()
}

// parseCursor reads a cursor. It returns at most limit channels.
func parseCursor(s string, limit int) (map[string]Position, error) {
	positions := make(map[string]Position)
	if s == "" {
		return positions, nil
	}
	if len(s) > maxCursor {
		return nil, errBadCursor
	}
	for entry := range strings.SplitSeq(s, ",") {
		name, rest, ok1 := strings.Cut(entry, ":")
		epoch, offset, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 {
			return nil, errBadCursor
		}
		var err error
		var p Position
		if name, err = url.QueryUnescape(name); err != nil || name == "" {
			return nil, errBadCursor
		}
		if p.Epoch, err = url.QueryUnescape(epoch); err != nil {
			return nil, errBadCursor
		}
		if p.Offset, err = strconv.ParseUint(offset, 10, 64); err != nil {
			return nil, errBadCursor
		}
		positions[name] = p
		if len(positions) > limit {
			return nil, ErrTooManyChannels
		}
	}
	return positions, nil
}
