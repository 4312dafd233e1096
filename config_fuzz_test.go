package main

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// FuzzConfig (RELIABILITY H): decoding and compiling any bytes never
// panics; invalid input is an error; compiling is repeatable (the same
// problems, or success, the second time). Nothing is bound or started:
// Compile is the pure phase (TestCompileStartsNothing).
func FuzzConfig(f *testing.F) {
	if b, err := os.ReadFile("config.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(reloadBase))
	f.Add([]byte(`
drain_timeout = "1s"
[listeners.public]
address = "127.0.0.1:0"
default_route = "game"
[routes.game]
listener = "public"
sni = ["*.game.test", "game.test"]
mode = "l7"
pool = "ws"
locations = [{ path = "/ws", pool = "ws" }, { path = "/", redirect = "https://example.com/" }]
[pools.ws]
balance = "hash"
hash_key = "query:room"
health = { check = "http", path = "/healthz", interval = "1s" }
backends = [{ address = "127.0.0.1:9301", weight = 2, max_connections = 100 }, { address = "127.0.0.1:9302", backup = true }]
`))
	f.Add([]byte("[listeners.a]\naddress = \"nope\"\n[routes.x]\nlistener = \"b\"\n"))
	f.Add([]byte("[pools.p]\nbackends = [{ address = 1 }]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeConfig(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		_, err = c.Compile()
		_, err2 := c.Compile()
		switch {
		case err == nil && err2 == nil:
		case err == nil || err2 == nil:
			t.Fatalf("validation not repeatable: %v, then %v", err, err2)
		case !slices.Equal(problems(err), problems(err2)):
			t.Fatalf("validation not repeatable:\n%v\nthen\n%v", err, err2)
		}
	})
}

// problems returns the sorted lines of a validation error.
func problems(err error) []string {
	p := strings.Split(err.Error(), "\n")
	slices.Sort(p)
	return p
}
