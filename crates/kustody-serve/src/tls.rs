//! The listener's TLS: a given certificate and key, or one kustody makes on first start; and,
//! with a client CA, client-certificate authentication (mTLS) offered alongside bearer tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server's certificate came from.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate (DER), hex: what a client pins or checks.
    pub fingerprint: String,
    pub generated: bool,
}

/// Builds the rustls configuration. Without `cert`/`key`, a self-signed certificate for
/// `sans` (plus localhost) is made in `dir` on first start and reused afterwards.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
    dir: &Path,
    sans: &[String],
) -> Result<ServerTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert_path, key_path, generated) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None) => {
            let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
            let made = if c.exists() && k.exists() {
                false
            } else {
                generate(&c, &k, sans)?;
                true
            };
            (c, k, made)
        }
        _ => return Err(anyhow!("--tls-cert and --tls-key go together")),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read certificate `{}`", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in `{}`", cert_path.display()))?;
    let leaf = chain.first().ok_or_else(|| anyhow!("no certificate in `{}`", cert_path.display()))?;
    let fingerprint = hex(&sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(leaf.as_ref())));
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read private key `{}`", key_path.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read client CA `{}`", ca.display()))?
            {
                roots.add(c.with_context(|| format!("bad PEM in `{}`", ca.display()))?).context("client CA")?;
            }
            // Client certificates are optional at the TLS layer: a request without one must
            // then bring a bearer token (checked per request).
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).context("server certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls { config: Arc::new(config), cert_path, fingerprint, generated })
}

fn generate(cert: &Path, key: &Path, sans: &[String]) -> Result<()> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    names.extend(sans.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(names).context("generating the server certificate")?;
    if let Some(d) = cert.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create `{}`", d.display()))?;
    }
    write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("cannot write `{}`", cert.display()))?;
    Ok(())
}

/// Writes a file only its owner can read (created with mode 0600, never wider for a moment).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path).with_context(|| format!("cannot write `{}`", path.display()))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).with_context(|| format!("cannot write `{}`", path.display()))
}

/// The common name of a verified client certificate.
pub fn client_name(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok().map(str::to_owned)))
        .unwrap_or_else(|| "client-certificate".to_owned())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
