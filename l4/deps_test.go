package l4

import (
	"os/exec"
	"strings"
	"testing"
)

// l4 sits below l7 and main (shared/STYLE.md "Dependency direction"): it may
// import balancer, zap and x/sys, never a package above it.
func TestNoUpwardImports(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool:", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "sluice/l4").Output()
	if err != nil {
		t.Skip("go list:", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "sluice" || dep == "sluice/l7" || dep == "sluice/tlsutil" {
			t.Errorf("l4 imports %s", dep)
		}
	}
}
