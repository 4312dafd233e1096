package l7

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// Response compression (issue 10): gzip of text responses, as nginx's gzip
// module does it. Static locations serve precompressed .br/.gz files and
// keep a gzipped copy of small files (static.go); proxied responses and
// large static files are compressed as they are written (gzipWriter).

// minCompressSize is nginx's gzip_min_length advice: a body shorter than
// this gains little and costs a gzip header and trailer (18 bytes) and CPU.
const minCompressSize = 1024

// proxyGzipLevel compresses proxied responses and large static files on
// the fly: klauspost's level 5, its default, several times faster than
// compress/gzip's at the same ratio; cached static files use level 9, once.
const proxyGzipLevel = 5

// acceptEncoding returns the weights (0-1000, RFC 9110 Section 12.4.2) that
// the Accept-Encoding field lines vs give gzip and br: 0 for a coding not
// acceptable. No header: neither (the client gets identity, as nginx does).
// A coding not listed gets the weight of "*" if present; "x-gzip" is gzip
// (RFC 9110, Section 8.4.1.3). A malformed weight makes its element
// unacceptable.
func acceptEncoding(vs []string) (gz, br int) {
	gz, br = -1, -1
	star := 0
	for _, v := range vs {
		for elem := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(elem, ";")
			coding = strings.TrimSpace(coding)
			if coding == "" {
				continue
			}
			q := qvalue(params)
			switch {
			case strings.EqualFold(coding, "gzip"), strings.EqualFold(coding, "x-gzip"):
				gz = max(gz, q)
			case strings.EqualFold(coding, "br"):
				br = max(br, q)
			case coding == "*":
				star = max(star, q)
			}
		}
	}
	if gz < 0 {
		gz = star
	}
	if br < 0 {
		br = star
	}
	return gz, br
}

// qvalue parses the parameters after a coding (";q=0.5"): the weight in
// thousandths, 1000 if there is none, 0 if it is malformed.
// RFC 9110, Section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ).
func qvalue(params string) int {
	q := 1000
	for p := range strings.SplitSeq(params, ";") {
		k, v, ok := strings.Cut(p, "=")
		k = strings.TrimSpace(k)
		if !ok || !(k == "q" || k == "Q") {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" || len(v) > 5 || (v[0] != '0' && v[0] != '1') {
			return 0
		}
		n := int(v[0]-'0') * 1000
		if len(v) > 1 {
			if v[1] != '.' {
				return 0
			}
			scale := 100
			for _, c := range []byte(v[2:]) {
				if c < '0' || c > '9' {
					return 0
				}
				n += int(c-'0') * scale
				scale /= 10
			}
		}
		if n > 1000 {
			return 0
		}
		q = n
	}
	return q
}

// compressible reports whether a Content-Type is worth gzipping: text,
// scripts, JSON, XML, SVG, wasm and uncompressed fonts. Images, audio,
// video, woff/woff2, archives and application/octet-stream are compressed
// already (or unknown): nginx's gzip_types with what an H5 client loads.
// text/event-stream is left alone: each event must reach the client as it
// comes.
func compressible(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok {
		return false
	}
	switch typ {
	case "text":
		return sub != "event-stream"
	case "application":
		switch sub {
		case "javascript", "x-javascript", "ecmascript", "json", "xml", "wasm", "x-ndjson",
			"vnd.ms-fontobject", "x-font-ttf", "x-font-otf", "x-font-opentype", "toml", "yaml", "x-yaml":
			return true
		}
		return strings.HasSuffix(sub, "+json") || strings.HasSuffix(sub, "+xml")
	case "image":
		return sub == "svg+xml" || sub == "x-icon" || sub == "vnd.microsoft.icon" || sub == "bmp"
	case "font":
		return sub == "ttf" || sub == "otf" || sub == "collection"
	}
	return false
}

