package tlsutil

import (
	"crypto/tls"
	"errors"
	"strings"
	"sync/atomic"
)

// ErrNoCertificate is returned by GetCertificate when the store holds none.
var ErrNoCertificate = errors.New("tlsutil: no certificate")

// Certs is an immutable set of certificates chosen by server name: exact
// names, single-label wildcards ("*.example.com") and a default for clients
// that send no (or an unknown) server name. Build one with NewCerts and
// publish it through a CertStore.
type Certs struct {
	exact    map[string]*tls.Certificate
	wildcard map[string]*tls.Certificate // parent domain of "*.parent"
	def      *tls.Certificate
}

// NewCerts returns an empty set.
func NewCerts() *Certs {
	return &Certs{exact: map[string]*tls.Certificate{}, wildcard: map[string]*tls.Certificate{}}
}

// Add serves cert for name: a normalized host name or "*.parent". The first
// certificate added for a name wins.
func (c *Certs) Add(name string, cert *tls.Certificate) {
	m := c.exact
	if parent, ok := strings.CutPrefix(name, "*."); ok {
		m, name = c.wildcard, parent
	}
	if _, dup := m[name]; !dup {
		m[name] = cert
	}
}

// SetDefault serves cert to clients whose server name matches nothing.
func (c *Certs) SetDefault(cert *tls.Certificate) { c.def = cert }

// Default is the certificate for clients whose server name matches nothing.
func (c *Certs) Default() *tls.Certificate { return c.def }

// Lookup returns the certificate for a server name: exact, then wildcard,
// then the default.
func (c *Certs) Lookup(serverName string) *tls.Certificate {
	if serverName != "" {
		name := strings.ToLower(serverName)
		if cert := c.exact[name]; cert != nil {
			return cert
		}
		if i := strings.IndexByte(name, '.'); i > 0 {
			if cert := c.wildcard[name[i+1:]]; cert != nil {
				return cert
			}
		}
	}
	return c.def
}

// CertStore serves the current Certs to handshakes without locks; a reload
// swaps the whole set at once, so new handshakes get new certificates and
// established sessions are untouched.
type CertStore struct {
	certs atomic.Pointer[Certs]
}

// NewCertStore returns a store serving certs.
func NewCertStore(certs *Certs) *CertStore {
	s := &CertStore{}
	s.certs.Store(certs)
	return s
}

// Swap publishes certs for every handshake from now on.
func (s *CertStore) Swap(certs *Certs) { s.certs.Store(certs) }

// GetCertificate is a tls.Config.GetCertificate.
func (s *CertStore) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := s.certs.Load().Lookup(hello.ServerName); cert != nil {
		return cert, nil
	}
	return nil, ErrNoCertificate
}
