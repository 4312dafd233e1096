package l7

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
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

// newStatic serves root under prefix. http.FileServer answers 400 to a path
// with "..", serves index.html for a directory and sets Content-Type by
// extension; staticFS adds: no directory listings and no dot files, and
// keeps small files in memory (fileCache).
func newStatic(prefix, root string) http.Handler {
	return http.StripPrefix(prefix, http.FileServer(staticFS{dir: http.Dir(root), cache: &fileCache{}}))
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

// fileCache keeps the bytes of small static files. A hit costs one stat(2)
// of the path, which must still name the same file (device and inode) with
// the same size, mode and modification time, instead of open, fstat, reads
// and close (issue 10's http-static bench: 15 syscalls per request down to
// 5). What http.FileServer derives from the file (Last-Modified, ranges,
// conditional requests, Content-Type) is unchanged: it gets the cached
// FileInfo and a seekable reader over the same bytes.
type fileCache struct {
	mu    sync.RWMutex
	files map[string]*cachedFile // by the name FileServer opened
	bytes int64
}

type cachedFile struct {
	full string // the path on disk, as http.Dir joined it
	info fs.FileInfo
	data []byte
}

// open returns the cached file for name if it is still the file on disk.
func (c *fileCache) open(name string) http.File {
	c.mu.RLock()
	e := c.files[name]
	c.mu.RUnlock()
	if e == nil {
		return nil
	}
	st, err := os.Stat(e.full)
	if err != nil || !sameFile(e.info, st) {
		c.mu.Lock()
		if c.files[name] == e {
			delete(c.files, name)
			c.bytes -= int64(len(e.data))
		}
		c.mu.Unlock()
		return nil
	}
	return &memFile{Reader: bytes.NewReader(e.data), info: e.info}
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
	e := &cachedFile{full: p, info: st, data: data}
	c.mu.Lock()
	if c.files == nil {
		c.files = map[string]*cachedFile{}
	}
	if old := c.files[name]; old != nil {
		c.bytes -= int64(len(old.data))
	}
	if c.bytes+int64(len(data)) <= maxCacheBytes && len(c.files) < maxCachedFiles {
		c.files[name] = e
		c.bytes += int64(len(data))
	}
	c.mu.Unlock()
	return &memFile{Reader: bytes.NewReader(data), info: st}
}

func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.Mode() == b.Mode() && a.ModTime().Equal(b.ModTime())
}

// memFile is a cached regular file as http.FileServer reads it.
type memFile struct {
	*bytes.Reader
	info fs.FileInfo
}

var _ http.File = (*memFile)(nil)

var errNotDir = errors.New("l7: not a directory")

func (f *memFile) Close() error                       { return nil }
func (f *memFile) Stat() (fs.FileInfo, error)         { return f.info, nil }
func (f *memFile) Readdir(int) ([]fs.FileInfo, error) { return nil, errNotDir }
