package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"sluice/l7"
)

// roomServer is a game server behind an l7 WebSocket route: it hosts the
// rooms (query parameter room) it was asked for, sends its name as the
// first message, then holds the connection. Asked with
// l7.SecondChanceHeader for a room it does not host, it answers 404
// ("unknown room") instead of creating it.
type roomServer struct {
	name    string
	addr    string
	unknown atomic.Int64 // 404s answered

	mu    sync.Mutex
	rooms map[string]bool
}

func startRoomServer(t *testing.T, name string) *roomServer {
	t.Helper()
	rs := &roomServer{name: name, rooms: map[string]bool{}}
	ln := listenTCP(t)
	rs.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(rs.serve)}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return rs
}

func (rs *roomServer) serve(w http.ResponseWriter, r *http.Request) {
	room := r.URL.Query().Get("room")
	rs.mu.Lock()
	hosted := rs.rooms[room]
	if !hosted && r.Header.Get(l7.SecondChanceHeader) != "" {
		rs.mu.Unlock()
		rs.unknown.Add(1)
		http.Error(w, "unknown room", http.StatusNotFound)
		return
	}
	rs.rooms[room] = true
	rs.mu.Unlock()
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer ws.CloseNow()
	if ws.Write(r.Context(), websocket.MessageText, []byte(rs.name)) != nil {
		return
	}
	_, _, _ = ws.Read(r.Context()) // until the player leaves
}

const secondChanceConfig = `
[listeners.dev]
address = "127.0.0.1:0"
tls = false
max_connections_per_ip = 0
new_connections_per_ip = { rate = 0 }
[routes.game]
listener = "dev"
sni = ["game.test"]
mode = "l7"
pool = "rooms"
[pools.rooms]
balance = "hash"
hash_key = "query:room"
health = { check = "none" }
%s
backends = [%s]
`

func roomBackends(ss ...*roomServer) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("{ id = %q, address = %q }", s.name, s.addr)
	}
	return out
}

// joinRoom opens ws://game.test/ws?room=room through sluice at addr and
// returns the game server's name; the connection stays open until the
// test ends.
func joinRoom(t *testing.T, addr net.Addr, room string) string {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
	}}
	t.Cleanup(tr.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://game.test/ws?room="+room, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatalf("room %s: %v", room, err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	_, name, err := ws.Read(ctx)
	if err != nil {
		t.Fatalf("room %s: %v", room, err)
	}
	return string(name)
}

// TestSecondChanceKeepsRoomsWhole: 60 rooms with a live player each on 2
// game servers; a 3rd joins by a reload; every room gets a second player.
// Without second_chance_status the rooms whose key the new server took
// are split (about 1/3); with it none is: the new server answers 404 for
// a room it does not host and sluice sends the player to the room's
// previous owner. Rooms created after the join still go to their owner,
// the new server included, and stay whole.
func TestSecondChanceKeepsRoomsWhole(t *testing.T) {
	const rooms = 60
	split := func(t *testing.T, key string) (splits int, c *roomServer, f *fileLB) {
		a, b := startRoomServer(t, "gs-a"), startRoomServer(t, "gs-b")
		c = startRoomServer(t, "gs-c")
		f = startFileLB(t, fmt.Sprintf(secondChanceConfig, key, roomBackends(a, b)))
		first := map[string]string{}
		for i := range rooms {
			room := "r" + strconv.Itoa(i)
			first[room] = joinRoom(t, f.addr("dev"), room)
		}
		f.write(t, fmt.Sprintf(secondChanceConfig, key, roomBackends(a, b, c)))
		must(t, f.reload())
		for room, was := range first {
			if got := joinRoom(t, f.addr("dev"), room); got != was {
				splits++
			}
		}
		return splits, c, f
	}

	without, _, _ := split(t, "")
	if without == 0 {
		t.Fatal("no room split without second chance: the join moved no key, the test proves nothing")
	}
	with, c, f := split(t, "second_chance_status = 404")
	if with != 0 {
		t.Fatalf("%d of %d rooms split with second chance", with, rooms)
	}
	unknown := c.unknown.Load()
	if unknown == 0 {
		t.Fatal("the new server was never asked: no key moved to it")
	}
	t.Logf("a 3rd server joining split %d of %d live rooms without second chance, %d with it (%d unknown-room answers)", without, rooms, with, unknown)

	// Rooms created after the join: on their owner (the new server for
	// some: the previous owner does not host them either), and whole.
	onC := 0
	for i := range 30 {
		room := "new" + strconv.Itoa(i)
		was := joinRoom(t, f.addr("dev"), room)
		if was == "gs-c" {
			onC++
		}
		if got := joinRoom(t, f.addr("dev"), room); got != was {
			t.Fatalf("new room %s split: %s, then %s", room, was, got)
		}
	}
	if onC == 0 {
		t.Error("no room created after the join went to the new server")
	}
}

// second_chance_status takes a 4xx or 5xx status, with balance = "hash"
// only; second_chance_window a positive duration.
func TestSecondChanceConfig(t *testing.T) {
	for _, tc := range []struct{ keys, want string }{
		{"balance = \"hash\"\nhash_key = \"query:room\"\nsecond_chance_status = 200", "pools.p.second_chance_status: must be 0 (off) or a status from 400 to 599"},
		{"second_chance_status = 404", "pools.p.second_chance_status: only used with balance = \"hash\""},
		{"balance = \"hash\"\nhash_key = \"query:room\"\nsecond_chance_status = 404\nsecond_chance_window = \"0s\"", "pools.p.second_chance_window"},
	} {
		c, err := DecodeConfig([]byte("[listeners.l]\naddress = \"127.0.0.1:0\"\ntls = false\nplain_route = \"r\"\n[routes.r]\nlistener = \"l\"\npool = \"p\"\n[pools.p]\n" + tc.keys + "\nbackends = [{ address = \"127.0.0.1:9\" }]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.keys, err, tc.want)
		}
	}
}
