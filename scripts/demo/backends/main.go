// Command backends runs sluice's local demo backends: TLS echo servers, each
// with its own self-signed certificate (so a client of an l4 route can see
// that TLS passed through untouched), a raw TCP echo server that reads a
// PROXY protocol header and tells the player its real address, and plain
// HTTP WebSocket "game" servers for the l7 route (sluice terminates wss://
// and forwards ws:// to them).
//
// Each TLS and TCP server answers every line it receives with "<name>: <line>".
// Each WebSocket server (path /ws) answers every text message with
// {"backend":"ws-backend-N","echo":"<the message>","t":<server unix ms>} and
// serves GET /healthz with 200 "ok".
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	proxyproto "github.com/pires/go-proxyproto"

	"sluice/tlsutil"
)

func main() {
	tlsAddrs := flag.String("tls", "127.0.0.1:9101,127.0.0.1:9102", "comma-separated addresses of TLS echo backends")
	proxyAddrs := flag.String("proxy", "127.0.0.1:9201", "comma-separated addresses of raw TCP echo backends that require a PROXY header")
	wsAddrs := flag.String("ws", "127.0.0.1:9301,127.0.0.1:9302", "comma-separated addresses of WebSocket game backends (plain HTTP: /ws and /healthz)")
	flag.Parse()

	for i, addr := range split(*tlsAddrs) {
		name := fmt.Sprintf("tls-backend-%d", i+1)
		cert, err := tlsutil.SelfSigned([]string{"echo.localhost", "*.echo.localhost", name + ".localhost"}, 0)
		if err != nil {
			log.Fatal(err)
		}
		ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		log.Printf("%s listening on %s (certificate for %s.localhost)", name, addr, name)
		go serve(ln, name)
	}
	for i, addr := range split(*proxyAddrs) {
		name := fmt.Sprintf("tcp-backend-%d", i+1)
		raw, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		ln := &proxyproto.Listener{
			Listener:          raw,
			ReadHeaderTimeout: 3 * time.Second,
			ConnPolicy:        func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil },
		}
		log.Printf("%s listening on %s (requires a PROXY header)", name, addr)
		go serve(ln, name)
	}
	for i, addr := range split(*wsAddrs) {
		name := fmt.Sprintf("ws-backend-%d", i+1)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		log.Printf("%s listening on %s (WebSocket on /ws, GET /healthz)", name, addr)
		srv := &http.Server{Handler: wsHandler(name), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Printf("%s: serve: %v", name, err)
			}
		}()
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

func serve(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("%s: accept: %v", name, err)
			return
		}
		go echo(c, name)
	}
}

func echo(c net.Conn, name string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	sc := bufio.NewScanner(c)
	first := true
	for sc.Scan() {
		if first {
			// RemoteAddr is the player's address when a PROXY header was read.
			fmt.Fprintf(c, "%s: hello %s\n", name, c.RemoteAddr())
			first = false
		}
		if _, err := fmt.Fprintf(c, "%s: %s\n", name, sc.Text()); err != nil {
			return
		}
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// wsHandler is one WebSocket game backend: /ws echoes every message with the
// backend's name and its clock, /healthz answers "ok".
func wsHandler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		// The browser's Origin (https://localhost:8443) is forwarded by the
		// proxy; this demo accepts any origin.
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			log.Printf("%s: accept from %s: %v", name, r.RemoteAddr, err)
			return
		}
		client := r.RemoteAddr
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			client = xff
		}
		log.Printf("%s: %s connected (via %s, origin %q)", name, client, r.RemoteAddr, r.Header.Get("Origin"))
		n, err := wsEcho(r.Context(), c, name, client)
		log.Printf("%s: %s gone after %d messages: %v", name, client, n, err)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, name+": WebSocket on /ws, health on /healthz", http.StatusNotFound)
	})
	return mux
}

type wsReply struct {
	Backend string `json:"backend"`
	Echo    string `json:"echo"`
	T       int64  `json:"t"`
	Client  string `json:"client"`
}

// wsEcho answers every text message with a wsReply and every binary message
// with the same bytes, until the connection ends or stays silent 10 minutes.
func wsEcho(ctx context.Context, c *websocket.Conn, name, client string) (int, error) {
	defer c.CloseNow()
	for n := 0; ; n++ {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		typ, msg, err := c.Read(rctx)
		cancel()
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure || websocket.CloseStatus(err) == websocket.StatusGoingAway {
				err = nil
			}
			return n, err
		}
		out := msg
		if typ == websocket.MessageText {
			out, err = json.Marshal(wsReply{Backend: name, Echo: string(msg), T: time.Now().UnixMilli(), Client: client})
			if err != nil {
				return n, err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.Write(wctx, typ, out)
		cancel()
		if err != nil {
			return n, err
		}
	}
}