// gzipWriter compresses a response if its head allows it, decided when the
// head is written: a status with a body (not 1xx, 204, 206 or 304), no
// Content-Encoding or Content-Range, no Cache-Control: no-transform
// (RFC 9111, Section 5.2.2.6), a compressible Content-Type and a
// Content-Length of at least minCompressSize or none (a stream; nginx
// compresses those too). Whoever wraps a request in one has checked that
// the method is not HEAD and that the request has no Range. A compressed
// response loses its Content-Length and Accept-Ranges, its ETag becomes
// weak (nginx does the same) and it gets Content-Encoding: gzip; any
// response it could compress gets Vary: Accept-Encoding, also when the
// client does not accept gzip (accept false), for caches.
type gzipWriter struct {
	w       http.ResponseWriter
	accept  bool // the client accepts gzip
	decided bool
	zw      *gzip.Writer // set when compressing
}

var gzipWriters sync.Pool // *gzip.Writer at proxyGzipLevel

func newGzipWriter(w http.ResponseWriter, accept bool) *gzipWriter {
	return &gzipWriter{w: w, accept: accept}
}

func (g *gzipWriter) Header() http.Header { return g.w.Header() }

func (g *gzipWriter) WriteHeader(code int) {
	if code < 200 || g.decided {
		g.w.WriteHeader(code)
		return
	}
	g.decided = true
	h := g.w.Header()
	if g.eligible(code, h) {
		addVary(h)
		if g.accept {
			delete(h, "Content-Length")
			delete(h, "Accept-Ranges")
			h.Set("Content-Encoding", "gzip")
			if et := h.Get("Etag"); strings.HasPrefix(et, `"`) {
				h.Set("Etag", "W/"+et)
			}
			if zw, ok := gzipWriters.Get().(*gzip.Writer); ok {
				zw.Reset(g.w)
				g.zw = zw
			} else {
				g.zw, _ = gzip.NewWriterLevel(g.w, proxyGzipLevel) // a valid level: no error
			}
		}
	}
	g.w.WriteHeader(code)
}

// eligible reports whether a response with this status and head is one
// gzipWriter compresses.
func (g *gzipWriter) eligible(code int, h http.Header) bool {
	switch code {
	case http.StatusNoContent, http.StatusPartialContent, http.StatusNotModified:
		return false
	}
	if ce := h.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") || h.Get("Content-Range") != "" {
		return false
	}
	if headerHasToken(h["Cache-Control"], "no-transform") || !compressible(h.Get("Content-Type")) {
		return false
	}
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err != nil || n < minCompressSize {
			return false
		}
	}
	return true
}

func (g *gzipWriter) Write(b []byte) (int, error) {
	if !g.decided {
		g.WriteHeader(http.StatusOK)
	}
	if g.zw != nil {
		return g.zw.Write(b)
	}
	return g.w.Write(b)
}

// ReadFrom copies with a pooled buffer into the compressor, or lets the
// next writer read (http.ServeContent's io.Copy: see statusWriter).
func (g *gzipWriter) ReadFrom(r io.Reader) (int64, error) {
	if !g.decided {
		g.WriteHeader(http.StatusOK)
	}
	if g.zw == nil {
		if rf, ok := g.w.(io.ReaderFrom); ok {
			return rf.ReadFrom(r)
		}
	}
	bp := copyBuffers.get()
	defer copyBuffers.put(bp)
	return io.CopyBuffer(struct{ io.Writer }{g.zw}, struct{ io.Reader }{r}, *bp)
}

// Flush sends what the compressor holds (a sync flush), then the
// response's buffer: a stream stays a stream.
func (g *gzipWriter) Flush() {
	if g.zw != nil {
		_ = g.zw.Flush()
	}
	_ = http.NewResponseController(g.w).Flush()
}

func (g *gzipWriter) Unwrap() http.ResponseWriter { return g.w }

// finish ends the compressed stream (its trailer) and returns the
// compressor to the pool. Not called when the handler panicked: the
// response is cut, and the compressor is left to the garbage collector.
func (g *gzipWriter) finish() error {
	if g.zw == nil {
		return nil
	}
	err := g.zw.Close()
	g.zw.Reset(io.Discard) // drop the reference to the response
	gzipWriters.Put(g.zw)
	g.zw = nil
	return err
}

// addVary adds Accept-Encoding to Vary unless it is listed (or "*").
func addVary(h http.Header) {
	if headerHasToken(h["Vary"], "Accept-Encoding") || headerHasToken(h["Vary"], "*") {
		return
	}
	h["Vary"] = append(h["Vary"], "Accept-Encoding")
}
