package l7

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// FuzzUpgradeResponse (RELIABILITY H, rule 5): for any bytes a backend
// answers an upgrade with, sluice tunnels only when the status is 101,
// Upgrade is exactly websocket and Sec-WebSocket-Accept is right for the
// key it sent; and then every byte after the answer's head is kept, in
// order, for the client.
func FuzzUpgradeResponse(f *testing.F) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	good := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\r\n\r\n"
	for _, s := range []string{
		good,
		good + "\x81\x05hello",
		strings.Replace(good, "websocket", "h2c", 1),
		strings.Replace(good, acceptKey(key), "wrong", 1),
		strings.Replace(good, "101 Switching Protocols", "200 OK", 1) + "body",
		strings.Replace(good, "Upgrade: websocket\r\n", "Upgrade: websocket\r\nUpgrade: websocket\r\n", 1),
		"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!",
		"HTTP/1.0 101 Switching Protocols\r\nUpgrade: WebSocket\r\nSec-WebSocket-Accept:  " + acceptKey(key) + " \r\n\r\n\x00",
		"HTTP/1.1 101\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: " + acceptKey(key) + "\n\nX",
		"garbage",
	} {
		f.Add([]byte(s))
	}
	req, err := http.NewRequest("GET", "http://game.test/ws", nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		resp, br, _, err := readAnswer(src, req)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || switchProblem(resp, key) != "" {
			return // refused: 502, or a non-101 relayed and the conn closed
		}
		up := resp.Header.Values("Upgrade")
		acc := resp.Header.Values("Sec-WebSocket-Accept")
		if len(up) != 1 || !strings.EqualFold(strings.TrimSpace(up[0]), "websocket") ||
			len(acc) != 1 || strings.TrimSpace(acc[0]) != acceptKey(key) {
			t.Fatalf("tunnel opened on %q", in)
		}
		coalesced, _ := br.Peek(br.Buffered())
		rest, _ := io.ReadAll(src) // what the relay reads from the socket next
		after := append(append([]byte(nil), coalesced...), rest...)
		if !bytes.HasSuffix(in, after) {
			t.Fatalf("bytes after the head %q are not the input's tail", after)
		}
		head := in[:len(in)-len(after)]
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("the head %q does not end at a blank line: bytes of the answer would be lost or sent twice", head)
		}
	})
}
