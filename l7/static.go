package l7

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
)

// Content types the H5 client needs, set whatever /etc/mime.types says (or
// whether it exists): a module script served as anything but JavaScript, or
// wasm as anything but application/wasm, does not load.
func init() {
	for ext, typ := range map[string]string{
		".html":  "text/html; charset=utf-8",
		".htm":   "text/html; charset=utf-8",
		".js":    "text/javascript; charset=utf-8",
		".mjs":   "text/javascript; charset=utf-8",
		".css":   "text/css; charset=utf-8",
		".json":  "application/json",
		".map":   "application/json",
		".wasm":  "application/wasm",
		".png":   "image/png",
		".jpg":   "image/jpeg",
		".jpeg":  "image/jpeg",
		".gif":   "image/gif",
		".svg":   "image/svg+xml",
		".webp":  "image/webp",
		".ico":   "image/vnd.microsoft.icon",
		".txt":   "text/plain; charset=utf-8",
		".woff2": "font/woff2",
		".mp3":   "audio/mpeg",
		".ogg":   "audio/ogg",
	} {
		_ = mime.AddExtensionType(ext, typ)
	}
}

// static serves root under prefix (a location's Path, stripped): index.html
// for a directory (a directory named without its trailing slash is
// redirected to it, 301), no directory listings and no dot files (404), a
// Content-Type by extension (else sniffed), and what http.ServeContent does
// with the ETag set here: Last-Modified, conditional requests (304, 412)
// and ranges. Small files are kept in memory (fileCache).
//
// With compress, a compressible type (compress.go) is answered to a GET
// without Range by, in this order: name.br if the client takes br at least
// as gladly as gzip, name.gz, then (gzip accepted) the cached file's
// gzipped copy (made once, level 9), or for a file not in the cache a gzip
// stream; always with the original's Content-Type and Vary:
// Accept-Encoding. A .br or .gz file has its own ETag, a compressed copy
// the original's as a weak one (nginx's gzip_static and gzip do the same).
//
// With fallback (a clean path under root, "/index.html"), a GET or HEAD
// with no file to serve (missing, hidden, or a directory without
// index.html) gets that file with 200: nginx's try_files $uri $uri/
// /index.html, for a single-page app's client-side routes.
type static struct {
	prefix   string
	fs       staticFS
	fallback string
	compress bool
}

func newStatic(prefix, root, fallback string, compress bool) *static {
	return &static{prefix: prefix, fs: staticFS{dir: http.Dir(root), cache: &fileCache{}}, fallback: fallback, compress: compress}
}

func (s *static) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rel := strings.TrimPrefix(r.URL.Path, s.prefix)
	name := path.Clean("/" + rel)
	f, st, err := s.open(name)
	if err == nil && st.IsDir() {
		f.Close()
		if !strings.HasSuffix(r.URL.Path, "/") {
			localRedirect(w, r)
			return
		}
		name = path.Join(name, "index.html")
		if f, st, err = s.open(name); err == nil && st.IsDir() {
			f.Close()
			err = fs.ErrNotExist
		}
	}
	if errors.Is(err, fs.ErrNotExist) && s.fallback != "" {
		name = s.fallback
		if f, st, err = s.open(name); err == nil && st.IsDir() {
			f.Close()
			err = fs.ErrNotExist
		}
	}
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			http.Error(w, "404 page not found", http.StatusNotFound)
		case errors.Is(err, fs.ErrPermission):
			http.Error(w, "403 Forbidden", http.StatusForbidden)
		default:
			http.Error(w, "500 Internal Server Error", http.StatusInternalServerError)
		}
		return
	}
	defer f.Close()
	s.serveFile(w, r, name, f, st)
}

