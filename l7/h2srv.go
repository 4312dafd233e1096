package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2server is sluice's own HTTP/2 server loop (issue 10 part 6): frames
// and HPACK are x/net's (http2.Framer, hpack), the rest is here. x/net's
// server, which served h2 before, moves every frame across goroutines: a
// frame reader hands each frame to the serve loop, which starts the
// stream's handler, which hands each write back to the serve loop, which
// starts a goroutine per flush (writeFrameAsync). A proxied GET took about
// five goroutine handoffs and two flushes. Here the connection's goroutine
// reads and dispatches frames, each stream's handler runs on a worker
// (start) and writes its frames itself, under the connection's write lock:
// a response's HEADERS and DATA leave in one flush, one TLS record.
//
// What it keeps of x/net's server: its checks of RFC 9113 (h2spec passes
// in strict mode, TestH2Spec), the same SETTINGS (h2MaxStreams, the
// initial frame size, MAX_HEADER_LIST_SIZE, no extended CONNECT), 1 MiB of
// receive window per connection, a request body read only as the handler
// reads it, and http.Handler for the route (serveHTTP), so every location,
// limit and header rule of HTTP/1.1 holds per stream.
//
// Locks: h.wmu (the framer's write side and the HPACK encoder), then s.mu
// (streams, flow-control windows, bodies), then h.mu. A goroutine waiting
// for flow-control credit or body bytes holds none of them.
type h2server struct {
	h  *h2conn
	fr *http2.Framer
	mr metaReader // the header blocks fr reads (readFrame); serve's

	// Write side, under h.wmu.
	wb   writeBuf
	enc  *hpack.Encoder
	hbuf headerBuf
	strs map[string]string // encodeFast's strings (str), under h.wmu

	mu      sync.Mutex
	cond    *sync.Cond // a window grew, a body got data, a stream ended
	streams map[uint32]*h2stream
	maxID   uint32 // the highest stream the client opened
	sendWin int32  // the client's connection window for our DATA
	initWin int32  // the client's SETTINGS_INITIAL_WINDOW_SIZE
	maxSend uint32 // the client's SETTINGS_MAX_FRAME_SIZE
	recvWin int32  // what the client may still send on the connection
	unacked int32  // body bytes consumed, not yet returned by WINDOW_UPDATE
	goAway  bool   // GOAWAY sent: no new streams
	lastID  uint32 // the last stream it admits
	dead    bool   // the conn is closing: every wait ends
	parked  bool   // a worker waits on work for the next stream
	work    chan h2job

	capT  *time.Timer // the request cap's timer (armCap), due at capAt; under mu
	capAt time.Time   // zero: not armed

	tlsState   *tls.ConnectionState
	remoteAddr string
}

// h2StreamWindow is the SETTINGS_INITIAL_WINDOW_SIZE sluice announces: how
// much of a request body a client may send ahead of the handler; the
// connection's window (h2ConnWindow) bounds all streams' together.
const (
	h2StreamWindow = 256 << 10
	h2ConnWindow   = 1 << 20
	h2WindowAck    = 16 << 10 // consumed bytes returned in one WINDOW_UPDATE
	h2MaxFrame     = 16 << 10 // the protocol's initial SETTINGS_MAX_FRAME_SIZE
)

// writeBuf is the io.Writer the framer writes into. The connection's
// buffer comes from h2WriteBufs for each flush and goes back after it, so
// an idle connection holds none (x/net's server pools its write buffer
// the same way).
type writeBuf struct {
	b []byte
	p *[]byte // where b came from, to go back to (release)
}

func (w *writeBuf) Write(p []byte) (int, error) {
	if w.b == nil {
		w.p = h2WriteBufs.Get().(*[]byte)
		w.b = (*w.p)[:0]
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

// headerBuf is what the HPACK encoder writes a header block into.
type headerBuf struct{ b []byte }

func (w *headerBuf) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// writeData appends a DATA frame to the write buffer, its payload copied
// once (the framer's WriteData copies it into a buffer of its own first,
// which then stays as large as the largest frame). h.wmu is held.
func (s *h2server) writeData(id uint32, end bool, p []byte) {
	var flags byte
	if end {
		flags = byte(http2.FlagDataEndStream)
	}
	n := len(p)
	hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), flags,
		byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id)}
	_, _ = s.wb.Write(hdr[:])
	s.wb.b = append(s.wb.b, p...)
}

var h2WriteBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// release returns the buffer to h2WriteBufs, unless it grew past 64 KiB.
func (w *writeBuf) release() {
	if cap(w.b) <= 64<<10 {
		*w.p = w.b[:0]
		h2WriteBufs.Put(w.p)
	}
	w.b, w.p = nil, nil
}

// h2stream is one client stream, from its HEADERS until its handler
// returns.
type h2stream struct {
	s      *h2server
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc

	// Under s.mu.
	sendWin    int32
	recvWin    int32 // what the client may still send on this stream
	unacked    int32 // consumed, not yet returned
	remoteDone bool  // END_STREAM received
	reset      bool  // RST_STREAM sent or received: writes fail
	body       []byte
	bodyErr    error // after body is read: io.EOF or why the body failed
	bodyClosed bool  // the handler is done with the body
	declLen    int64 // Content-Length, -1 if none
	gotLen     int64
	trailer    http.Header // the request's declared trailers (req.Trailer)
	needs100   bool
	answered   bool         // the response's END_STREAM is written
	cur        *backendConn // the fast path's backend conn while it waits on it (h2fast.go)
	start      time.Time    // when its HEADERS came

	rw h2rw // its response (run), in one allocation with it
}

var errStreamClosed = errors.New("l7: h2 stream closed")

func newH2server(h *h2conn) *h2server {
	s := &h2server{h: h, streams: map[uint32]*h2stream{}, sendWin: 65535, initWin: 65535,
		maxSend: h2MaxFrame, recvWin: 65535}
	s.cond = sync.NewCond(&s.mu)
	s.work = make(chan h2job, 1)
	st := h.tc.ConnectionState()
	s.tlsState = &st
	s.remoteAddr = h.cs.client.String()
	s.fr = http2.NewFramer(&s.wb, h2in{s})
	s.initMeta() // header blocks: readFrame
	s.fr.SetMaxReadFrameSize(h2MaxFrame)
	s.enc = hpack.NewEncoder(&s.hbuf)
	return s
}

