package main

import (
	"crypto/tls"
	"crypto/x509"
)

// loadCert loads the certificate and key files set at path (".cert" and
// ".key" under it), once per pair: routes and listeners may share one. It
// returns nil if neither is set, or on error (recorded).
func (cp *compiler) loadCert(path, certFile, keyFile string) *tls.Certificate {
	if (certFile == "") != (keyFile == "") {
		cp.errorf(path+".cert", "cert and key must be set together")
		return nil
	}
	if certFile == "" {
		return nil
	}
	k := [2]string{cp.cfg.resolve(certFile), cp.cfg.resolve(keyFile)}
	if cert, ok := cp.certs[k]; ok {
		return cert
	}
	cert, err := tls.LoadX509KeyPair(k[0], k[1])
	if err != nil {
		cp.errorf(path+".cert", "%v", err)
		return nil
	}
	cp.certs[k] = &cert
	return &cert
}

// Certificates returns the leaf certificate served for every configured
// server name ("*.parent" for wildcards) of every TLS listener. A listener's
// default certificate is listed as "default:<listener>" when no name serves
// it. When two listeners serve different certificates for one name, the one
// expiring first is returned. The metrics read it at scrape time
// (sluice_cert_expiry_seconds, RELIABILITY T22).
func (rt *Runtime) Certificates() map[string]*x509.Certificate {
	out := map[string]*x509.Certificate{}
	for _, lname := range sortedKeys(rt.Listeners) {
		lr := rt.Listeners[lname]
		if !lr.tls || lr.certs == nil {
			continue
		}
		set := lr.certs.Certs()
		if set == nil {
			continue
		}
		named := map[*tls.Certificate]bool{}
		var def *tls.Certificate
		set.Each(func(name string, c *tls.Certificate) {
			if name == "" {
				def = c
				return
			}
			named[c] = true
			addLeaf(out, name, c)
		})
		if def != nil && !named[def] {
			addLeaf(out, "default:"+lname, def)
		}
	}
	return out
}

func addLeaf(out map[string]*x509.Certificate, name string, c *tls.Certificate) {
	leaf := c.Leaf
	if leaf == nil && len(c.Certificate) > 0 {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return
		}
	}
	if leaf == nil {
		return
	}
	if old := out[name]; old == nil || leaf.NotAfter.Before(old.NotAfter) {
		out[name] = leaf
	}
}