// open opens name and stats it.
func (s *static) open(name string) (http.File, fs.FileInfo, error) {
	f, err := s.fs.Open(name)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// localRedirect sends a directory named without its trailing slash to it,
// as a relative reference ("./dir/?query", like http.FileServer's): never
// "//host/", whatever the path.
func localRedirect(w http.ResponseWriter, r *http.Request) {
	u := url.URL{Path: "./" + path.Base(r.URL.Path) + "/", RawQuery: r.URL.RawQuery}
	w.Header().Set("Location", u.String())
	w.WriteHeader(http.StatusMovedPermanently)
}

// serveFile answers r with the file f (name, st), or a compressed form.
func (s *static) serveFile(w http.ResponseWriter, r *http.Request, name string, f http.File, st fs.FileInfo) {
	h := w.Header()
	ctype := mime.TypeByExtension(path.Ext(name))
	mf, _ := f.(*memFile)
	if s.compress && ctype != "" && compressible(ctype) {
		addVary(h)
		if r.Method == http.MethodGet && len(r.Header["Range"]) == 0 && s.serveCompressed(w, r, name, ctype, mf, f, st) {
			return
		}
	}
	if ctype != "" {
		h.Set("Content-Type", ctype)
	}
	if mf != nil {
		h["Etag"] = mf.entry.etag
	} else {
		h["Etag"] = []string{etag(st)}
	}
	http.ServeContent(w, r, name, st.ModTime(), f)
}

// serveCompressed serves a compressed form of the file if the client
// takes one; false if it served nothing.
func (s *static) serveCompressed(w http.ResponseWriter, r *http.Request, name, ctype string, mf *memFile, f http.File, st fs.FileInfo) bool {
	gz, br := acceptEncoding(r.Header["Accept-Encoding"])
	if gz == 0 && br == 0 {
		return false
	}
	h := w.Header()
	haveBr, haveGz := true, true // unknown: try
	if mf != nil {
		haveBr, haveGz = s.precompressed(mf.entry, name)
	}
	for _, pre := range [...]struct {
		ext, coding string
		q           int
		have        bool
	}{{".br", "br", br, haveBr}, {".gz", "gzip", gz, haveGz}} {
		if pre.q == 0 || !pre.have || pre.coding == "br" && br < gz {
			continue
		}
		pf, pst, err := s.open(name + pre.ext)
		if err != nil {
			continue
		}
		if !pst.Mode().IsRegular() {
			pf.Close()
			continue
		}
		h.Set("Content-Type", ctype)
		h.Set("Content-Encoding", pre.coding)
		if pm, ok := pf.(*memFile); ok {
			h["Etag"] = pm.entry.etag
		} else {
			h["Etag"] = []string{etag(pst)}
		}
		http.ServeContent(w, r, name, pst.ModTime(), pf)
		pf.Close()
		return true
	}
	if gz == 0 || st.Size() < minCompressSize {
		return false
	}
	if mf != nil {
		z := s.fs.cache.compressed(mf.entry)
		if z == nil {
			return false // does not shrink
		}
		h.Set("Content-Type", ctype)
		h.Set("Content-Encoding", "gzip")
		h["Etag"] = mf.entry.weakETag
		http.ServeContent(w, r, name, st.ModTime(), bytes.NewReader(z))
		return true
	}
	h.Set("Content-Type", ctype)
	h["Etag"] = []string{etag(st)} // made weak if compressed
	g := newGzipWriter(w, true)
	http.ServeContent(g, r, name, st.ModTime(), f)
	_ = g.finish() // a failed write fails the response (route.go's unhold)
	return true
}

// variantTTL is how long a cached file's answer to "is there a .br or .gz
// next to it" is trusted: a precompressed file added next to an unchanged
// file is served within this time, and a request does not pay two failed
// open(2)s (13 of the 27 allocations of BenchmarkStaticHandler's gzip
// case). A changed file is a new cache entry, asked again at once.
const variantTTL = 2 * time.Second

type variants struct {
	at     time.Time
	br, gz bool
}

// precompressed reports whether name (cached as e) has a .br and a .gz
// file next to it, as seen within variantTTL.
func (s *static) precompressed(e *cachedFile, name string) (br, gz bool) {
	if v := e.variants.Load(); v != nil && time.Since(v.at) < variantTTL {
		return v.br, v.gz
	}
	v := &variants{at: time.Now(), br: s.exists(name + ".br"), gz: s.exists(name + ".gz")}
	e.variants.Store(v)
	return v.br, v.gz
}

func (s *static) exists(name string) bool {
	f, err := s.fs.Open(name)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// etag is a file's entity tag: its modification time (ns) and size in hex,
// nginx's form with nanoseconds ("%x-%x").
func etag(st fs.FileInfo) string {
	b := make([]byte, 0, 32)
	b = append(b, '"')
	b = strconv.AppendInt(b, st.ModTime().UnixNano(), 16)
	b = append(b, '-')
	b = strconv.AppendInt(b, st.Size(), 16)
	b = append(b, '"')
	return string(b)
}

type staticFS struct {
	dir   http.Dir
	cache *fileCache
}

func (s staticFS) Open(name string) (http.File, error) {
	for seg := range strings.SplitSeq(name, "/") {
		if strings.HasPrefix(seg, ".") {
			return nil, fs.ErrNotExist
		}
	}
	if f := s.cache.open(name); f != nil {
		return f, nil
	}
	f, err := s.dir.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		idx, err := s.dir.Open(path.Join(name, "index.html"))
		if err != nil {
			f.Close()
			return nil, fs.ErrNotExist
		}
		idx.Close()
		return f, nil
	}
	if m := s.cache.fill(s.dir, name, f, st); m != nil {
		f.Close()
		return m, nil
	}
	return f, nil
}

// Limits of a static location's file cache: files up to maxCachedFile
// bytes, up to maxCacheBytes in all; larger ones are read from disk on each
// request, as before.
const (
	maxCachedFile  = 256 << 10
	maxCacheBytes  = 32 << 20
	maxCachedFiles = 4096
)

// fileCache keeps the bytes of small static files. A hit costs at most
// one stat(2) of the path per cacheRecheck, which must still name the same
// file (device and inode) with the same size, mode and modification time,
// instead of open, fstat, reads and close (issue 10's http-static bench: 15
// syscalls per request down to 5, then 4). What static derives from the file (ETag, Last-Modified, ranges,
// conditional requests, Content-Type) is unchanged: it gets the cached
// FileInfo and a seekable reader over the same bytes.
type fileCache struct {
	mu    sync.RWMutex
	files map[string]*cachedFile // by the name static opened
	bytes int64
}

type cachedFile struct {
	name     string // the key: the name static opened
	full     string // the path on disk, as http.Dir joined it
	info     fs.FileInfo
	data     []byte
	etag     []string // etag(info), a header value; clipped (cap = len)
	weakETag []string // of the gzipped copy: W/ and etag

	variants atomic.Pointer[variants] // static.precompressed's answer

	checked atomic.Int64 // when it was last found on disk (sinceStart)

	gzOnce sync.Once
	gz     []byte // the gzipped copy, made once; nil if it does not shrink
	cost   int64  // bytes counted in fileCache.bytes (c.mu)
}

// compressed returns e's gzipped copy, made at the first call (level 9:
// once per file version), or nil if gzip does not make it at least 5%
// smaller. The copy counts towards maxCacheBytes while e is in the cache.
func (c *fileCache) compressed(e *cachedFile) []byte {
	e.gzOnce.Do(func() {
		var buf bytes.Buffer
		buf.Grow(len(e.data) / 2)
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // a valid level: no error
		_, _ = zw.Write(e.data)                                  // into memory: no error
		_ = zw.Close()
		if buf.Len() > len(e.data)-len(e.data)/20 {
			return
		}
		z := bytes.Clone(buf.Bytes())
		c.mu.Lock()
		e.gz = z
		if c.files[e.name] == e {
			e.cost += int64(len(z))
			c.bytes += int64(len(z))
		}
		c.mu.Unlock()
	})
	return e.gz
}

// cacheRecheck is how long a cached file is served before open checks it
// against the disk again: a changed, replaced or removed file is seen
// within it (nginx's open_file_cache_valid, 60 s there). The stat of every
// hit was 7 % of sluice's CPU on the http-static bench row. A variable for
// tests.
var cacheRecheck atomic.Int64

func init() { cacheRecheck.Store(int64(time.Second)) }

// cacheEpoch makes sinceStart monotonic: a step of the wall clock neither
// keeps a stale file nor checks early.
var cacheEpoch = time.Now()

func sinceStart() int64 { return int64(time.Since(cacheEpoch)) }

// open returns the cached file for name if it is still the file on disk,
// as found within cacheRecheck.
func (c *fileCache) open(name string) http.File {
	c.mu.RLock()
	e := c.files[name]
	c.mu.RUnlock()
	if e == nil {
		return nil
	}
	if now := sinceStart(); now-e.checked.Load() >= cacheRecheck.Load() {
		st, err := os.Stat(e.full)
		if err != nil || !sameFile(e.info, st) {
			c.mu.Lock()
			if c.files[name] == e {
				delete(c.files, name)
				c.bytes -= e.cost
			}
			c.mu.Unlock()
			return nil
		}
		e.checked.Store(now)
	}
	return &memFile{Reader: bytes.NewReader(e.data), entry: e}
}

// fill reads f (opened by dir for name, st its FileInfo) into the cache
// if it is a small regular file and there is room, and returns it in
// memory; nil if it is not cached (f is then still to be used).
func (c *fileCache) fill(dir http.Dir, name string, f http.File, st fs.FileInfo) http.File {
	if !st.Mode().IsRegular() || st.Size() > maxCachedFile {
		return nil
	}
	c.mu.RLock()
	noRoom := c.bytes+st.Size() > maxCacheBytes || len(c.files) >= maxCachedFiles
	c.mu.RUnlock()
	if noRoom {
		return nil
	}
	// The path http.Dir.Open opened (net/http/fs.go), checked below to
	// be the same file, so a hit stats what a miss would open.
	rel, err := filepath.Localize(path.Clean("/" + name)[1:])
	if err != nil || rel == "" {
		return nil
	}
	p := filepath.Join(string(dir), rel)
	if string(dir) == "" {
		p = filepath.Join(".", rel)
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		_, _ = f.Seek(0, io.SeekStart) // served from disk, as before
		return nil
	}
	// Unchanged while it was read, and p is that file.
	after, err1 := f.Stat()
	onDisk, err2 := os.Stat(p)
	if err1 != nil || err2 != nil || !sameFile(st, after) || !sameFile(st, onDisk) {
		_, _ = f.Seek(0, io.SeekStart) // served from disk, as before
		return nil
	}
	et := etag(st)
	e := &cachedFile{name: name, full: p, info: st, data: data, etag: []string{et}, weakETag: []string{"W/" + et}, cost: int64(len(data))}
	e.checked.Store(sinceStart())
	c.mu.Lock()
	if c.files == nil {
		c.files = map[string]*cachedFile{}
	}
	if old := c.files[name]; old != nil {
		delete(c.files, name)
		c.bytes -= old.cost
	}
	if c.bytes+int64(len(data)) <= maxCacheBytes && len(c.files) < maxCachedFiles {
		c.files[name] = e
		c.bytes += e.cost
	}
	c.mu.Unlock()
	return &memFile{Reader: bytes.NewReader(data), entry: e}
}

func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.Mode() == b.Mode() && a.ModTime().Equal(b.ModTime())
}

// memFile is a cached regular file as http.ServeContent reads it.
type memFile struct {
	*bytes.Reader
	entry *cachedFile
}

var _ http.File = (*memFile)(nil)

var errNotDir = errors.New("l7: not a directory")

func (f *memFile) Close() error                       { return nil }
func (f *memFile) Stat() (fs.FileInfo, error)         { return f.entry.info, nil }
func (f *memFile) Readdir(int) ([]fs.FileInfo, error) { return nil, errNotDir }
