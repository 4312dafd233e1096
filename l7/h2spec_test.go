package l7

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/summerwind/h2spec"
	"github.com/summerwind/h2spec/config"

	"sluice/balancer"
)

// h2spec (github.com/summerwind/h2spec), the HTTP/2 conformance suite,
// in strict mode against sluice's HTTP/2 server: every test case of RFC
// 7540/9113 and RFC 7541 (HPACK) that it has must pass.
func TestH2Spec(t *testing.T) {
	if testing.Short() {
		t.Skip("h2spec opens about 150 connections")
	}
	be := startWSBackend(t, nil)
	p := poolOf(t, balancer.PoolConfig{}, 0, be.addr)
	l := startLB(t, RouteConfig{Name: "spec", TLS: serverTLS(), HTTP2: true,
		Locations: []Location{{Path: "/", Pool: p}}})
	host, port, _ := net.SplitHostPort(l.addr)
	n, _ := strconv.Atoi(port)
	ok, err := h2spec.Run(&config.Config{Host: host, Port: n, Path: "/", Timeout: 5 * time.Second,
		MaxHeaderLen: 4000, TLS: true, Insecure: true, Strict: true})
	if err != nil || !ok {
		t.Fatalf("h2spec: failed (%v); its report is above", err)
	}
}
