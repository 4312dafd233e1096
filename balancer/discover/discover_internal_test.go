package discover

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestSystemServers: with no servers configured, the resolver asks the
// nameservers of resolv.conf, read at each lookup, and Go's defaults when
// the file lists none or is missing.
func TestSystemServers(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	r, err := NewResolver(nil)
	if err != nil {
		t.Fatal(err)
	}
	r.conf = conf
	defaults := []string{"127.0.0.1:53", "[::1]:53"}
	if got := r.Servers(); !slices.Equal(got, defaults) {
		t.Errorf("missing file: %v", got)
	}
	if err := os.WriteFile(conf, []byte("search example.com\nnameserver 10.1.2.3\nnameserver fd00::53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := r.Servers(), []string{"10.1.2.3:53", "[fd00::53]:53"}; !slices.Equal(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
	if err := os.WriteFile(conf, []byte("nameserver 10.9.9.9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := r.Servers(); !slices.Equal(got, []string{"10.9.9.9:53"}) {
		t.Errorf("after an edit: %v (read once only?)", got)
	}
	if err := os.WriteFile(conf, []byte("# empty\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := r.Servers(); !slices.Equal(got, defaults) {
		t.Errorf("no nameserver line: %v", got)
	}
}
