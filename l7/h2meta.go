package l7

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The request header blocks of an h2 conn: x/net's Framer.readMetaFrame,
// with its rules and errors, but one MetaHeadersFrame, field slice and
// emit function per conn instead of new ones per HEADERS frame (five to
// six allocations per request of the h2-small bench row). A block is
// decoded whole before anything else (a frame of a stream the conn
// ignores included): the HPACK decoder's state is the conn's.

// metaReader decodes header blocks for readFrame.
type metaReader struct {
	dec     *hpack.Decoder
	meta    http2.MetaHeadersFrame
	remain  uint32 // of the header list size, for the block being decoded
	regular bool   // a regular field was seen in it
	invalid error  // the first invalid field in it
}

// maxKeptFields bounds the field slice a conn keeps between blocks (40
// bytes a field; a browser's request has 15–25).
const maxKeptFields = 32

func (s *h2server) initMeta() {
	m := &s.mr
	m.dec = hpack.NewDecoder(4096, nil)
	m.dec.SetEmitFunc(s.emitField)
}

// readFrame is the framer's ReadFrame, but a HEADERS frame comes back as
// a MetaHeadersFrame with its CONTINUATIONs read and its block decoded
// (as with the framer's ReadMetaHeaders). The frame is the conn's until
// the next call (doneMeta).
func (s *h2server) readFrame() (http2.Frame, error) {
	f, err := s.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return s.readMeta(hf)
	}
	return f, nil
}

// readMeta is readMetaFrame.
func (s *h2server) readMeta(hf *http2.HeadersFrame) (http2.Frame, error) {
	m := &s.mr
	fields := m.meta.Fields
	if cap(fields) > maxKeptFields {
		fields = nil
	}
	m.meta = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: fields[:0]}
	m.remain, m.regular, m.invalid = maxHeadBytes, false, nil
	m.dec.SetEmitEnabled(true)
	m.dec.SetMaxStringLength(maxHeadBytes)
	var frag interface {
		HeaderBlockFragment() []byte
		HeadersEnded() bool
	} = hf
	for {
		b := frag.HeaderBlockFragment()
		// A block far over the list size, or going on after an invalid
		// field (whose size is no longer counted), ends the conn.
		if int64(len(b)) > 2*int64(m.remain) || m.invalid != nil {
			return &m.meta, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := m.dec.Write(b); err != nil {
			return &m.meta, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if frag.HeadersEnded() {
			break
		}
		f, err := s.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		frag = f.(*http2.ContinuationFrame) // the framer's frame order check
	}
	if err := m.dec.Close(); err != nil {
		return &m.meta, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if m.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: m.invalid}
	}
	if err := checkPseudos(m.meta.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &m.meta, nil
}

// doneMeta lets go of the last block's strings.
func (s *h2server) doneMeta() {
	clear(s.mr.meta.Fields)
	s.mr.meta.HeadersFrame = nil
}

var errPseudoAfterRegular = errors.New("pseudo header field after regular")

// emitField takes a decoded field (readMetaFrame's emit function).
func (s *h2server) emitField(hf hpack.HeaderField) {
	m := &s.mr
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		m.invalid = fmt.Errorf("invalid header field value for %q", hf.Name) // not the value: it may be secret
	}
	if strings.HasPrefix(hf.Name, ":") {
		if m.regular {
			m.invalid = errPseudoAfterRegular
		}
	} else {
		m.regular = true
		if !validWireName(hf.Name) {
			m.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if m.invalid != nil {
		m.dec.SetEmitEnabled(false)
		return
	}
	size := hf.Size()
	if size > m.remain {
		m.dec.SetEmitEnabled(false)
		m.meta.Truncated = true
		m.remain = 0
		return
	}
	m.remain -= size
	m.meta.Fields = append(m.meta.Fields, hf)
}

// validWireName reports whether a field name may be sent in HTTP/2: a
// token, in lower case.
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// checkPseudos is MetaHeadersFrame.checkPseudos: known names, once each,
// not a request's and a response's together.
func checkPseudos(pf []hpack.HeaderField) error {
	var isRequest, isResponse bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, hf2 := range pf[:i] {
			if hf.Name == hf2.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if isRequest && isResponse {
		return errors.New("mix of request and response pseudo headers")
	}
	return nil
}
