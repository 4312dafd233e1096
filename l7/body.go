package l7

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"

	"sluice/l4"
)

// Request bodies never hold a backend (issue 10; nginx's
// proxy_request_buffering). A body of up to RequestBufferBytes is read
// completely before a backend is chosen or dialled, so a client that sends
// slowly holds no backend slot and a malformed chunked body is refused with
// 400 before anything reaches a backend; a larger one is streamed, up to
// MaxBodyBytes. Each read of a body has BodyTimeout (vconn.armDeadline).

// Defaults for the zero values of RouteConfig's body limits.
const (
	DefaultRequestBufferBytes = 1 << 20
	DefaultMaxBodyBytes       = 16 << 20
)

// errBodyTooLarge is the read error past MaxBodyBytes.
var errBodyTooLarge = errors.New("l7: request body over max_body_bytes")

// readBody prepares r's body for the proxy: buffered whole when it fits in
// the route's request buffer (r then has a Content-Length and GetBody, so
// a failed connect can be retried on another backend), else a streaming
// reader capped at MaxBodyBytes that records why it failed. It answers the
// client itself and returns false when the body cannot be read.
func (rt *Route) readBody(w http.ResponseWriter, r *http.Request, cs *connState) bool {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return true
	}
	if r.ContentLength > rt.maxBody {
		rt.refuse(w, cs, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge, "request body too large")
		return false
	}
	limit := min(rt.requestBuffer, rt.maxBody)
	buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 512), limit+1)))
	_, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		rt.bodyFailed(w, cs, err)
		return false
	}
	if int64(buf.Len()) <= limit {
		data := buf.Bytes()
		r.Body = &bufferedBody{Reader: bytes.NewReader(data), data: data}
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
		r.ContentLength = int64(len(data))
		r.TransferEncoding = nil
		return true
	}
	// Over the buffer: stream what is left, from the bytes already read.
	r.Body = &streamBody{
		r:      io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body),
		closer: r.Body,
		left:   rt.maxBody,
	}
	return true
}

// bufferedBody is a request body readBody read whole; data is for the
// HTTP/2 fast path (h2fast.go).
type bufferedBody struct {
	*bytes.Reader
	data []byte
}

func (*bufferedBody) Close() error { return nil }

// bodyFailed answers a body that could not be read: 408 when the client went
// quiet for BodyTimeout, the reader's own status for a malformed body (400
// for bad chunking), 413 past MaxBodyBytes, and for a client that went
// away mid-body a 400 logged as client_closed (not a backend error).
func (rt *Route) bodyFailed(w http.ResponseWriter, cs *connState, err error) {
	var vi *violation
	switch {
	case errors.As(err, &vi):
		rt.refuse(w, cs, vi.code, vi.reason, vi.msg)
	case errors.Is(err, errBodyTooLarge):
		rt.refuse(w, cs, http.StatusRequestEntityTooLarge, ReasonBodyTooLarge, "request body too large")
	case isTimeout(err):
		rt.refuse(w, cs, http.StatusRequestTimeout, ReasonBodyTimeout, "request body timeout")
	default:
		rt.refuse(w, cs, http.StatusBadRequest, l4.ReasonClientClosed, "request body incomplete")
	}
}

// streamBody is a body larger than the request buffer, streamed to the
// backend: at most left bytes, and the first read error is kept so that
// the proxy's error answer names the client's fault, not the backend's.
type streamBody struct {
	r      io.Reader
	closer io.Closer
	left   int64

	mu  sync.Mutex
	err error
}

func (b *streamBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 && err == io.EOF {
			return 0, io.EOF
		} else if n == 0 && err != nil {
			return 0, b.fail(err)
		}
		return 0, b.fail(errBodyTooLarge)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if err != nil && err != io.EOF {
		return n, b.fail(err)
	}
	return n, err
}

func (b *streamBody) Close() error { return b.closer.Close() }

func (b *streamBody) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	return err
}

// failed returns the first read error, nil if none.
func (b *streamBody) failed() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
