package l7

import (
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
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
// extension; staticFS adds: no directory listings and no dot files.
func newStatic(prefix, root string) http.Handler {
	return http.StripPrefix(prefix, http.FileServer(staticFS{http.Dir(root)}))
}

type staticFS struct{ dir http.Dir }

func (s staticFS) Open(name string) (http.File, error) {
	for seg := range strings.SplitSeq(name, "/") {
		if strings.HasPrefix(seg, ".") {
			return nil, fs.ErrNotExist
		}
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
	}
	return f, nil
}