// run serves the conn until it ends.
func (s *h2server) run() {
	s.serve()
	s.mu.Lock()
	s.dead = true
	if s.capT != nil {
		s.capT.Stop()
	}
	for _, st := range s.streams {
		st.fail(errStreamClosed)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	close(s.work) // a parked worker ends; only serve sent on it
}

// h2in is what the framer reads: the TLS conn, whose read deadline moves
// on here instead of failing a read while streams are open or the conn has
// been idle less than KeepAliveTimeout.
type h2in struct{ s *h2server }

func (r h2in) Read(p []byte) (int, error) {
	for {
		n, err := r.s.h.tc.Read(p)
		if n > 0 || err == nil {
			return n, nil
		}
		if isTimeout(err) && r.s.rearm() {
			continue
		}
		r.s.h.readFailed(err)
		return 0, err
	}
}

// rearm is a read deadline's expiry: it reports whether to read on.
func (s *h2server) rearm() bool {
	h := s.h
	h.mu.Lock()
	started, active, idle := h.started, h.active, h.idleSince
	h.mu.Unlock()
	if !started {
		return false // HeaderTimeout, for the first stream's headers
	}
	ka := h.rt.keepAliveTimeout
	if active == 0 && time.Since(idle) >= ka {
		s.writeGoAway(http2.ErrCodeNo)
		return false
	}
	at := time.Now().Add(ka)
	if active == 0 {
		at = idle.Add(ka)
	}
	_ = h.raw.SetReadDeadline(at)
	return true
}

func (s *h2server) serve() {
	h := s.h
	var pre [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(h2in{s}, pre[:]); err != nil {
		return
	}
	if string(pre[:]) != http2.ClientPreface {
		h.countError("conn_bad_preface")
		return
	}
	h.wmu.Lock()
	_ = s.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeadBytes},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
	)
	_ = s.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	err := s.flush()
	h.wmu.Unlock()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.recvWin = h2ConnWindow
	s.mu.Unlock()

	first := true
	for {
		f, err := s.readFrame()
		if err == nil && first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				s.connError(http2.ErrCodeProtocol, "first_settings")
				return
			}
			first = false
		}
		if err == nil {
			err = s.process(f)
			if _, ok := f.(*http2.MetaHeadersFrame); ok {
				s.doneMeta()
			}
		}
		if err != nil && !s.frameError(err) {
			return
		}
	}
}

// frameError answers err, from reading a frame or from processing it, and
// reports whether the conn goes on: a stream error resets its stream; a
// connection error sends GOAWAY; any other error (a read that failed, a
// graceful GOAWAY with nothing open) ends the conn.
func (s *h2server) frameError(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		s.resetStream(se.StreamID, se.Code)
		return true
	case errors.As(err, &ce):
		s.connError(http2.ErrCode(ce), err.Error())
	case errors.Is(err, http2.ErrFrameTooLarge):
		s.connError(http2.ErrCodeFrameSize, "frame_too_large")
	}
	return false
}

func connErr(code http2.ErrCode, name string) error {
	return fmt.Errorf("%s: %w", name, http2.ConnectionError(code))
}

func streamErr(id uint32, code http2.ErrCode) error {
	return http2.StreamError{StreamID: id, Code: code}
}

// connError answers a connection error: GOAWAY with its code, then the
// conn closes (serve returns).
func (s *h2server) connError(code http2.ErrCode, name string) {
	s.h.countError("conn_" + name)
	s.writeGoAway(code)
}

func (s *h2server) process(f http2.Frame) error {
	s.mu.Lock()
	ignore := s.goAway && f.Header().StreamID > s.lastID
	s.mu.Unlock()
	if ignore {
		if d, ok := f.(*http2.DataFrame); ok {
			return s.discard(d)
		}
		return nil
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return s.settings(f)
	case *http2.MetaHeadersFrame:
		return s.headers(f)
	case *http2.DataFrame:
		return s.data(f)
	case *http2.WindowUpdateFrame:
		return s.windowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return s.write(func() error { return s.fr.WritePing(true, f.Data) })
	case *http2.RSTStreamFrame:
		s.mu.Lock()
		defer s.mu.Unlock()
		if f.StreamID > s.maxID {
			return connErr(http2.ErrCodeProtocol, "reset_idle_stream")
		}
		if st := s.streams[f.StreamID]; st != nil {
			st.fail(errStreamClosed)
			st.reset = true
			delete(s.streams, st.id)
			s.cond.Broadcast()
		}
		return nil
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return streamErr(f.StreamID, http2.ErrCodeProtocol)
		}
		return nil
	case *http2.GoAwayFrame:
		s.shutdown()
		return nil
	case *http2.PushPromiseFrame:
		return connErr(http2.ErrCodeProtocol, "push_promise")
	}
	return nil // unknown frames are ignored
}

func (s *h2server) settings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > 100 {
		// Duplicates are allowed, and taken in order (RFC 9113 6.5.3).
		return connErr(http2.ErrCodeProtocol, "settings_too_many")
	}
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingHeaderTableSize:
			s.h.wmu.Lock()
			s.enc.SetMaxDynamicTableSize(st.Val)
			s.h.wmu.Unlock()
		case http2.SettingInitialWindowSize:
			s.mu.Lock()
			defer s.mu.Unlock()
			growth := int32(st.Val) - s.initWin
			s.initWin = int32(st.Val)
			for _, x := range s.streams {
				if !addWindow(&x.sendWin, growth) {
					return connErr(http2.ErrCodeFlowControl, "setting_win_size")
				}
			}
			s.cond.Broadcast()
		case http2.SettingMaxFrameSize:
			s.mu.Lock()
			s.maxSend = st.Val
			s.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.write(s.fr.WriteSettingsAck)
}

