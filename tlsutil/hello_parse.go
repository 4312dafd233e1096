package tlsutil

import "strings"

// This file holds the ClientHello message parser ReadClientHello uses. It
// makes the same accept/reject decision as crypto/tls does before it calls
// Config.GetConfigForClient, and returns the same fields, without running
// the crypto/tls handshake machinery (which costs about 40 allocations and
// 6-13 KB per hello). The crypto/tls path survives as parseWithCryptoTLS
// (cryptotls_test.go),
// the oracle of the tests and of FuzzClientHelloDifferential.
//
// What crypto/tls (Go 1.26) checks before GetConfigForClient, given the
// first handshake message (the record layer is checked by framer.frame):
//
//  1. conn.go readHandshake: msg_type client_hello and a length of at most
//     maxHandshake (65536); frame enforces both (the byte limit is at most
//     64 KiB).
//  2. handshake_messages.go clientHelloMsg.unmarshal: the structure of the
//     message and of the extensions it knows (parseHelloMessage below).
//  3. handshake_server.go readClientHello: when the encrypted_client_hello
//     extension is non-empty, ech.go processECHClientHello runs parseECHExt
//     on it (even with no ECH keys) and rejects a malformed body
//     (checkECH below). With no keys that is all; the version negotiation
//     comes after GetConfigForClient.
//
// Everything else crypto/tls does with the message happens after
// GetConfigForClient, so it cannot change what the old path returned.

// Extension code points parsed by clientHelloMsg.unmarshal (crypto/tls
// common.go). Every other code point is skipped unread.
const (
	extServerName              = 0      // RFC 6066, Section 3
	extStatusRequest           = 5      // RFC 6066, Section 8
	extSupportedGroups         = 10     // RFC 8446, Section 4.2.7
	extSupportedPoints         = 11     // RFC 8422, Section 5.1.2
	extSignatureAlgorithms     = 13     // RFC 8446, Section 4.2.3
	extALPN                    = 16     // RFC 7301, Section 3.1
	extSCT                     = 18     // RFC 6962, Section 3.3.1
	extExtendedMasterSecret    = 23     // RFC 7627
	extSessionTicket           = 35     // RFC 5077, Section 3.2
	extPreSharedKey            = 41     // RFC 8446, Section 4.2.11
	extEarlyData               = 42     // RFC 8446, Section 4.2.10
	extSupportedVersions       = 43     // RFC 8446, Section 4.2.1
	extCookie                  = 44     // RFC 8446, Section 4.2.2
	extPSKModes                = 45     // RFC 8446, Section 4.2.9
	extSignatureAlgorithmsCert = 50     // RFC 8446, Section 4.2.3
	extKeyShare                = 51     // RFC 8446, Section 4.2.8
	extQUICTransportParameters = 57     // RFC 9001, Section 8.2
	extRenegotiationInfo       = 0xff01 // RFC 5746, Section 3.2
	extEncryptedClientHello    = 0xfe0d // RFC 9849 (ECH), Section 5
)

// ECH extension types (ech.go: outerECHExt, innerECHExt).
const (
	echTypeOuter = 0
	echTypeInner = 1
)

// helloBlock puts a ClientHello and small backing arrays for its Versions
// and ALPN slices in one allocation. ReadClientHello returns &b.h; the
// interior pointer keeps the arrays alive.
type helloBlock struct {
	h    ClientHello
	vers [8]uint16
	alpn [4]string
}

// vec is a read cursor over a byte slice, in the manner of
// golang.org/x/crypto/cryptobyte.String (which is not a dependency of this
// module). Every method returns false, leaving the cursor unspecified, when
// the bytes run out.
type vec []byte

func (s *vec) empty() bool { return len(*s) == 0 }

func (s *vec) skip(n int) bool {
	if len(*s) < n {
		return false
	}
	*s = (*s)[n:]
	return true
}

func (s *vec) u8(v *uint8) bool {
	if len(*s) < 1 {
		return false
	}
	*v = (*s)[0]
	*s = (*s)[1:]
	return true
}

func (s *vec) u16(v *uint16) bool {
	if len(*s) < 2 {
		return false
	}
	*v = uint16((*s)[0])<<8 | uint16((*s)[1])
	*s = (*s)[2:]
	return true
}

