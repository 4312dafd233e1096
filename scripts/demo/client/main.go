// Command client is the demo's player: it connects to sluice with TLS (an
// SNI of your choice) or raw TCP, sends one line, and prints the certificate
// it saw and the answer.
//
//	go run ./scripts/demo/client -sni echo.localhost
//	go run ./scripts/demo/client -raw
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "sluice listener address")
	sni := flag.String("sni", "echo.localhost", "TLS server name to send (empty: none)")
	raw := flag.Bool("raw", false, "speak raw TCP instead of TLS (routed by the listener's plain_route)")
	msg := flag.String("msg", "ping", "line to send")
	flag.Parse()

	if err := run(*addr, *sni, *raw, *msg); err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func run(addr, sni string, raw bool, msg string) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	var c net.Conn
	var err error
	if raw {
		c, err = d.Dial("tcp", addr)
	} else {
		// The demo backends use self-signed certificates: print, don't verify.
		tc, terr := tls.DialWithDialer(&d, "tcp", addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if terr == nil {
			st := tc.ConnectionState()
			fmt.Printf("TLS %s, certificate: %v\n", tls.VersionName(st.Version), st.PeerCertificates[0].DNSNames)
		}
		c, err = tc, terr
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	sc := bufio.NewScanner(c)
	for i := 0; i < 2 && sc.Scan(); i++ {
		fmt.Println(sc.Text())
	}
	return sc.Err()
}
