package client

import (
	"bufio"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newTestSSELink(stream string) *sseLink {
	l := &sseLink{httpLink: newHTTPLink("http://127.0.0.1/", &Options{ReadLimit: 1 << 20})}
	l.body = io.NopCloser(strings.NewReader(stream))
	l.r = bufio.NewReader(l.body)
	return l
}

// FuzzSSEParse feeds arbitrary streams to the event parser: it must end
// with an error, never panic or loop, and events it accepts are frames.
func FuzzSSEParse(f *testing.F) {
	for _, seed := range []string{
		"retry: 2000\n\nid: a:b:1\ndata: [{\"type\":\"pong\"}]\n\n",
		": ping\r\n\r\ndata: [\r\ndata: {\"type\":\"x\"}]\r\n\r\n",
		"data:[]\n\n", "data: [{\"type\":\"close\",\"code\":1001}]\n\n", "id\n\n", "data: {\n\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, stream string) {
		l := newTestSSELink(stream)
		for i := 0; ; i++ {
			require.Less(t, i, len(stream)+2, "the parser does not advance")
			msgs, err := l.next()
			if err != nil {
				return
			}
			for _, m := range msgs {
				assert.NotEqual(t, "close", m.Type)
			}
		}
	})
}

func TestSSEParseRoundTrip(t *testing.T) {
	frame := `[{"type":"message","channel":"a","epoch":"e","offset":3,"data":"x"},{"type":"pong","id":2}]`
	l := newTestSSELink("retry: 1\n\n: ping\n\nid: a:e:3\ndata: " + frame + "\n\n" +
		"id: \ndata: [{\"type\":\"close\",\"code\":1001,\"reason\":\"bye\"}]\n\n")
	msgs, err := l.next()
	require.NoError(t, err)
	require.Len(t, msgs, 2)
	assert.Equal(t, "a:e:3", l.cursor())
	assert.Equal(t, `"x"`, string(msgs[0].Data))
	assert.Equal(t, "pong", msgs[1].Type)
	_, err = l.next()
	assert.ErrorContains(t, err, "1001")
	assert.Equal(t, "", l.cursor())
}