// addWindow adds n to a flow-control window, unless it would pass 2^31-1.
func addWindow(w *int32, n int32) bool {
	if n > 0 && *w > (1<<31-1)-n {
		return false
	}
	*w += n
	return true
}

func (s *h2server) windowUpdate(f *http2.WindowUpdateFrame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc := int32(f.Increment)
	if f.StreamID == 0 {
		if !addWindow(&s.sendWin, inc) {
			return connErr(http2.ErrCodeFlowControl, "conn_window")
		}
		s.cond.Broadcast()
		return nil
	}
	if f.StreamID > s.maxID {
		return connErr(http2.ErrCodeProtocol, "window_update_idle")
	}
	st := s.streams[f.StreamID]
	if st == nil {
		return nil // a closed stream's
	}
	if !addWindow(&st.sendWin, inc) {
		st.fail(errStreamClosed)
		return streamErr(f.StreamID, http2.ErrCodeFlowControl)
	}
	s.cond.Broadcast()
	return nil
}

// discard takes a DATA frame no stream reads: its bytes still count
// against the connection's window, and are given back at once.
func (s *h2server) discard(f *http2.DataFrame) error {
	s.mu.Lock()
	if int32(f.Length) > s.recvWin {
		s.mu.Unlock()
		return connErr(http2.ErrCodeFlowControl, "data_flow")
	}
	s.recvWin -= int32(f.Length)
	s.mu.Unlock()
	s.consumed(nil, int32(f.Length))
	return nil
}

func (s *h2server) data(f *http2.DataFrame) error {
	id := f.StreamID
	s.mu.Lock()
	if id > s.maxID {
		s.mu.Unlock()
		return connErr(http2.ErrCodeProtocol, "data_on_idle")
	}
	st := s.streams[id]
	if st == nil || st.remoteDone || st.reset {
		s.mu.Unlock()
		if err := s.discard(f); err != nil {
			return err
		}
		return streamErr(id, http2.ErrCodeStreamClosed)
	}
	n := int32(f.Length)
	if n > s.recvWin {
		s.mu.Unlock()
		return connErr(http2.ErrCodeFlowControl, "data_flow")
	}
	if n > st.recvWin {
		s.mu.Unlock()
		_ = s.discard(f)
		return streamErr(id, http2.ErrCodeFlowControl)
	}
	data := f.Data()
	if st.declLen >= 0 && st.gotLen+int64(len(data)) > st.declLen {
		st.fail(errors.New("l7: h2 body longer than its Content-Length"))
		s.mu.Unlock()
		_ = s.discard(f)
		return streamErr(id, http2.ErrCodeProtocol)
	}
	s.recvWin -= n
	st.recvWin -= n
	st.gotLen += int64(len(data))
	back := n - int32(len(data)) // padding: given back at once
	if st.bodyClosed {
		back = n // nobody reads it
	} else {
		st.body = append(st.body, data...)
	}
	if f.StreamEnded() {
		st.remoteDone = true
		if st.declLen >= 0 && st.gotLen != st.declLen {
			st.fail(errors.New("l7: h2 body shorter than its Content-Length"))
			s.cond.Broadcast()
			s.mu.Unlock()
			return streamErr(id, http2.ErrCodeProtocol)
		}
		if st.bodyErr == nil {
			st.bodyErr = io.EOF
		}
		st.closeIfDone()
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if back > 0 {
		if st.bodyClosed {
			s.consumed(nil, back) // the connection's only: this stream may stop
		} else {
			s.consumed(st, back)
		}
	}
	return nil
}

// consumed returns n bytes of window: the connection's, and st's if its
// client may still send (st nil: the connection's only).
func (s *h2server) consumed(st *h2stream, n int32) {
	s.mu.Lock()
	s.unacked += n
	s.recvWin += n
	var conn, strm int32
	if s.unacked >= h2WindowAck {
		conn, s.unacked = s.unacked, 0
	}
	if st != nil && !st.remoteDone && !st.reset {
		st.unacked += n
		st.recvWin += n
		if st.unacked >= h2WindowAck {
			strm, st.unacked = st.unacked, 0
		}
	}
	s.mu.Unlock()
	if conn == 0 && strm == 0 {
		return
	}
	_ = s.write(func() error {
		if conn > 0 {
			_ = s.fr.WriteWindowUpdate(0, uint32(conn))
		}
		if strm > 0 {
			_ = s.fr.WriteWindowUpdate(st.id, uint32(strm))
		}
		return nil
	})
}

// fail ends st's body with err (if it has not ended) and cancels its
// handler's context. s.mu is held.
func (st *h2stream) fail(err error) {
	if st.bodyErr == nil || st.bodyErr == io.EOF && len(st.body) > 0 {
		st.bodyErr = err
	}
	st.cancel()
	if st.cur != nil {
		_ = st.cur.c.SetDeadline(aLongTimeAgo) // the fast path's wait ends
	}
}

// write runs fn, which writes frames, under the write lock and flushes.
func (s *h2server) write(fn func() error) error {
	s.h.wmu.Lock()
	defer s.h.wmu.Unlock()
	if err := fn(); err != nil {
		if s.wb.b != nil {
			s.wb.release()
		}
		return err
	}
	return s.flush()
}

// flush writes what the framer has written, in one go. h.wmu is held.
func (s *h2server) flush() error {
	if len(s.wb.b) == 0 {
		return nil
	}
	_, err := s.h.write(s.wb.b)
	s.wb.release()
	if err != nil {
		_ = s.h.raw.Close() // the read fails too: serve ends
	}
	return err
}

// resetStream sends RST_STREAM for id and forgets the stream.
func (s *h2server) resetStream(id uint32, code http2.ErrCode) {
	s.mu.Lock()
	if st := s.streams[id]; st != nil {
		st.fail(errStreamClosed)
		st.reset = true
		delete(s.streams, id)
		s.cond.Broadcast()
	}
	s.mu.Unlock()
	_ = s.write(func() error { return s.fr.WriteRSTStream(id, code) })
}

// writeGoAway sends GOAWAY: no stream after the last one the client
// opened will be served.
func (s *h2server) writeGoAway(code http2.ErrCode) {
	s.mu.Lock()
	if s.goAway && code == http2.ErrCodeNo {
		s.mu.Unlock()
		return
	}
	s.goAway, s.lastID = true, s.maxID
	last := s.maxID
	s.mu.Unlock()
	_ = s.write(func() error { return s.fr.WriteGoAway(last, code, nil) })
}

// shutdown is a graceful end (Route.Retire, the client's GOAWAY, a
// handler's Connection: close): GOAWAY, and the conn closes once its
// streams are done.
func (s *h2server) shutdown() {
	s.writeGoAway(http2.ErrCodeNo)
	s.closeIfIdle()
}

// closeIfIdle closes the conn after a GOAWAY once no handler runs: the
// serve loop's read fails and it ends.
func (s *h2server) closeIfIdle() {
	s.mu.Lock()
	goAway := s.goAway
	s.mu.Unlock()
	if !goAway {
		return
	}
	s.h.mu.Lock()
	active := s.h.active
	s.h.mu.Unlock()
	if active == 0 {
		_ = s.h.Close()
	}
}

// headers opens a stream, or takes a stream's trailers.
func (s *h2server) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return connErr(http2.ErrCodeProtocol, "headers_even")
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		return streamErr(id, http2.ErrCodeProtocol)
	}
	s.mu.Lock()
	if st := s.streams[id]; st != nil {
		defer s.mu.Unlock()
		if st.remoteDone {
			return streamErr(id, http2.ErrCodeStreamClosed)
		}
		return st.trailers(f)
	}
	if id <= s.maxID {
		s.mu.Unlock()
		return connErr(http2.ErrCodeProtocol, "stream_went_down")
	}
	s.maxID = id
	s.mu.Unlock()

	h := s.h
	h.mu.Lock()
	if h.ended {
		h.mu.Unlock()
		return streamErr(id, http2.ErrCodeRefusedStream)
	}
	if h.active >= h2MaxStreams {
		// Counted by handler, not by open stream: a stream the client reset
		// still counts until its handler has returned.
		h.mu.Unlock()
		return streamErr(id, http2.ErrCodeRefusedStream)
	}
	first := !h.started
	h.started = true
	h.active++
	h.handlers.Add(1)
	h.mu.Unlock()
	if first {
		// HeaderTimeout no longer applies; the idle timeout does (rearm).
		_ = h.raw.SetReadDeadline(time.Now().Add(h.rt.keepAliveTimeout))
	}

	ctx, cancel := context.WithCancel(h.sctx)
	st := &h2stream{s: s, id: id, ctx: ctx, cancel: cancel, recvWin: h2StreamWindow, declLen: -1,
		start: time.Now()}
	var req *http.Request
	var err error
	var handler func(http.ResponseWriter, *http.Request) // nil: the route's (serveHTTP)
	var fs *h2fastScratch
	var loc *location
	var declLen int64
	if h.rt.fast && !f.Truncated {
		fs = h2fastScratches.Get().(*h2fastScratch)
		var ok bool
		if loc, declLen, ok = s.h2Fast(f, &fs.req); !ok {
			h2fastScratches.Put(fs)
			fs = nil
		}
	}
	switch {
	case fs != nil:
		// The fast path (h2fast.go): the request is fs.req; this one
		// carries the context, the method and the body, if any (of
		// declLen bytes, read whole by the handler).
		tmpl := http.Request{Method: fs.req.method, Proto: "HTTP/2.0", ProtoMajor: 2, Body: http.NoBody,
			Host: fs.req.host, RemoteAddr: s.remoteAddr} // on the stack: WithContext makes the one Request
		if !f.StreamEnded() {
			st.declLen = declLen
			tmpl.ContentLength = declLen
			tmpl.Body = &h2body{st: st, timeout: h.rt.bodyTimeout}
		}
		req = tmpl.WithContext(ctx)
	case f.Truncated:
		// Over MAX_HEADER_LIST_SIZE: the fields are cut short, so not
		// checked; the answer is 431 (x/net's too).
		req = (&http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/"}, Header: http.Header{},
			Body: http.NoBody, RemoteAddr: s.remoteAddr}).WithContext(ctx)
	default:
		req, err = s.newRequest(st, f)
	}
	if err != nil {
		cancel()
		h.streamDone()
		return err
	}
	s.mu.Lock()
	st.sendWin = s.initWin
	st.remoteDone = f.StreamEnded()
	if st.remoteDone {
		st.bodyErr = io.EOF
	}
	s.streams[id] = st
	s.armCap(st)
	s.mu.Unlock()
	if f.Truncated {
		handler = headerListTooLong
	}
	s.start(h2job{st: st, req: req, handler: handler, loc: loc, fs: fs})
	return nil
}