// bytes8 and bytes16 read an opaque vector with a 1- or 2-byte length
// prefix (RFC 8446, Section 3.4).
func (s *vec) bytes8(out *vec) bool {
	var n uint8
	return s.u8(&n) && s.take(int(n), out)
}

func (s *vec) bytes16(out *vec) bool {
	var n uint16
	return s.u16(&n) && s.take(int(n), out)
}

func (s *vec) take(n int, out *vec) bool {
	if len(*s) < n {
		return false
	}
	*out = (*s)[:n:n]
	*s = (*s)[n:]
	return true
}

// u16List reports whether b is a whole number of uint16 values and, when
// nonEmpty, holds at least one: the shape of a uint16<2..2^16-2> list in
// crypto/tls's loops ("for !list.Empty() { if !list.ReadUint16 ... }").
func u16List(b vec, nonEmpty bool) bool {
	return len(b)%2 == 0 && (!nonEmpty || len(b) > 0)
}

// helloParse is what parseHelloMessage found, as slices of the message.
type helloParse struct {
	legacyVers  uint16
	serverName  vec // host_name, nil if none
	alpn        vec // ProtocolNameList body, nil if no ALPN extension
	alpnCount   int
	versions    vec // supported_versions body, nil if the extension is absent
	ech         vec // encrypted_client_hello body
	hasVersions bool
	hasALPN     bool
}

// seenSet detects duplicate extension types without allocating for any
// realistic hello: the first len(small) types are kept in an array; past
// that a 65536-bit set is allocated (a hello can hold up to ~16k empty
// extensions, and a quadratic scan of those would be a CPU sink).
type seenSet struct {
	small [40]uint16
	n     int
	big   *[1024]uint64
}

// add records t and reports whether it was new.
func (s *seenSet) add(t uint16) bool {
	if s.big != nil {
		w, bit := t>>6, uint64(1)<<(t&63)
		if s.big[w]&bit != 0 {
			return false
		}
		s.big[w] |= bit
		return true
	}
	for _, u := range s.small[:s.n] {
		if u == t {
			return false
		}
	}
	if s.n < len(s.small) {
		s.small[s.n] = t
		s.n++
		return true
	}
	s.big = new([1024]uint64)
	for _, u := range s.small {
		s.big[u>>6] |= 1 << (u & 63)
	}
	s.big[t>>6] |= 1 << (t & 63)
	return true
}

