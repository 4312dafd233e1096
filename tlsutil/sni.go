package tlsutil

import "strings"

const (
	maxNameLen  = 253 // RFC 1035, Section 2.3.4, without the trailing dot
	maxLabelLen = 63
)

// NormalizeSNI lower-cases an SNI host name (ASCII only) and validates it.
// It returns ("", false) when s is not a usable DNS host name, which callers
// treat exactly like "no SNI" (RELIABILITY T7). It is idempotent.
//
// A valid name is at most 253 bytes of dot-separated labels, each 1 to 63
// bytes of [a-z0-9_-] (after lower-casing) that neither starts nor ends with
// '-'. Rejected:
//   - anything non-ASCII (U-labels must arrive as A-labels, "xn--..."), NUL,
//     '/', control bytes, spaces, ':' and brackets (so every IPv6 literal);
//   - empty labels, so a leading, doubled or trailing dot (crypto/tls already
//     fails the handshake on a trailing dot);
//   - names whose last label is a number (decimal digits, or 0x followed by
//     hex digits): browsers parse such hosts as IPv4 addresses (WHATWG URL
//     "ends in a number"), which covers every IPv4 literal (RFC 6066,
//     Section 3 forbids literals in SNI) and forms like "1.2.3" or "0x7f.1".
//
// '_' is accepted anywhere in a label: it is not LDH, but it occurs in real
// host names, browsers send it, and nginx routes on it.
func NormalizeSNI(s string) (string, bool) {
	if len(s) == 0 || len(s) > maxNameLen {
		return "", false
	}
	upper := false
	labelStart := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '_':
		case 'A' <= c && c <= 'Z':
			upper = true
		case c == '-':
			if i == labelStart {
				return "", false
			}
		case c == '.':
			if i == labelStart || s[i-1] == '-' {
				return "", false
			}
			labelStart = i + 1
			continue
		default:
			return "", false
		}
		if i-labelStart >= maxLabelLen {
			return "", false
		}
	}
	if labelStart == len(s) || s[len(s)-1] == '-' || isNumericLabel(s[labelStart:]) {
		return "", false
	}
	if upper {
		s = strings.ToLower(s) // ASCII only here, so a byte-wise mapping
	}
	return s, true
}

// isNumericLabel reports whether l is a decimal number or "0x" plus hex
// digits, the forms the WHATWG IPv4 parser accepts for a label.
func isNumericLabel(l string) bool {
	if len(l) >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X') {
		for i := 2; i < len(l); i++ {
			c := l[i] | 0x20
			if !('0' <= l[i] && l[i] <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}

// EscapeForLog makes an attacker-controlled string (such as
// ClientHello.RawServerName) safe for one log line: '\\', '\n', '\r' and '\t'
// become two-byte escapes, and every other byte outside printable ASCII
// becomes \xNN (bytes, not runes, so invalid UTF-8 stays visible). The result
// is at most max bytes, cut between escapes; max <= 0 means no limit.
// Printable ASCII input is returned without allocating.
func EscapeForLog(s string, max int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '\\' {
			clean = false
			break
		}
	}
	if clean {
		if max > 0 && len(s) > max {
			return s[:max]
		}
		return s
	}
	const hex = "0123456789abcdef"
	size := len(s) + len(s)/2
	if max > 0 {
		size = min(size, max)
	}
	b := make([]byte, 0, size)
	for i := 0; i < len(s); i++ {
		var e [4]byte
		var w int
		switch c := s[i]; {
		case c == '\\':
			e, w = [4]byte{'\\', '\\'}, 2
		case c == '\n':
			e, w = [4]byte{'\\', 'n'}, 2
		case c == '\r':
			e, w = [4]byte{'\\', 'r'}, 2
		case c == '\t':
			e, w = [4]byte{'\\', 't'}, 2
		case c < 0x20 || c > 0x7e:
			e, w = [4]byte{'\\', 'x', hex[c>>4], hex[c&0xf]}, 4
		default:
			e, w = [4]byte{c}, 1
		}
		if max > 0 && len(b)+w > max {
			break
		}
		b = append(b, e[:w]...)
	}
	return string(b)
}