// armCap makes sure the conn's cap timer runs for st: a stream open for
// the request cap is reset (capExpired). Streams start in order, so an
// armed timer is due no later than st's cap. One timer per conn, not one
// per stream: time.AfterFunc and its Stop were 1 % of sluice's CPU on the
// h2-small bench row. s.mu is held.
func (s *h2server) armCap(st *h2stream) {
	if !s.capAt.IsZero() || s.dead {
		return
	}
	s.capAt = st.start.Add(s.h.rt.requestCap)
	if s.capT == nil {
		s.capT = time.AfterFunc(time.Until(s.capAt), s.capExpired)
	} else {
		s.capT.Reset(time.Until(s.capAt))
	}
}

// capExpired resets the streams open for the request cap since their
// HEADERS, and arms the timer for the next one due.
func (s *h2server) capExpired() {
	limit := s.h.rt.requestCap
	var due []*h2stream
	s.mu.Lock()
	now := time.Now()
	var next time.Time
	for _, st := range s.streams {
		if at := st.start.Add(limit); !at.After(now) {
			due = append(due, st)
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if s.dead {
		next = time.Time{}
	}
	s.capAt = next
	if !next.IsZero() {
		s.capT.Reset(next.Sub(now))
	}
	s.mu.Unlock()
	for _, st := range due {
		st.abort(http2.ErrCodeInternal)
	}
}

// h2job is a stream for a worker to serve: by handler, else by the fast
// path if fs is set (serveFast), else by the route's handler.
type h2job struct {
	st      *h2stream
	req     *http.Request
	handler func(http.ResponseWriter, *http.Request)
	loc     *location
	fs      *h2fastScratch
}

// start serves a stream on the conn's parked worker, or on a new one.
//
// A worker whose stream is done parks for the conn's next stream, unless
// another is parked already: a new goroutine per stream grew its stack
// from 8 KiB for every request (runtime.newstack, 5 % of sluice's CPU on
// the h2-small bench row), a parked one has it grown. A worker parks for
// h2ParkTime at most: an idle conn does not keep its stack (3–6 KiB of RSS
// per idle h2 conn, measured with 2,000 of them).
func (s *h2server) start(j h2job) {
	s.mu.Lock()
	if s.parked {
		s.parked = false
		s.mu.Unlock()
		s.work <- j // buffered: one parked worker at most
		return
	}
	s.mu.Unlock()
	go s.worker(j)
}

func (s *h2server) worker(j h2job) {
	var t *time.Timer
	for {
		j.st.run(&j)
		j = h2job{}
		s.mu.Lock()
		if s.dead || s.parked {
			s.mu.Unlock()
			return
		}
		s.parked = true
		s.mu.Unlock()
		park := time.Duration(h2ParkTime.Load())
		if t == nil {
			t = time.NewTimer(park)
		} else {
			t.Reset(park)
		}
		var ok bool
		select {
		case j, ok = <-s.work:
			t.Stop()
		case <-t.C:
			s.mu.Lock()
			if s.parked {
				s.parked = false
				s.mu.Unlock()
				// The conn has been idle for the park time: it keeps
				// neither this stack nor encodeFast's strings.
				s.h.wmu.Lock()
				s.strs = nil
				s.h.wmu.Unlock()
				return
			}
			s.mu.Unlock()
			j, ok = <-s.work // start took this worker just now: its job is on the way
		}
		if !ok {
			return // the conn ended (run closes work)
		}
	}
}

// h2ParkTime is how long a worker waits for its conn's next stream, in
// nanoseconds (a variable for tests).
var h2ParkTime atomic.Int64

func init() { h2ParkTime.Store(int64(time.Second)) }

func headerListTooLong(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusRequestHeaderFieldsTooLarge)
	_, _ = io.WriteString(w, "request header fields too large\n")
}

// trailers takes a stream's trailing HEADERS. s.mu is held.
func (st *h2stream) trailers(f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		st.fail(errors.New("l7: h2 malformed trailers"))
		return streamErr(st.id, http2.ErrCodeProtocol)
	}
	for _, hf := range f.RegularFields() {
		k := canonicalKey(hf.Name)
		if _, ok := st.trailer[k]; ok {
			st.trailer[k] = append(st.trailer[k], hf.Value)
		}
	}
	st.remoteDone = true
	if st.declLen >= 0 && st.gotLen != st.declLen {
		st.fail(errors.New("l7: h2 body shorter than its Content-Length"))
		st.s.cond.Broadcast()
		return streamErr(st.id, http2.ErrCodeProtocol)
	}
	if st.bodyErr == nil {
		st.bodyErr = io.EOF
	}
	st.closeIfDone()
	st.s.cond.Broadcast()
	return nil
}