// parseHelloMessage applies the rules of crypto/tls's
// clientHelloMsg.unmarshal (handshake_messages.go, Go 1.26) to msg, a
// whole handshake message including its 4-byte header, and reports whether
// crypto/tls would accept it. The rules, in the order crypto/tls applies
// them:
//
//   - legacy_version(2), random(32), legacy_session_id<0..255> (its length
//     is not checked against 32), cipher_suites<2..2^16-2> as a whole number
//     of uint16 (may be empty), legacy_compression_methods<0..255>.
//   - If nothing follows, the hello has no extensions and is accepted.
//   - Otherwise an extensions<0..2^16-1> block that must end the message
//     exactly. Each extension is type(2) and extension_data<0..2^16-1>; a
//     type seen twice is rejected (crypto/tls's seenExts, which covers
//     unknown types too). Unknown types are skipped without looking at
//     their data; each known type's data must parse as below and be consumed
//     exactly.
func parseHelloMessage(msg []byte) (p helloParse, ok bool) {
	s := vec(msg)
	var sessionID, suites, compression vec
	if !s.skip(4) || !s.u16(&p.legacyVers) || !s.skip(32) ||
		!s.bytes8(&sessionID) || !s.bytes16(&suites) || !u16List(suites, false) ||
		!s.bytes8(&compression) {
		return p, false
	}
	if s.empty() {
		return p, true
	}
	var exts vec
	if !s.bytes16(&exts) || !s.empty() {
		return p, false
	}
	var seen seenSet
	for !exts.empty() {
		var typ uint16
		var data vec
		if !exts.u16(&typ) || !exts.bytes16(&data) {
			return p, false
		}
		if !seen.add(typ) {
			return p, false
		}
		switch typ {
		case extServerName:
			// ServerNameList server_name_list<1..2^16-1>; each entry is
			// name_type(1) and a non-empty opaque<1..2^16-1>. Entries of
			// another name_type are skipped; a second host_name and a
			// host_name ending in '.' are rejected.
			var list vec
			if !data.bytes16(&list) || list.empty() {
				return p, false
			}
			for !list.empty() {
				var nameType uint8
				var name vec
				if !list.u8(&nameType) || !list.bytes16(&name) || name.empty() {
					return p, false
				}
				if nameType != 0 {
					continue
				}
				if p.serverName != nil || name[len(name)-1] == '.' {
					return p, false
				}
				p.serverName = name
			}
		case extStatusRequest:
			// status_type(1), then responder_id_list and request_extensions,
			// two uint16-prefixed vectors that are not parsed further.
			var typ uint8
			var ignored vec
			if !data.u8(&typ) || !data.bytes16(&ignored) || !data.bytes16(&ignored) {
				return p, false
			}
		case extSupportedGroups, extSignatureAlgorithms, extSignatureAlgorithmsCert:
			// NamedGroup / SignatureScheme lists: uint16-prefixed,
			// non-empty, whole uint16 values.
			var list vec
			if !data.bytes16(&list) || !u16List(list, true) {
				return p, false
			}
		case extSupportedPoints:
			// ec_point_format_list<1..2^8-1>.
			var list vec
			if !data.bytes8(&list) || list.empty() {
				return p, false
			}
		case extSessionTicket, extQUICTransportParameters, extEncryptedClientHello:
			// Opaque: crypto/tls takes the whole body. The ECH body is
			// parsed after unmarshal, by checkECH.
			if typ == extEncryptedClientHello {
				p.ech = data
			}
			data = nil
		case extRenegotiationInfo:
			// renegotiated_connection<0..255>.
			var rc vec
			if !data.bytes8(&rc) {
				return p, false
			}
		case extExtendedMasterSecret, extSCT, extEarlyData:
			// No body is read, so the data must be empty.
		case extALPN:
			// ProtocolNameList protocol_name_list<2..2^16-1>, each
			// ProtocolName opaque<1..2^8-1>; the list may not be empty.
			var list vec
			if !data.bytes16(&list) || list.empty() {
				return p, false
			}
			p.alpn, p.hasALPN, p.alpnCount = list, true, 0
			for !list.empty() {
				var proto vec
				if !list.bytes8(&proto) || proto.empty() {
					return p, false
				}
				p.alpnCount++
			}
		case extSupportedVersions:
			// ProtocolVersion versions<2..254>: uint8-prefixed, non-empty,
			// whole uint16 values.
			var list vec
			if !data.bytes8(&list) || !u16List(list, true) {
				return p, false
			}
			p.versions, p.hasVersions = list, true
		case extCookie:
			// opaque cookie<1..2^16-1>.
			var cookie vec
			if !data.bytes16(&cookie) || cookie.empty() {
				return p, false
			}
		case extKeyShare:
			// KeyShareEntry client_shares<0..2^16-1>; each is group(2) and
			// a non-empty key_exchange<1..2^16-1>.
			var shares vec
			if !data.bytes16(&shares) {
				return p, false
			}
			for !shares.empty() {
				var group uint16
				var key vec
				if !shares.u16(&group) || !shares.bytes16(&key) || key.empty() {
					return p, false
				}
			}
		case extPSKModes:
			// PskKeyExchangeMode ke_modes<1..255>; crypto/tls accepts an
			// empty list.
			var modes vec
			if !data.bytes8(&modes) {
				return p, false
			}
		case extPreSharedKey:
			// Must be the last extension (RFC 8446, Section 4.2.11).
			// identities<7..2^16-1>, each a non-empty identity<1..2^16-1>
			// and obfuscated_ticket_age(4); binders<33..2^16-1>, each a
			// non-empty PskBinderEntry<32..255> (only non-emptiness is
			// checked).
			if !exts.empty() {
				return p, false
			}
			var ids vec
			if !data.bytes16(&ids) || ids.empty() {
				return p, false
			}
			for !ids.empty() {
				var label vec
				if !ids.bytes16(&label) || !ids.skip(4) || label.empty() {
					return p, false
				}
			}
			var binders vec
			if !data.bytes16(&binders) || binders.empty() {
				return p, false
			}
			for !binders.empty() {
				var binder vec
				if !binders.bytes8(&binder) || binder.empty() {
					return p, false
				}
			}
		default:
			// Unknown extensions (GREASE included) are ignored.
			continue
		}
		if !data.empty() {
			return p, false
		}
	}
	return p, true
}

