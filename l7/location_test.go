package l7

import (
	"strings"
	"testing"
)

// The location rules are checked in one place, for the config check (pools
// by name) and NewRoute (pools built) alike.
func TestCheckLocations(t *testing.T) {
	locs := []Location{
		{Path: "static/", Root: "/srv"},                                            // 0: path
		{Path: "/b/", Root: "/srv", Redirect: "https://x.example/"},                // 1: two things
		{Path: "/a/", Root: "/srv"},                                                // 2: fine
		{Path: "/a/", Root: "/srv"},                                                // 3: duplicate
		{Path: "/r", Redirect: "/relative"},                                        // 4: redirect
		{Path: "/h", Root: "/srv", Headers: map[string]string{"A": "1", "a": "2"}}, // 5: same header
		{Path: "/f", Redirect: "https://x.example/", Fallback: "i.html"},           // 6: fallback without root
		{Path: "/g", Root: "/srv", Fallback: "../etc/passwd"},                      // 7: fallback escapes
		{Path: "/p"}, // 8: a pool (hasPool)
		{Path: "/n"}, // 9: nothing
	}
	want := []string{
		"locations[0].path", "locations[1]: set exactly one", "locations[3].path: duplicate",
		"locations[4].redirect", "locations[5].headers", "locations[6].fallback: only for a root",
		"locations[7].fallback", "locations[9]: set exactly one",
	}
	errs := CheckLocations(locs, func(i int) bool { return i == 8 })
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("problem %d: %q, want %q...", i, got[i], w)
		}
	}

	// NewRoute refuses a list that breaks them, with the same words.
	_, err := NewRoute(RouteConfig{Name: "r", Locations: []Location{{Path: "/x", Root: "/srv", Fallback: ".env"}}})
	if err == nil || !strings.Contains(err.Error(), "locations[0].fallback") {
		t.Fatalf("NewRoute: %v", err)
	}
}