// newRequest builds the stream's request from its HEADERS, with x/net's
// checks (RFC 9113 8.2 and 8.3): a malformed request is a stream error.
func (s *h2server) newRequest(st *h2stream, f *http2.MetaHeadersFrame) (*http.Request, error) {
	bad := func() error { return streamErr(st.id, http2.ErrCodeProtocol) }
	method, scheme := f.PseudoValue("method"), f.PseudoValue("scheme")
	authority, path := f.PseudoValue("authority"), f.PseudoValue("path")
	if f.PseudoValue("protocol") != "" {
		return nil, bad() // no extended CONNECT
	}
	connect := method == http.MethodConnect
	if connect {
		if path != "" || scheme != "" || authority == "" {
			return nil, bad()
		}
	} else if method == "" || path == "" || scheme != "https" && scheme != "http" ||
		path[0] != '/' && path != "*" {
		return nil, bad()
	}
	hdr := make(http.Header, len(f.Fields))
	var host []string
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, bad() // connection-specific (RFC 9113 8.2.2)
		case "te":
			if hf.Value != "trailers" {
				return nil, bad()
			}
		case "host":
			host = append(host, hf.Value)
			continue
		case "cookie":
			if c := hdr["Cookie"]; len(c) == 1 {
				c[0] += "; " + hf.Value // one field, as HTTP/1.1 backends expect
				continue
			}
		}
		k := canonicalKey(hf.Name)
		hdr[k] = append(hdr[k], hf.Value)
	}
	switch {
	case len(host) > 1, len(host) == 1 && authority != "" && host[0] != authority:
		return nil, bad()
	case len(host) == 1:
		authority = host[0]
	}
	if authority != "" && (strings.IndexByte(authority, '@') >= 0 || !httpguts.ValidHostHeader(authority)) {
		return nil, bad()
	}
	var u *url.URL
	var requestURI string
	switch {
	case connect:
		u, requestURI = &url.URL{Host: authority}, authority
	case path == "*":
		if method != http.MethodOptions {
			return nil, bad()
		}
		u, requestURI = &url.URL{Path: "*"}, "*"
	default:
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, bad()
		}
		requestURI = path
	}
	if vv := hdr["Expect"]; len(vv) > 0 && httpguts.HeaderValuesContainsToken(vv, "100-continue") {
		st.needs100 = true
		delete(hdr, "Expect")
	}
	var trailer http.Header
	for _, v := range hdr["Trailer"] {
		for key := range strings.SplitSeq(v, ",") {
			switch key = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(key)); key {
			case "Transfer-Encoding", "Trailer", "Content-Length", "":
			default:
				if trailer == nil {
					trailer = http.Header{}
				}
				trailer[key] = nil
			}
		}
	}
	delete(hdr, "Trailer")
	st.trailer = trailer

	// A template on the stack: WithContext makes the one Request.
	req := &http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: hdr, Host: authority, RequestURI: requestURI,
		RemoteAddr: s.remoteAddr, Trailer: trailer,
	}
	if scheme == "https" {
		req.TLS = s.tlsState
	}
	if f.StreamEnded() {
		req.Body = http.NoBody
	} else {
		if cl := hdr["Content-Length"]; len(cl) > 0 {
			for _, v := range cl[1:] {
				if v != cl[0] {
					return nil, bad()
				}
			}
			n, err := strconv.ParseUint(cl[0], 10, 63)
			if err != nil {
				return nil, bad()
			}
			st.declLen = int64(n)
		}
		req.ContentLength = st.declLen
		req.Body = &h2body{st: st, timeout: s.h.rt.bodyTimeout}
	}
	return req.WithContext(st.ctx), nil
}