// checkECH applies ech.go's parseECHExt, which processECHClientHello runs
// on a non-empty encrypted_client_hello body before GetConfigForClient
// even when the server has no ECH keys (RELIABILITY T6). The body is
// ECHClientHello (ECH draft / RFC 9849, Section 5): type(1); an inner
// hello's body is exactly that byte; an outer one continues with
// cipher_suite (kdf_id(2), aead_id(2)), config_id(1), enc<0..2^16-1> and
// payload<1..2^16-1>, after which crypto/tls ignores trailing bytes and
// does not check that payload is non-empty. Any other type is rejected
// (illegal_parameter). An empty body is never parsed.
func checkECH(body vec) bool {
	if len(body) == 0 {
		return true
	}
	var typ uint8
	if !body.u8(&typ) {
		return false
	}
	switch typ {
	case echTypeInner:
		return body.empty()
	case echTypeOuter:
		var enc, payload vec
		return body.skip(2+2+1) && body.bytes16(&enc) && body.bytes16(&payload)
	default:
		return false
	}
}

// parseMessage parses msg (a whole client_hello handshake message) into b.h
// and reports ErrMalformed where crypto/tls would not reach
// GetConfigForClient. The strings it returns share one fresh allocation;
// nothing aliases msg.
func (b *helloBlock) parseMessage(msg []byte) error {
	p, ok := parseHelloMessage(msg)
	if !ok {
		return malformed("ClientHello message does not parse")
	}
	if !checkECH(p.ech) {
		return malformed("invalid encrypted_client_hello extension")
	}
	h := &b.h

	// One string holds the host_name and every ALPN protocol.
	if n := len(p.serverName) + len(p.alpn); n > 0 {
		var sb strings.Builder
		sb.Grow(n)
		sb.Write(p.serverName)
		sb.Write(p.alpn)
		all := sb.String()
		if len(p.serverName) > 0 {
			raw := all[:len(p.serverName)]
			h.RawServerName = raw
			name, ok := NormalizeSNI(raw)
			h.ServerName, h.SNIInvalid = name, !ok
		}
		if p.hasALPN {
			protos := b.alpn[:0]
			if p.alpnCount > len(b.alpn) {
				protos = make([]string, 0, p.alpnCount)
			}
			// The list was validated above: uint8-prefixed, non-empty.
			rest := all[len(p.serverName):]
			for len(rest) > 0 {
				n := int(rest[0])
				protos = append(protos, rest[1:1+n])
				rest = rest[1+n:]
			}
			h.ALPN = protos[:len(protos):len(protos)] // appends must not write into b
		}
	}

	// Versions: the supported_versions list as sent, else legacy_version.
	// crypto/tls rejects an empty list, so the list is never empty.
	vers := b.vers[:0]
	if p.hasVersions {
		if n := len(p.versions) / 2; n > len(b.vers) {
			vers = make([]uint16, 0, n)
		}
		for i := 0; i+1 < len(p.versions); i += 2 {
			vers = append(vers, uint16(p.versions[i])<<8|uint16(p.versions[i+1]))
		}
	} else {
		vers = append(vers, p.legacyVers)
	}
	h.Versions = vers[:len(vers):len(vers)]
	return nil
}

// helloMessage returns the first handshake message carried by records,
// which framer.frame has validated and found to hold all of its hsLen
// bytes. A message inside one record is returned as a subslice of records;
// one split across records is copied into a fresh slice.
func helloMessage(records []byte, hsLen int) []byte {
	var msg []byte
	first := true
	for p := 0; p+recordHeaderLen <= len(records); {
		typ := records[p]
		n := int(records[p+3])<<8 | int(records[p+4])
		body := records[p+recordHeaderLen : p+recordHeaderLen+n]
		p += recordHeaderLen + n
		if typ != recordTypeHandshake {
			continue // a warning alert between records
		}
		if first && len(body) >= hsLen {
			return body[:hsLen:hsLen]
		}
		if first {
			msg = make([]byte, 0, hsLen)
			first = false
		}
		msg = append(msg, body[:min(len(body), hsLen-len(msg))]...)
		if len(msg) == hsLen {
			return msg
		}
	}
	return msg // not reached for records from frame
}
