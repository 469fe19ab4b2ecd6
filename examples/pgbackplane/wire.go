package main

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	"github.com/realtimekit/realtime"
)

// Notification payloads are text: PostgreSQL refuses a zero byte and
// bytes that are not valid in the server encoding, and refuses payloads
// of 8000 bytes or more. So every field is ASCII: names and data travel
// in standard base64, and the fields are separated by single spaces.
//
// On the shared channel "<prefix>_msg":
//
//	m <offset> <epoch> <base64 channel> <base64 data>   a whole message
//	mr <offset> <epoch> <base64 channel>                 a stored message
//
// On a node's channel "<prefix>_node_<node>":
//
//	d <base64 data>   a whole direct message
//	dr <id>           a direct message stored in "<prefix>_direct"
//
// A message goes whole when its payload fits in maxPayload bytes, and is
// stored otherwise: the receiving node reads a stored channel message
// from the messages table, and takes (deletes) a stored direct message
// from the direct table.
const (
	kindMessage       = "m"
	kindStoredMessage = "mr"
	kindDirect        = "d"
	kindStoredDirect  = "dr"
)

var b64 = base64.StdEncoding

// messageTail returns the kind of notification for a message of channel
// with data, and what follows its position in the payload. The database
// fills in the position; the size check assumes the longest one.
func messageTail(channel string, data []byte) (kind, tail string) {
	name := b64.EncodeToString([]byte(channel))
	longest := len(kindMessage) + 1 + len("18446744073709551615") + 1 + maxEpoch +
		1 + len(name) + 1 + b64.EncodedLen(len(data))
	if longest <= maxPayload {
		return kindMessage, " " + name + " " + b64.EncodeToString(data)
	}
	return kindStoredMessage, " " + name
}

// notice is a decoded notification of the shared channel.
type notice struct {
	msg    realtime.Message // Data is nil when stored
	stored bool
}

var errMalformed = errors.New("malformed notification")

// decodeMessage parses a payload of the shared channel.
func decodeMessage(payload string) (notice, error) {
	f := strings.Split(payload, " ")
	var n notice
	switch {
	case len(f) == 5 && f[0] == kindMessage:
	case len(f) == 4 && f[0] == kindStoredMessage:
		n.stored = true
	default:
		return notice{}, errMalformed
	}
	offset, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil || offset == 0 || f[2] == "" {
		return notice{}, errMalformed
	}
	channel, err := b64.DecodeString(f[3])
	if err != nil {
		return notice{}, errMalformed
	}
	n.msg = realtime.Message{
		Channel:  string(channel),
		Position: realtime.Position{Epoch: f[2], Offset: offset},
	}
	if !n.stored {
		if n.msg.Data, err = b64.DecodeString(f[4]); err != nil {
			return notice{}, errMalformed
		}
	}
	return n, nil
}

// decodeDirect parses a payload of a node's channel: it returns the data
// of a whole direct message, or the id of a stored one.
func decodeDirect(payload string) (data []byte, id int64, err error) {
	kind, rest, _ := strings.Cut(payload, " ")
	switch kind {
	case kindDirect:
		data, err = b64.DecodeString(rest)
		if err != nil {
			return nil, 0, errMalformed
		}
		return data, 0, nil
	case kindStoredDirect:
		id, err = strconv.ParseInt(rest, 10, 64)
		if err != nil || id <= 0 {
			return nil, 0, errMalformed
		}
		return nil, id, nil
	}
	return nil, 0, errMalformed
}
