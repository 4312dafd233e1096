package tlsutil

import "crypto/tls"

// Each calls f for every certificate in the set: name is the exact server
// name, "*.parent" for a wildcard, or "" for the default. A certificate
// served for several names is passed once per name.
func (c *Certs) Each(f func(name string, cert *tls.Certificate)) {
	for name, cert := range c.exact {
		f(name, cert)
	}
	for parent, cert := range c.wildcard {
		f("*."+parent, cert)
	}
	if c.def != nil {
		f("", c.def)
	}
}

// Certs returns the set the store serves now.
func (s *CertStore) Certs() *Certs { return s.certs.Load() }
