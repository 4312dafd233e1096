package l7

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"strings"
)

// noLocationHeader are the response headers a location may not set: the
// hop-by-hop ones (RFC 9110, Section 7.6.1) and those that frame or encode
// the body, which sluice and net/http write.
var noLocationHeader = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Upgrade": true, "Te": true, "Trailer": true, "Proxy-Authenticate": true,
	"Content-Length": true, "Content-Encoding": true, "Content-Range": true,
}

// CheckHeader validates one of a location's response headers: a field
// name that is a token (RFC 9110, Section 5.1), not hop-by-hop nor one
// that frames the body, and a non-empty value without control characters
// (CR and LF included; tab is allowed inside).
func CheckHeader(name, value string) error {
	if name == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(name); i++ {
		if !isTokenChar(name[i]) {
			return fmt.Errorf("header name %q is not a token (letters, digits, !#$%%&'*+-.^_`|~)", name)
		}
	}
	if noLocationHeader[textproto.CanonicalMIMEHeaderKey(name)] {
		return fmt.Errorf("header %q is hop-by-hop or frames the body: sluice sets it", name)
	}
	if strings.TrimSpace(value) == "" {
		return fmt.Errorf("header %q: empty value", name)
	}
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			return fmt.Errorf("header %q: value has a control character (CR, LF...)", name)
		}
	}
	return nil
}

func isTokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// headerWriter adds a location's headers to its 2xx and 3xx responses (304
// included), replacing a backend's field of the same name (Vary: added
// to), like nginx's add_header without "always": not to errors, where
// "Cache-Control: max-age=3600" would keep a 404 or a 502 in browsers, and
// not to a WebSocket's 101, which never reaches a handler here.
type headerWriter struct {
	http.ResponseWriter
	add  http.Header // canonical keys; each value list clipped (cap = len)
	done bool
}

func (w *headerWriter) WriteHeader(code int) {
	if !w.done && code >= 200 {
		w.done = true
		if code < 400 {
			h := w.ResponseWriter.Header()
			for k, vv := range w.add {
				if k == "Vary" {
					h[k] = append(h[k], vv...)
				} else {
					h[k] = vv
				}
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerWriter) Write(b []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *headerWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
}

func (w *headerWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

func (w *headerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
