package tlsutil

import (
	"errors"
	"fmt"
	"io"
)

// ClientHello is what ReadClientHello learned from the first flight of a
// TLS client.
type ClientHello struct {
	// ServerName is the SNI host name normalized by NormalizeSNI. It is ""
	// when the client sent no host_name or an invalid one (see SNIInvalid).
	ServerName string
	// RawServerName is the host_name exactly as sent, or "" if none was sent.
	// It is attacker-controlled: escape it (EscapeForLog) before logging.
	RawServerName string
	// SNIInvalid reports that a host_name was sent but is not a valid DNS
	// host name (an IP literal, U-label bytes, bad characters or lengths).
	// Callers treat it exactly like "no SNI".
	SNIInvalid bool
	// ALPN lists the protocols of the application_layer_protocol_negotiation
	// extension, in the client's order; nil if absent.
	ALPN []string
	// Versions lists the supported_versions extension (GREASE values
	// included), or holds only the legacy_version field if the extension is
	// absent.
	Versions []uint16
	// Raw holds every byte read from r, in order, also on error. It may
	// extend past the ClientHello (for example TLS 1.3 early data read in
	// the same segment); replaying Raw byte-for-byte is always correct.
	Raw []byte
}

var (
	// ErrNotTLS means the first byte read cannot start a TLS record that a
	// server may receive before the ClientHello (handshake or alert).
	ErrNotTLS = errors.New("tlsutil: not a TLS handshake")
	// ErrHelloTooLarge means a record or the declared handshake length
	// cannot fit in the byte limit given to ReadClientHello.
	ErrHelloTooLarge = errors.New("tlsutil: ClientHello larger than the limit")
	// ErrMalformed means the bytes are TLS-shaped but crypto/tls would not
	// accept them as a ClientHello.
	ErrMalformed = errors.New("tlsutil: malformed ClientHello")
)

const (
	// DefaultMaxHelloBytes is the byte limit used when ReadClientHello is
	// given maxBytes <= 0 (caddy-l4 and nginx use 16 KiB).
	DefaultMaxHelloBytes = 16 << 10
	// MaxHelloBytesLimit is the largest limit ReadClientHello honours; larger
	// values are clamped. It matches crypto/tls's maximum handshake message.
	MaxHelloBytesLimit = 64 << 10
)

const (
	recordHeaderLen     = 5
	maxPlaintext        = 16384 // RFC 8446, Section 5.1: TLSPlaintext.length <= 2^14
	recordTypeAlert     = 21
	recordTypeHandshake = 22
	typeClientHello     = 1
	alertLevelWarning   = 1
	alertCloseNotify    = 0
	// maxUselessRecords mirrors crypto/tls (common.go): more than 16
	// consecutive non-advancing records (warning alerts) abort the handshake.
	maxUselessRecords = 16
	// initialBufSize covers the Go default hello (1.5 KB, X25519MLKEM768) and
	// a Chrome hello (1.8 KB) in one Read while keeping a held slowloris
	// connection cheap; the buffer grows to the declared size when needed.
	initialBufSize = 2048
	// maxEmptyReads bounds Reads returning (0, nil), like bufio.
	maxEmptyReads = 100
)

