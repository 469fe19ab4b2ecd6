package main

import "strings"

// queries holds the backplane's SQL with its table prefix filled in.
// Durations travel as microseconds (bigint) and become intervals in SQL.
type queries struct {
	schema     string
	publish    string
	history    string
	fetch      string
	take       string
	sendInline string
	sendStored string
	beat       string
	leave      string
	trim       [len(trimSQL)]string
}

// schemaSQL creates the tables of one prefix P.
//
// P_channels has one row per channel: its epoch, the offset of its latest
// message and when that message was published. Publishing locks the row,
// which orders the channel's messages.
//
// P_messages holds each channel's recent messages for recovery, and the
// data of messages too large for a notification.
//
// P_nodes has one row per live node, refreshed by its heartbeat; Send
// consults it.
//
// P_direct holds direct messages too large for a notification until their
// node takes them.
const schemaSQL = `
CREATE TABLE IF NOT EXISTS P_channels (
	name    bytea PRIMARY KEY,
	epoch   text NOT NULL,
	"offset" bigint NOT NULL,
	touched timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS P_channels_touched ON P_channels (touched);
CREATE TABLE IF NOT EXISTS P_messages (
	name     bytea NOT NULL,
	epoch    text NOT NULL,
	"offset" bigint NOT NULL,
	data     bytea NOT NULL,
	at       timestamptz NOT NULL,
	PRIMARY KEY (name, epoch, "offset")
);
CREATE INDEX IF NOT EXISTS P_messages_at ON P_messages (at);
CREATE TABLE IF NOT EXISTS P_nodes (
	name text PRIMARY KEY,
	seen timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS P_direct (
	id   bigserial PRIMARY KEY,
	node text NOT NULL,
	data bytea NOT NULL,
	at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS P_direct_at ON P_direct (at);
`

// publishSQL numbers, stores, trims and notifies in one statement.
//
// $1 channel, $2 a fresh epoch (used when the channel is new or its
// numbering expired), $3 data, $4 history TTL, $5 history size, $6 the
// notification channel, $7 the notification kind, $8 the rest of the
// payload after the position. It returns the epoch, the offset and the
// (void) result of pg_notify.
//
// The upsert's SET expressions all see the row as it was, so a channel
// idle for longer than the TTL gets the fresh epoch and offset 1. The
// trim cannot see the row this statement inserts: it deletes older ones.
const publishSQL = `
WITH c AS (
	INSERT INTO P_channels AS ch (name, epoch, "offset", touched)
	VALUES ($1, $2, 1, now())
	ON CONFLICT (name) DO UPDATE SET
		epoch = CASE WHEN ch.touched < now() - $4::bigint * interval '1 microsecond'
			THEN excluded.epoch ELSE ch.epoch END,
		"offset" = CASE WHEN ch.touched < now() - $4::bigint * interval '1 microsecond'
			THEN 1 ELSE ch."offset" + 1 END,
		touched = now()
	RETURNING ch.epoch, ch."offset"
), m AS (
	INSERT INTO P_messages (name, epoch, "offset", data, at)
	SELECT $1, c.epoch, c."offset", $3, now() FROM c
), t AS (
	DELETE FROM P_messages d USING c
	WHERE d.name = $1 AND d.epoch = c.epoch AND d."offset" <= c."offset" - $5::bigint
)
SELECT c.epoch, c."offset", pg_notify($6, $7::text || ' ' || c."offset" || ' ' || c.epoch || $8::text)
FROM c`

// historySQL returns one row per message of channel $1 in epoch $2 after
// offset $3 that is younger than the TTL $4, each with the channel's
// latest position; or a single row with NULL message columns when there
// is no such message; or no row when the channel is unknown or expired.
const historySQL = `
SELECT c.epoch, c."offset", m."offset", m.data
FROM P_channels c
LEFT JOIN P_messages m ON m.name = c.name AND m.epoch = c.epoch AND c.epoch = $2
	AND m."offset" > $3 AND m.at >= now() - $4::bigint * interval '1 microsecond'
WHERE c.name = $1 AND c.touched >= now() - $4::bigint * interval '1 microsecond'
ORDER BY m."offset"`

// fetchSQL reads the data of one stored message.
const fetchSQL = `SELECT data FROM P_messages WHERE name = $1 AND epoch = $2 AND "offset" = $3`

// takeSQL removes a stored direct message and returns its data.
const takeSQL = `DELETE FROM P_direct WHERE id = $1 AND node = $2 RETURNING data`

// sendInlineSQL notifies channel $1 with payload $2 if node $3 had a
// heartbeat within $4; it returns one row if so, none otherwise.
const sendInlineSQL = `
SELECT pg_notify($1, $2) FROM P_nodes
WHERE name = $3 AND seen >= now() - $4::bigint * interval '1 microsecond'`

// sendStoredSQL stores data $2 for node $1 and notifies its channel $3
// with the row's id, if the node had a heartbeat within $4.
const sendStoredSQL = `
WITH n AS (
	SELECT name FROM P_nodes
	WHERE name = $1 AND seen >= now() - $4::bigint * interval '1 microsecond'
), d AS (
	INSERT INTO P_direct (node, data, at) SELECT name, $2, now() FROM n RETURNING id
)
SELECT pg_notify($3, 'dr ' || id) FROM d`

const beatSQL = `
INSERT INTO P_nodes (name, seen) VALUES ($1, now())
ON CONFLICT (name) DO UPDATE SET seen = now()`

const leaveSQL = `DELETE FROM P_nodes WHERE name = $1`

// trimSQL deletes, each statement with its own age limit $1, expired
// history, channels idle for the TTL, untaken direct messages and silent
// nodes. A publish that races with the channel's deletion keeps the row:
// it holds the row's lock, and the DELETE checks touched again once it
// gets the lock.
var trimSQL = [...]string{
	`DELETE FROM P_messages WHERE at < now() - $1::bigint * interval '1 microsecond'`,
	`DELETE FROM P_channels WHERE touched < now() - $1::bigint * interval '1 microsecond'`,
	`DELETE FROM P_direct WHERE at < now() - $1::bigint * interval '1 microsecond'`,
	`DELETE FROM P_nodes WHERE seen < now() - $1::bigint * interval '1 microsecond'`,
}

// newQueries returns the SQL of the tables with prefix, which New has
// checked to be a plain lowercase identifier.
func newQueries(prefix string) queries {
	p := func(sql string) string { return strings.ReplaceAll(sql, "P_", prefix+"_") }
	q := queries{
		schema:     p(schemaSQL),
		publish:    p(publishSQL),
		history:    p(historySQL),
		fetch:      p(fetchSQL),
		take:       p(takeSQL),
		sendInline: p(sendInlineSQL),
		sendStored: p(sendStoredSQL),
		beat:       p(beatSQL),
		leave:      p(leaveSQL),
	}
	for i, sql := range trimSQL {
		q.trim[i] = p(sql)
	}
	return q
}