// canonicalKeys maps the lower-case field names clients send most to
// their canonical form without an allocation.
var canonicalKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language",
		"Accept-Ranges", "Authorization", "Cache-Control", "Content-Encoding", "Content-Length",
		"Content-Type", "Cookie", "Date", "Dnt", "Etag", "Expect", "From", "If-Match",
		"If-Modified-Since", "If-None-Match", "If-Range", "If-Unmodified-Since", "Origin",
		"Pragma", "Priority", "Range", "Referer", "Te", "Trailer", "User-Agent", "Via",
		"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-Ip", "X-Requested-With",
		"Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Sec-Fetch-User", "Sec-Ch-Ua",
		"Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Upgrade-Insecure-Requests"} {
		m[strings.ToLower(k)] = k
	}
	return m
}()

func canonicalKey(lower string) string {
	if k, ok := canonicalKeys[lower]; ok {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(lower)
}

// lowerKeys is canonicalKeys the other way, for responses.
var lowerKeys = func() map[string]string {
	m := map[string]string{}
	for l, k := range canonicalKeys {
		m[k] = l
	}
	for _, k := range []string{"Last-Modified", "Location", "Server", "Set-Cookie", "Vary",
		"X-Content-Type-Options", "Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
		"Strict-Transport-Security", "Content-Range", "Content-Disposition", "Expires", "Age",
		"Retry-After", "Www-Authenticate", "Alt-Svc", "Link", "X-Frame-Options"} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

func lowerKey(k string) string {
	if l, ok := lowerKeys[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

// run runs the stream's handler and ends the stream.
func (st *h2stream) run(j *h2job) {
	s, h := st.s, st.s.h
	req := j.req
	st.rw = h2rw{st: st, req: req, head: req.Method == http.MethodHead}
	w := &st.rw
	done := false
	defer func() {
		if !done {
			e := recover()
			if e != nil && e != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				h.rt.log.Error("panic serving an h2 stream", zap.Any("panic", e), zap.ByteString("stack", buf))
			}
			st.abort(http2.ErrCodeInternal)
		}
		s.mu.Lock()
		st.bodyClosed = true
		unread := int32(len(st.body))
		st.body = nil
		open := !st.remoteDone && !st.reset
		if s.streams[st.id] == st {
			delete(s.streams, st.id)
		}
		s.mu.Unlock()
		if unread > 0 {
			s.consumed(nil, unread)
		}
		if open && done {
			// The response is complete and the client is still sending:
			// it may stop (RFC 9113 8.1).
			_ = s.write(func() error { return s.fr.WriteRSTStream(st.id, http2.ErrCodeNo) })
		}
		st.cancel()
		h.streamDone()
		s.closeIfIdle()
	}()
	h.serveStream(w, j)
	if w.err == nil {
		_ = w.finish()
	}
	done = true
}

// serveStream is the route's handler with the conn's body slots.
func (h *h2conn) serveStream(w *h2rw, j *h2job) {
	r := j.req
	if r.Body != http.NoBody {
		select {
		case h.bodies <- struct{}{}:
			defer func() { <-h.bodies }()
		case <-r.Context().Done():
			return // the stream or the conn is gone
		}
		if hook := testHookBodySlot.Load(); hook != nil {
			(*hook)()
		}
	}
	switch {
	case j.handler != nil:
		j.handler(w, r)
	case j.fs != nil:
		j.st.serveFast(w, r, j.loc, j.fs)
	default:
		h.rt.serveHTTP(w, r)
	}
}

// abort resets the stream (its write timeout, a handler's panic).
func (st *h2stream) abort(code http2.ErrCode) {
	s := st.s
	s.mu.Lock()
	was := st.reset
	st.reset = true
	st.fail(errStreamClosed)
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if !was {
		_ = s.write(func() error { return s.fr.WriteRSTStream(st.id, code) })
	}
}

// h2body is a stream's request body, as its DATA frames bring it. A read
// waits at most timeout (BodyTimeout) for a byte.
type h2body struct {
	st      *h2stream
	timeout time.Duration
}

func (b *h2body) Read(p []byte) (int, error) {
	st := b.st
	s := st.s
	if st.needs100 {
		st.needs100 = false
		_ = s.informational(st, http.StatusContinue, nil)
	}
	s.mu.Lock()
	var timer *time.Timer
	expired := false
	for len(st.body) == 0 && st.bodyErr == nil && !expired {
		if timer == nil {
			timer = time.AfterFunc(b.timeout, func() {
				s.mu.Lock()
				expired = true
				s.cond.Broadcast()
				s.mu.Unlock()
			})
		}
		s.cond.Wait()
	}
	if timer != nil {
		timer.Stop()
	}
	if len(st.body) == 0 {
		err := st.bodyErr
		if err == nil {
			err = fmt.Errorf("l7: h2 body: %w", os.ErrDeadlineExceeded)
		}
		s.mu.Unlock()
		return 0, err
	}
	n := copy(p, st.body)
	st.body = st.body[n:]
	if len(st.body) == 0 {
		st.body = st.body[:0:0] // a later append starts a fresh buffer
	}
	s.mu.Unlock()
	s.consumed(st, int32(n))
	return n, nil
}

func (b *h2body) Close() error {
	st := b.st
	s := st.s
	s.mu.Lock()
	st.bodyClosed = true
	unread := int32(len(st.body))
	st.body = nil
	s.mu.Unlock()
	if unread > 0 {
		s.consumed(nil, unread)
	}
	return nil
}

// h2rw is a stream's http.ResponseWriter. The response is buffered up to
// h2RespBuf; a response the handler writes whole (most proxied answers:
// their Content-Length is reached, or the handler returns) leaves in one
// flush: HEADERS and DATA with END_STREAM, one TLS record.
type h2rw struct {
	st      *h2stream
	req     *http.Request
	hdr     http.Header // made by Header (a fast stream needs none: fast)
	fast    *fastHead   // a fast stream's response head (h2fast.go)
	status  int
	head    bool
	sent    bool // HEADERS sent
	ended   bool // END_STREAM sent
	clen    int64
	buf     []byte
	bufp    *[]byte // where buf came from (rwBufs)
	written int64
	err     error // the stream or conn failed: writes fail
}

var (
	_ http.ResponseWriter = (*h2rw)(nil)
	_ http.Flusher        = (*h2rw)(nil)
)

// h2RespBuf is how much of a response h2rw holds before it sends: one
// frame of the protocol's initial size.
const h2RespBuf = 16 << 10

var rwBufs = sync.Pool{New: func() any { b := make([]byte, 0, h2RespBuf); return &b }}

func (w *h2rw) Header() http.Header {
	if w.hdr == nil {
		w.hdr = http.Header{}
	}
	return w.hdr
}

func (w *h2rw) WriteHeader(code int) {
	if w.status != 0 || w.err != nil {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		// 1xx: sent at once, as x/net does.
		w.fail(w.st.s.informational(w.st, code, w.hdr))
		return
	}
	w.status = code
	w.clen = -1
	if cl := w.hdr["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			w.clen = n
		}
	}
}

func (w *h2rw) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.ended || w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.head {
		return len(p), nil
	}
	// The declared length reached: the response is complete.
	end := w.written == w.clen && !w.hasTrailers()
	if w.buf == nil && (len(p) < h2RespBuf || !end) {
		w.bufp = rwBufs.Get().(*[]byte)
		w.buf = (*w.bufp)[:0]
	}
	if len(w.buf)+len(p) <= cap(w.buf) {
		w.buf = append(w.buf, p...)
		if end {
			return len(p), w.out(w.buf, nil, true)
		}
		return len(p), nil
	}
	if err := w.out(w.buf, p, end); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *h2rw) WriteString(s string) (int, error) { return w.Write([]byte(s)) }

func (w *h2rw) Flush() { _ = w.FlushError() }

func (w *h2rw) FlushError() error {
	if w.err != nil {
		return w.err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.ended || w.sent && len(w.buf) == 0 {
		return nil
	}
	return w.out(w.buf, nil, false)
}

// finish completes the response when the handler returns.
func (w *h2rw) finish() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	err := w.err
	if !w.ended && err == nil {
		err = w.out(w.buf, nil, true)
	}
	if w.buf != nil {
		*w.bufp = w.buf[:0]
		rwBufs.Put(w.bufp)
		w.buf, w.bufp = nil, nil
	}
	return err
}

// out sends the HEADERS if not yet sent, then a and b as DATA as the flow
// windows allow, in one flush each time it has credit; it waits at most
// WriteStallTimeout for credit (then the stream is reset). With end, the
// stream ends: on the last DATA frame, or on the trailers.
func (w *h2rw) out(a, b []byte, end bool) error {
	st := w.st
	s := st.s
	trailers := end && w.hasTrailers()
	bodyLen := len(a) + len(b)
	for {
		s.h.wmu.Lock()
		if st.gone() {
			// Reset (by either side) or the conn ended: no frame may follow.
			s.h.wmu.Unlock()
			return w.fail(errStreamClosed)
		}
		if !w.sent {
			if err := w.encodeHead(end && bodyLen == 0 && !trailers || w.head, end, a, b); err != nil {
				s.h.wmu.Unlock()
				return w.fail(err)
			}
			w.sent = true
			if w.head {
				w.ended = true
				st.setAnswered()
				err := s.flush()
				s.h.wmu.Unlock()
				return w.fail(err)
			}
			if end && bodyLen == 0 && !trailers {
				w.ended = true
			}
		} else if end && bodyLen == 0 && !trailers {
			s.writeData(st.id, true, nil)
			w.ended = true
		}
		for len(a)+len(b) > 0 {
			p := a
			if len(p) == 0 {
				p = b
			}
			k := st.take(len(p))
			if k == 0 {
				break
			}
			last := k == len(a)+len(b)
			s.writeData(st.id, end && last && !trailers, p[:k])
			if end && last && !trailers {
				w.ended = true
			}
			if len(a) > 0 {
				a = a[k:]
			} else {
				b = b[k:]
			}
		}
		if w.ended {
			st.setAnswered()
		}
		err := s.flush()
		s.h.wmu.Unlock()
		if err != nil {
			return w.fail(err)
		}
		if len(a)+len(b) == 0 {
			break
		}
		if err := st.waitWindow(s.h.rt.writeStall); err != nil {
			return w.fail(err)
		}
	}
	if w.buf != nil {
		w.buf = w.buf[:0]
	}
	if trailers {
		w.ended = true
		return w.fail(w.sendTrailers())
	}
	return nil
}

// encodeHead writes the response's HEADERS frames; a and b are the body
// so far, all of it with end. h.wmu is held.
func (w *h2rw) encodeHead(endStream, end bool, a, b []byte) error {
	st := w.st
	s := st.s
	h := w.hdr
	if _, ok := h["Connection"]; ok {
		if h.Get("Connection") == "close" {
			go s.shutdown() // GOAWAY after this response: it needs h.wmu
		}
		delete(h, "Connection")
	}
	s.hbuf.b = s.hbuf.b[:0]
	if w.fast != nil {
		w.encodeFast(end, a, b)
		return s.writeHeaderBlock(st.id, endStream)
	}
	enc := s.enc
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(w.status)})
	bodyLen := len(a) + len(b)
	if _, ok := h["Content-Length"]; !ok && end && bodyAllowed(w.status) && !w.hasTrailers() && (bodyLen > 0 || !w.head) {
		_ = enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(bodyLen)})
	}
	if _, ok := h["Content-Type"]; !ok && bodyLen > 0 && bodyAllowed(w.status) && h.Get("Content-Encoding") == "" {
		p := a
		if len(p) == 0 {
			p = b
		}
		_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: http.DetectContentType(p)})
	}
	if _, ok := h["Date"]; !ok {
		_ = enc.WriteField(hpack.HeaderField{Name: "date", Value: httpDate()})
	}
	encodeFields(enc, h, false)
	return s.writeHeaderBlock(st.id, endStream)
}