// ReadClientHello reads the TLS records that carry the first ClientHello from
// r and parses the message, accepting and rejecting exactly what crypto/tls
// would before it calls Config.GetConfigForClient (see hello_parse.go; the
// parser is differentially fuzzed against crypto/tls).
//
// It never reads more than maxBytes bytes from r (maxBytes <= 0 means
// DefaultMaxHelloBytes; values above MaxHelloBytesLimit are clamped). It sets
// no deadline: the caller sets one on the connection first. The returned
// *ClientHello is never nil and its Raw field holds every byte consumed, also
// on error, so the caller can replay or inspect them.
//
// Errors:
//   - ErrNotTLS, right after the first Read, if the first byte is neither a
//     handshake (22) nor an alert (21) record type. LooksLikeHTTP(Raw) tells
//     whether a plain-HTTP reply makes sense.
//   - ErrHelloTooLarge, as soon as a record header or the handshake header
//     shows that the hello cannot fit in maxBytes, and for any record longer
//     than 2^14 bytes (crypto/tls rejects those as record_overflow).
//   - ErrMalformed for anything crypto/tls would reject. The record layer
//     is checked here, mirroring crypto/tls (conn.go, readRecordOrCCS):
//     record types other than handshake or alert, a record version >= 0x1000,
//     zero-length handshake records, alerts that are not warning-level or are
//     close_notify, more than 16 consecutive alerts, a first handshake message
//     that is not a client_hello. The message itself is then parsed with
//     crypto/tls's rules, which reject duplicate extensions, bad lengths,
//     two host_names, an empty host_name, a trailing dot in the SNI, a
//     malformed ECH extension, and so on.
//   - Read errors are wrapped with %w, so errors.Is works with
//     os.ErrDeadlineExceeded; EOF before the first byte wraps io.EOF and EOF
//     inside the hello wraps io.ErrUnexpectedEOF.
//
// Up to 16 warning alerts before or between the hello's records are
// accepted, as crypto/tls accepts them (RELIABILITY-TESTS A11).
func ReadClientHello(r io.Reader, maxBytes int) (*ClientHello, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxHelloBytes
	} else if maxBytes > MaxHelloBytesLimit {
		maxBytes = MaxHelloBytesLimit
	}
	f := framer{
		r:   r,
		max: maxBytes,
		buf: make([]byte, 0, min(maxBytes, initialBufSize)),
	}
	end, hsLen, err := f.frame()
	b := new(helloBlock)
	h := &b.h
	h.Raw = f.buf
	if err != nil {
		return h, err
	}
	return h, b.parseMessage(helloMessage(f.buf[:end], hsLen))
}

// framer reads TLS records from r into buf, never past max bytes.
type framer struct {
	r    io.Reader
	buf  []byte
	max  int
	hint int   // lower bound on the bytes the hello needs, once known
	err  error // Read error returned together with data, reported next time
}

// fill does one Read that returns data, growing buf if it is full.
func (f *framer) fill() error {
	if len(f.buf) >= f.max {
		// Callers check the limit first; this keeps the invariant local.
		return ErrHelloTooLarge
	}
	if len(f.buf) == cap(f.buf) {
		nb := make([]byte, len(f.buf), min(f.max, max(2*cap(f.buf), f.hint, initialBufSize)))
		copy(nb, f.buf)
		f.buf = nb
	}
	for range maxEmptyReads {
		if f.err != nil {
			return f.wrap(f.err)
		}
		free := f.buf[len(f.buf):cap(f.buf)]
		n, err := f.r.Read(free)
		if n < 0 || n > len(free) {
			return fmt.Errorf("tlsutil: reading ClientHello: invalid Read count %d", n)
		}
		f.buf = f.buf[:len(f.buf)+n]
		f.err = err
		if n > 0 {
			return nil
		}
	}
	return f.wrap(io.ErrNoProgress)
}

func (f *framer) wrap(err error) error {
	if err == io.EOF && len(f.buf) > 0 {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("tlsutil: reading ClientHello: %w", err)
}

// need returns the fewest bytes the stream must hold for the hello to be
// complete: everything up to end, plus rem handshake bytes in records of at
// most maxPlaintext bytes.
func need(end, rem int) int {
	if rem <= 0 {
		return end
	}
	return end + rem + recordHeaderLen*((rem+maxPlaintext-1)/maxPlaintext)
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

func tooLarge(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrHelloTooLarge}, args...)...)
}

