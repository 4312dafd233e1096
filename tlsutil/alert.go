package tlsutil

import "io"

// TLS alert descriptions (RFC 8446, Section 6) sent before a connection is
// closed.
const (
	AlertDecodeError      = 50  // decode_error: a hello we cannot parse
	AlertInternalError    = 80  // internal_error: our fault
	AlertUnrecognizedName = 112 // unrecognized_name: no route for the SNI (RFC 6066, Section 3)
)

// WriteAlert writes one fatal alert record, 15 03 03 00 02 02 <desc>, in a
// single Write. The record is unencrypted, which is correct before any
// ServerHello: crypto/tls clients report it as "remote error: tls: ...".
func WriteAlert(w io.Writer, desc uint8) error {
	rec := [7]byte{recordTypeAlert, 3, 3, 0, 2, 2, desc}
	_, err := w.Write(rec[:])
	return err
}