// informational sends a 1xx response's HEADERS.
func (s *h2server) informational(st *h2stream, code int, h http.Header) error {
	return s.write(func() error {
		s.hbuf.b = s.hbuf.b[:0]
		_ = s.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(code)})
		if h != nil {
			encodeFields(s.enc, h, false)
		}
		return s.writeHeaderBlock(st.id, false)
	})
}

// hasTrailers reports whether the handler declared or set trailers.
func (w *h2rw) hasTrailers() bool {
	if len(w.hdr["Trailer"]) > 0 {
		return true
	}
	for k := range w.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// writeHeaderBlock writes s.hbuf as HEADERS and CONTINUATION frames.
// h.wmu is held.
func (s *h2server) writeHeaderBlock(id uint32, endStream bool) error {
	block := s.hbuf.b
	size := int(s.maxFrame())
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), size)]
		block = block[len(frag):]
		var err error
		if first {
			err = s.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag,
				EndStream: endStream, EndHeaders: len(block) == 0})
		} else {
			err = s.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return nil
}

func (s *h2server) maxFrame() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxSend
}

// take takes up to n bytes of send window (the stream's and the conn's),
// at most one frame's worth; it does not wait.
func (st *h2stream) take(n int) int {
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.reset || s.dead {
		return 0
	}
	k := min(int32(min(n, int(s.maxSend))), st.sendWin, s.sendWin)
	if k <= 0 {
		return 0
	}
	st.sendWin -= k
	s.sendWin -= k
	return int(k)
}