// frame reads records until the ClientHello message is complete. It returns
// the offset in buf just past the record holding the message's last byte,
// and the message's length including its 4-byte header.
//
// Bytes are processed as they arrive, so a declared length that cannot fit
// is rejected before anything more is read (RELIABILITY T4, A6, A7).
func (f *framer) frame() (end, hsLen int, err error) {
	if err := f.fill(); err != nil {
		return 0, 0, err
	}
	if t := f.buf[0]; t != recordTypeHandshake && t != recordTypeAlert {
		return 0, 0, ErrNotTLS
	}
	var (
		rec     int     // offset of the current record header in buf
		hs      [4]byte // msg_type, uint24 length
		hsGot   int     // handshake message bytes seen so far
		useless int     // consecutive warning alerts
	)
	hsLen = -1 // message length including its 4-byte header, once known
	for {
		// RFC 8446, Section 5.1: type(1) legacy_record_version(2) length(2).
		for len(f.buf) < rec+recordHeaderLen {
			if rec+recordHeaderLen > f.max {
				return 0, 0, tooLarge("next record header at byte %d exceeds limit %d", rec, f.max)
			}
			if err := f.fill(); err != nil {
				return 0, 0, err
			}
		}
		typ := f.buf[rec]
		vers := uint16(f.buf[rec+1])<<8 | uint16(f.buf[rec+2])
		n := int(f.buf[rec+3])<<8 | int(f.buf[rec+4])
		body := rec + recordHeaderLen
		end := body + n
		switch {
		case typ != recordTypeHandshake && typ != recordTypeAlert:
			// crypto/tls: alertUnexpectedMessage, or "first record does
			// not look like a TLS handshake".
			return 0, 0, malformed("record type %d before the ClientHello", typ)
		case vers >= 0x1000:
			// crypto/tls accepts any record version below 0x1000 before
			// the hello (0x0300 included) and rejects the rest.
			return 0, 0, malformed("record version %#04x", vers)
		case n > maxPlaintext:
			// crypto/tls rejects n > 2^14+2048 before reading the body and
			// an unencrypted n > 2^14 after it (record_overflow).
			return 0, 0, tooLarge("record length %d", n)
		case end > f.max:
			return 0, 0, tooLarge("record of %d bytes at byte %d exceeds limit %d", n, rec, f.max)
		case typ == recordTypeAlert && n != 2:
			return 0, 0, malformed("alert record of length %d", n)
		case typ == recordTypeHandshake && n == 0:
			// crypto/tls: alertUnexpectedMessage.
			return 0, 0, malformed("empty handshake record")
		}

		if typ == recordTypeAlert {
			useless++
			if useless > maxUselessRecords {
				return 0, 0, malformed("more than %d alerts before the ClientHello", maxUselessRecords)
			}
			if hsLen >= 0 {
				if f.hint = need(end, hsLen-hsGot); f.hint > f.max {
					return 0, 0, tooLarge("ClientHello of %d bytes needs %d bytes, limit %d", hsLen, f.hint, f.max)
				}
			}
			for len(f.buf) < end {
				if err := f.fill(); err != nil {
					return 0, 0, err
				}
			}
			// RFC 5246, Section 7.2: a warning is dropped, close_notify
			// reads as EOF, anything else ends the handshake.
			if f.buf[body] != alertLevelWarning || f.buf[body+1] == alertCloseNotify {
				return 0, 0, malformed("alert %d/%d before the ClientHello", f.buf[body], f.buf[body+1])
			}
			rec = end
			continue
		}

		useless = 0
		if hsLen >= 0 {
			if f.hint = need(end, hsLen-hsGot-n); f.hint > f.max {
				return 0, 0, tooLarge("ClientHello of %d bytes needs %d bytes, limit %d", hsLen, f.hint, f.max)
			}
		}
		pos := body
		for {
			avail := min(len(f.buf), end)
			for pos < avail {
				if hsGot >= len(hs) {
					hsGot += avail - pos
					pos = avail
					break
				}
				hs[hsGot] = f.buf[pos]
				hsGot++
				pos++
				if hsGot != 4 {
					continue
				}
				// RFC 8446, Section 4: msg_type(1) length(3). The header
				// may be split across records.
				if hs[0] != typeClientHello {
					return 0, 0, malformed("handshake message type %d, want client_hello", hs[0])
				}
				hsLen = 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
				if f.hint = need(end, hsLen-hsGot-(end-pos)); f.hint > f.max {
					return 0, 0, tooLarge("ClientHello of %d bytes needs %d bytes, limit %d", hsLen, f.hint, f.max)
				}
			}
			if len(f.buf) >= end {
				break
			}
			if err := f.fill(); err != nil {
				return 0, 0, err
			}
		}
		if hsLen >= 0 && hsGot >= hsLen {
			return end, hsLen, nil
		}
		rec = end
	}
}

// httpMethods are the request-line tokens LooksLikeHTTP recognizes, each
// with its trailing space. PRI is the HTTP/2 connection preface.
var httpMethods = [...]string{
	"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ", "PRI ",
}

// LooksLikeHTTP reports whether b starts like an HTTP/1.x request line (a
// method token and a space), or is a non-empty proper prefix of one, since
// the first Read may be short. Callers use it after ErrNotTLS to choose
// between the "HTTP request to an HTTPS server" 400 and a bare close.
func LooksLikeHTTP(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, m := range httpMethods {
		if len(b) >= len(m) {
			if string(b[:len(m)]) == m {
				return true
			}
		} else if string(b) == m[:len(b)] {
			return true
		}
	}
	return false
}
