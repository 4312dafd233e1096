package l7

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// LocationError is one broken location rule: the location's index in the
// list, the key at fault ("path", "headers", "fallback", "redirect", or ""
// for the location as a whole) and what is wrong.
type LocationError struct {
	Index int
	Key   string
	Err   error
}

func (e *LocationError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("locations[%d]: %v", e.Index, e.Err)
	}
	return fmt.Sprintf("locations[%d].%s: %v", e.Index, e.Key, e.Err)
}

func (e *LocationError) Unwrap() error { return e.Err }

// CheckLocations applies the rules every list of locations must meet, with
// or without its pools built (the config check has only their names, so
// hasPool says whether location i has one): a Path starts with "/" and
// appears once; exactly one of a pool, Root and Redirect is set; Redirect
// is an absolute http(s) URL; Headers pass CheckHeader and name no header
// twice (names are case-insensitive); Fallback goes only with Root and is a
// path under it, without empty, "." or ".." segments or dot files. It
// reports every problem. That Root is a directory and Fallback a file in it
// is the caller's to check (NewRoute touches no file).
//
// These rules live here only: the config check and NewRoute both call it.
func CheckLocations(locs []Location, hasPool func(i int) bool) []*LocationError {
	var errs []*LocationError
	bad := func(i int, key, format string, a ...any) {
		errs = append(errs, &LocationError{Index: i, Key: key, Err: fmt.Errorf(format, a...)})
	}
	seen := map[string]bool{}
	for i, l := range locs {
		switch {
		case !strings.HasPrefix(l.Path, "/"):
			bad(i, "path", "must start with \"/\", got %q", l.Path)
			continue
		case seen[l.Path]:
			bad(i, "path", "duplicate location %q", l.Path)
			continue
		}
		seen[l.Path] = true
		n := 0
		for _, set := range []bool{hasPool(i), l.Root != "", l.Redirect != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			bad(i, "", "set exactly one of pool, root or redirect")
			continue
		}
		if l.Redirect != "" {
			if u, err := url.Parse(l.Redirect); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(i, "redirect", "must be an absolute http(s) URL, got %q", l.Redirect)
			}
		}
		names := map[string]string{}
		for _, k := range slices.Sorted(maps.Keys(l.Headers)) {
			if err := CheckHeader(k, l.Headers[k]); err != nil {
				bad(i, "headers", "%v", err)
				continue
			}
			lk := strings.ToLower(k)
			if other, dup := names[lk]; dup {
				bad(i, "headers", "%q and %q are the same header", other, k)
			}
			names[lk] = k
		}
		if l.Fallback == "" {
			continue
		}
		if l.Root == "" {
			bad(i, "fallback", "only for a root location")
			continue
		}
		for seg := range strings.SplitSeq(strings.TrimPrefix(l.Fallback, "/"), "/") {
			if seg == "" || strings.HasPrefix(seg, ".") {
				bad(i, "fallback", "%q must be a file path under root, without empty, . or .. segments or dot files", l.Fallback)
				break
			}
		}
	}
	return errs
}