func (w *h2rw) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// waitWindow waits until the stream may send, at most d: then it is reset.
func (st *h2stream) waitWindow(d time.Duration) error {
	s := st.s
	s.mu.Lock()
	expired := false
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		expired = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	for (st.sendWin <= 0 || s.sendWin <= 0) && !st.reset && !s.dead && !expired {
		s.cond.Wait()
	}
	t.Stop()
	reset, dead := st.reset, s.dead
	s.mu.Unlock()
	switch {
	case reset || dead:
		return errStreamClosed
	case expired:
		st.abort(http2.ErrCodeInternal)
		return fmt.Errorf("l7: h2 stream: no flow-control credit: %w", os.ErrDeadlineExceeded)
	}
	return nil
}

// sendTrailers ends the stream with its trailers.
func (w *h2rw) sendTrailers() error {
	s := w.st.s
	tr := http.Header{}
	for _, v := range w.hdr["Trailer"] {
		for k := range strings.SplitSeq(v, ",") {
			k = http.CanonicalHeaderKey(textproto.TrimString(k))
			if vv, ok := w.hdr[k]; ok {
				tr[k] = vv
			}
		}
	}
	for k, vv := range w.hdr {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			tr[k[len(http.TrailerPrefix):]] = vv
		}
	}
	s.h.wmu.Lock()
	defer s.h.wmu.Unlock()
	s.hbuf.b = s.hbuf.b[:0]
	encodeFields(s.enc, tr, true)
	if err := s.writeHeaderBlock(w.st.id, true); err != nil {
		return err
	}
	w.st.setAnswered()
	return s.flush()
}

// gone reports whether the stream was reset or its conn ended.
func (st *h2stream) gone() bool {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	return st.reset || st.s.dead
}

// setAnswered records that the response is complete, before it is
// flushed: a client that closes once it has it closed a finished conn.
func (st *h2stream) setAnswered() {
	st.s.mu.Lock()
	st.answered = true
	st.closeIfDone()
	st.s.mu.Unlock()
}

// closeIfDone forgets a stream closed both ways (END_STREAM sent and
// received) before its handler has returned: the client may see it closed
// at once, and a frame it sends on it then is a closed stream's (RFC 9113
// 5.1). s.mu is held.
func (st *h2stream) closeIfDone() {
	if st.answered && st.remoteDone && st.s.streams[st.id] == st {
		delete(st.s.streams, st.id)
	}
}

// unanswered counts the streams still waiting for their response.
func (s *h2server) unanswered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.streams {
		if !st.answered {
			n++
		}
	}
	return n
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified || code < 100
}

// encodeFields encodes h's fields, lower-cased, leaving out those HTTP/2
// does not carry and invalid ones; trailers leaves out the trailer
// declarations (sent as the fields they name).
func encodeFields(enc *hpack.Encoder, h http.Header, trailers bool) {
	for k, vv := range h {
		if !trailers && (k == "Trailer" || strings.HasPrefix(k, http.TrailerPrefix)) {
			continue
		}
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade", "Transfer-Encoding", "Content-Length":
			if k != "Content-Length" || trailers {
				continue
			}
		}
		l := lowerKey(k)
		if !httpguts.ValidHeaderFieldName(l) {
			continue
		}
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				_ = enc.WriteField(hpack.HeaderField{Name: l, Value: v})
			}
		}
	}
}

var statusTexts [600]string

func statusText(code int) string {
	if code < len(statusTexts) {
		if s := statusTexts[code]; s != "" {
			return s
		}
	}
	return strconv.Itoa(code)
}

func init() {
	for i := 100; i < len(statusTexts); i++ {
		statusTexts[i] = strconv.Itoa(i)
	}
}

// httpDate is the Date field, formatted once a second.
func httpDate() string {
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.at == now {
		return d.s
	}
	d := &dateString{at: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateString struct {
	at int64
	s  string
}

var cachedDate atomic.Pointer[dateString]
