package realtime

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// Subprotocol is the WebSocket subprotocol of version 1 of the wire
// protocol described in PROTOCOL.md. Clients offer it when they connect.
const Subprotocol = "realtime.v1"

// protocolVersion is the number sent in the welcome message.
const protocolVersion = 1

// Error codes carried by error messages; PROTOCOL.md explains each.
const (
	codeBadFrame        = "bad_frame"
	codeBadRequest      = "bad_request"
	codeUnknownType     = "unknown_type"
	codeBadChannel      = "bad_channel"
	codeForbidden       = "forbidden"
	codeTooManyChannels = "too_many_channels"
	codeNotJoined       = "not_joined"
	codeTooLarge        = "too_large"
	codeUnavailable     = "unavailable"
)

// maxRequestID is the largest id a client may use: the largest integer a
// JavaScript number holds exactly.
const maxRequestID = 1<<53 - 1

// command is one decoded client command.
type command struct {
	Type    string          `json:"type"`
	RawID   json.RawMessage `json:"id"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	B64     *string         `json:"b64"`
	Since   *struct {
		Epoch  string `json:"epoch"`
		Offset uint64 `json:"offset"`
	} `json:"since"`

	id uint64 // RawID once checked; 0 means none
}

// since returns the position a join resumes from, or nil.
func (cmd *command) since() *Position {
	if cmd.Since == nil {
		return nil
	}
	return &Position{Epoch: cmd.Since.Epoch, Offset: cmd.Since.Offset}
}

// protocolError is a failed command, as the client will be told of it.
type protocolError struct {
	code    string
	message string
}

func (e *protocolError) Error() string { return e.code + ": " + e.message }

// decodeFrame splits a client frame into commands. A frame is one object
// or an array of them. Elements that are not objects come back as nil
// commands so that the caller can answer each in order.
func decodeFrame(frame []byte) ([]json.RawMessage, error) {
	frame = bytes.TrimLeft(frame, " \t\r\n")
	if len(frame) == 0 {
		return nil, errors.New("empty frame")
	}
	switch frame[0] {
	case '{':
		if !json.Valid(frame) {
			return nil, errors.New("frame is not valid JSON")
		}
		return []json.RawMessage{frame}, nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(frame, &items); err != nil {
			return nil, errors.New("frame is not valid JSON")
		}
		return items, nil
	default:
		return nil, errors.New("frame must be a JSON object or array")
	}
}

// decodeCommand decodes and checks one command object.
func decodeCommand(raw json.RawMessage) (*command, *protocolError) {
	var cmd command
	if len(raw) == 0 || raw[0] != '{' {
		return nil, &protocolError{codeBadFrame, "command must be a JSON object"}
	}
	if err := json.Unmarshal(raw, &cmd); err != nil {
		return nil, &protocolError{codeBadRequest, "malformed command: " + err.Error()}
	}
	if len(cmd.RawID) > 0 && string(cmd.RawID) != "null" {
		id, err := strconv.ParseUint(string(cmd.RawID), 10, 64)
		if err != nil || id == 0 || id > maxRequestID {
			return &cmd, &protocolError{codeBadRequest, "id must be an integer from 1 to 2^53-1"}
		}
		cmd.id = id
	}
	return &cmd, nil
}

// payload returns the command's payload bytes from data or b64.
func (cmd *command) payload() ([]byte, *protocolError) {
	switch {
	case cmd.B64 != nil && cmd.Data != nil:
		return nil, &protocolError{codeBadRequest, "give data or b64, not both"}
	case cmd.B64 != nil:
		p, err := base64.StdEncoding.DecodeString(*cmd.B64)
		if err != nil {
			return nil, &protocolError{codeBadRequest, "b64 is not valid base64"}
		}
		return p, nil
	case cmd.Data != nil:
		return cmd.Data, nil
	default:
		return nil, &protocolError{codeBadRequest, "missing data or b64"}
	}
}

// isInlineJSON reports whether p travels as a JSON value in a data field:
// valid JSON in valid UTF-8 (text frames must be) that can be embedded
// byte for byte without a line break.
func isInlineJSON(p []byte) bool {
	if len(p) == 0 || isSpace(p[0]) || isSpace(p[len(p)-1]) {
		return false
	}
	if bytes.IndexByte(p, '\n') >= 0 || bytes.IndexByte(p, '\r') >= 0 {
		return false
	}
	return utf8.Valid(p) && json.Valid(p)
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// appendPayload appends `,"data":p` or `,"b64":"..."`.
func appendPayload(dst, p []byte) []byte {
	if isInlineJSON(p) {
		dst = append(dst, `,"data":`...)
		return append(dst, p...)
	}
	dst = append(dst, `,"b64":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, p)
	return append(dst, '"')
}

// message is a server message under construction. Each builder starts
// the object with its type; the caller appends fields and calls end.
type message []byte

func newMessage(typ string, id uint64) message {
	m := make(message, 0, 64)
	m = append(m, `{"type":"`...)
	m = append(m, typ...)
	m = append(m, '"')
	if id != 0 {
		m = append(m, `,"id":`...)
		m = strconv.AppendUint(m, id, 10)
	}
	return m
}

func (m message) str(key, value string) message {
	m = append(m, `,"`...)
	m = append(m, key...)
	m = append(m, `":`...)
	return appendString(m, value)
}

func (m message) uint(key string, v uint64) message {
	m = append(m, `,"`...)
	m = append(m, key...)
	m = append(m, `":`...)
	return strconv.AppendUint(m, v, 10)
}

func (m message) boolean(key string, v bool) message {
	m = append(m, `,"`...)
	m = append(m, key...)
	m = append(m, `":`...)
	return strconv.AppendBool(m, v)
}

func (m message) position(p Position) message {
	return m.str("epoch", p.Epoch).uint("offset", p.Offset)
}

func (m message) payload(p []byte) message { return appendPayload(m, p) }

func (m message) end() []byte { return append(m, '}') }

// encodePublication encodes a channel message once for every member.
func encodePublication(msg Message) []byte {
	m := make(message, 0, len(msg.Channel)+len(msg.Data)+96)
	m = append(m, `{"type":"message"`...)
	return m.str("channel", msg.Channel).position(msg.Position).payload(msg.Data).end()
}

func encodeError(id uint64, channel string, e *protocolError) []byte {
	m := newMessage("error", id).str("code", e.code).str("message", e.message)
	if channel != "" {
		m = m.str("channel", channel)
	}
	return m.end()
}

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// and U+2028 and U+2029 are escaped so that the output is also valid
// JavaScript.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
