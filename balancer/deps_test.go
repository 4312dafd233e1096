package balancer

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps pins DESIGN's dependency table: balancer sits at the bottom
// (standard library, go-proxyproto, x/sys) and does not log.
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
	forbidden := []string{"sluice/l4", "sluice/l7", "sluice/tlsutil", "go.uber.org/zap", "log", "log/slog"}
	for dep := range strings.FieldsSeq(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("balancer depends on %s", dep)
			}
		}
		if dep == "sluice" {
			t.Error("balancer imports package main")
		}
	}
}
