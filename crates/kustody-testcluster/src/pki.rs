//! The cluster's certificate authority, serving certificate and client certificates.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, PEM and DER.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { .. }")
    }
}

/// The CA that signs the serving certificate and every client certificate.
pub struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "kustody-testcluster-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_cert = p.self_signed(&ca_key)?;
        Ok(Pki { ca_pem: ca_cert.pem(), ca_der: ca_cert.der().to_vec(), ca_cert, ca_key })
    }

    /// The apiserver's serving certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Result<Issued> {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "kubernetes.default.svc".to_string()])?;
        p.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        p.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate: CN is the user name, O the groups (at most two: the CA library
    /// keeps one value per attribute type, so the second is written under the raw OID).
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<Issued> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = groups.first() {
            p.distinguished_name.push(DnType::OrganizationName, *g);
        }
        if let Some(g) = groups.get(1) {
            p.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 10]), *g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

/// User name and groups from a client certificate's subject (CN, O).
pub fn identity_from_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some((cn, groups))
}
