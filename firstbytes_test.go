package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// On a listener with a plain_route, a client that sends nothing is refused
// as no_first_bytes, and its log line says nothing about a ClientHello: a
// raw TCP game client may be waiting for a server that speaks first.
func TestSilentRawClientIsNotAHelloTimeout(t *testing.T) {
	be := echoBackend(t)
	l := startLB(t, fmt.Sprintf(`
[listeners.public]
address = "127.0.0.1:0"
plain_route = "raw"
hello_timeout = "200ms"
[routes.raw]
listener = "public"
pool = "p"
[pools.p]
backends = [{ address = %q }]
`, be.addr))
	c := dial(t, l.addr("public"))
	if b, _ := readAllTimeout(c, 10*time.Second); len(b) != 0 {
		t.Fatalf("silent client got %q", b)
	}
	l.waitRejected(t, reasonNoFirstBytes, 1)
	for _, e := range l.logs.All() {
		if strings.HasPrefix(e.Message, "rejected") {
			if e.Message != "rejected: no_first_bytes" || strings.Contains(strings.ToLower(fieldString(e.ContextMap())), "hello") {
				t.Fatalf("log line %q %v", e.Message, e.ContextMap())
			}
		}
	}
}

func fieldString(m map[string]any) string {
	var sb strings.Builder
	for k, v := range m {
		sb.WriteString(k)
		sb.WriteString("=")
		sb.WriteString(strings.TrimSpace(strings.ReplaceAll(toString(v), "\n", " ")))
		sb.WriteString(" ")
	}
	return sb.String()
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}
