package discover_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps pins DESIGN's dependency table for discovery: the standard
// library, miekg/dns (and its golang.org/x packages) and balancer; no
// logger, nothing above balancer, and nothing below imports it back.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{"sluice/l4", "sluice/l7", "sluice/tlsutil", "go.uber.org/zap", "log", "log/slog", "net/http"}
	for dep := range strings.FieldsSeq(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("discover depends on %s", dep)
			}
		}
		if dep == "sluice" {
			t.Error("discover imports package main")
		}
	}
	out, err = exec.Command(goBin, "list", "-deps", "sluice/balancer").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if strings.HasPrefix(dep, "github.com/miekg/dns") || dep == "sluice/balancer/discover" {
			t.Errorf("balancer depends on %s: DNS stays in balancer/discover", dep)
		}
	}
}
