package tlstest

import (
	"encoding/binary"
	"math/rand/v2"
)

// ChromeLikeHello hand-builds a ClientHello shaped like a recent Chrome
// (about 1.8 KB with a short name): GREASE cipher suite, groups, versions,
// key share and two GREASE extensions, an X25519MLKEM768 key share, ALPS,
// certificate compression and a well-formed GREASE ECH extension (outer
// type, 0xfe0d). Random fields come from a fixed seed, so the bytes are
// stable. serverName "" omits SNI. crypto/tls parses it; nothing here would
// complete a handshake.
func ChromeLikeHello(serverName string) []byte {
	rng := rand.New(rand.NewChaCha8([32]byte{'s', 'l', 'u', 'i', 'c', 'e'}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	u16 := func(vs ...uint16) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.BigEndian.AppendUint16(b, v)
		}
		return b
	}
	vec16 := func(parts ...[]byte) []byte { // uint16 length-prefixed
		var body []byte
		for _, p := range parts {
			body = append(body, p...)
		}
		return append(u16(uint16(len(body))), body...)
	}
	// RFC 8701 GREASE values: 0x?a?a.
	const grease1, grease2, grease3 = 0x0a0a, 0x3a3a, 0xdada

	body := u16(0x0303)
	body = append(body, random(32)...)
	body = append(body, 32)
	body = append(body, random(32)...)
	body = append(body, vec16(u16(grease1, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030,
		0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035))...)
	body = append(body, 1, 0) // compression: null

	h := &Hello{RecordVersion: 0x0301, Body: body}
	add := func(typ uint16, data []byte) {
		h.Extensions = append(h.Extensions, Extension{Type: typ, Data: data})
	}
	add(grease2, nil)
	if serverName != "" {
		add(ExtServerName, ServerNameData(ServerNameEntry{Name: serverName}))
	}
	add(23, nil)                                                     // extended_master_secret
	add(0xff01, []byte{0})                                           // renegotiation_info
	add(10, vec16(u16(grease1, 0x11ec, 0x001d, 0x0017, 0x0018)))     // supported_groups
	add(11, []byte{1, 0})                                            // ec_point_formats
	add(35, nil)                                                     // session_ticket
	add(ExtALPN, vec16([]byte{2, 'h', '2'}, []byte("\x08http/1.1"))) // ALPN
	add(5, []byte{1, 0, 0, 0, 0})                                    // status_request
	add(13, vec16(u16(0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)))
	add(18, nil)   // signed_certificate_timestamp
	add(51, vec16( // key_share
		u16(grease1), vec16([]byte{0}),
		u16(0x11ec), vec16(random(1184+32)),
		u16(0x001d), vec16(random(32))))
	add(45, []byte{1, 1}) // psk_key_exchange_modes: psk_dhe_ke
	add(ExtSupportedVersions, append([]byte{6}, u16(grease3, 0x0304, 0x0303)...))
	add(27, []byte{2, 0, 2})                  // compress_certificate: brotli
	add(0x44cd, append(u16(3), 2, 'h', '2'))  // application_settings
	ech := []byte{0}                          // ECHClientHello type outer
	ech = append(ech, u16(0x0001, 0x0001)...) // HKDF-SHA256, AES-128-GCM
	ech = append(ech, byte(rng.Uint32()))     // config_id
	ech = append(ech, vec16(random(32))...)   // enc
	ech = append(ech, vec16(random(240))...)  // payload
	add(ExtEncryptedClientHello, ech)
	add(grease1, []byte{0})
	return h.Marshal()
}
