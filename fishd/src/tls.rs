//! TLS material of a node: a CA and a node certificate signed by it, made on first
//! start in the data directory and reused afterwards.
//!
//! Files (keys mode 0600): `ca.crt`, `ca.key`, `node.crt`, `node.key`, and
//! `node.sans` (the names the node certificate was made for). When the wanted names
//! change (a new `--api` host or node name), only the node certificate is made
//! again, signed by the same CA, so clients that trust `ca.crt` keep working.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::fsutil::write_private;

/// The CA's subject. Fixed, so the issuer can be rebuilt from the stored key alone.
const CA_COMMON_NAME: &str = "Aquarium CA";
const CA_ORG: &str = "Aquarium";

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a valid PEM file")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot build the TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// A node's TLS material on disk and the server configuration made from it.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Absolute path of `ca.crt`, for `fishctl.yaml` and for clients to trust.
    pub ca_cert_path: PathBuf,
    pub ca_cert_pem: String,
    /// [`fingerprint`] of the CA, as join tokens carry it.
    pub ca_fingerprint: String,
    /// TLS 1.2+, ALPN h2 and http/1.1, serving the node certificate and the CA.
    pub server_config: Arc<ServerConfig>,
}

/// The names a node certificate must carry: the node name, `localhost`, the
/// loopback addresses, and `api_host` (the host part of `--api`) if it is a real one.
pub fn wanted_names(node_name: &str, api_host: Option<&str>) -> Vec<String> {
    let mut names = vec![node_name.to_owned(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Some(h) = api_host {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        let unspecified = h.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
        if !h.is_empty() && !unspecified && !names.iter().any(|n| n == h) {
            names.push(h.to_owned());
        }
    }
    names
}

/// Loads the node's TLS material from `data_dir`, creating what is missing.
/// Needs a rustls crypto provider installed (fishd installs ring in `main`).
pub fn load_or_create(data_dir: &Path, node_name: &str, api_host: Option<&str>) -> Result<TlsMaterial, TlsError> {
    load_or_create_for(data_dir, node_name, wanted_names(node_name, api_host))
}

/// Like [`load_or_create`], with the node certificate's names given (the runtime
/// adds the cluster advertise host to [`wanted_names`]).
pub fn load_or_create_for(data_dir: &Path, node_name: &str, names: Vec<String>) -> Result<TlsMaterial, TlsError> {
    let dir = std::path::absolute(data_dir).map_err(|source| TlsError::Io { path: data_dir.into(), source })?;
    std::fs::create_dir_all(&dir).map_err(|source| TlsError::Io { path: dir.clone(), source })?;
    let p = |f: &str| dir.join(f);
    let (ca_crt, ca_key, node_crt, node_key, node_sans) =
        (p("ca.crt"), p("ca.key"), p("node.crt"), p("node.key"), p("node.sans"));

    let ca_key_pair = if ca_crt.exists() && ca_key.exists() {
        KeyPair::from_pem(&read(&ca_key)?)?
    } else {
        tracing::info!(dir = %dir.display(), "creating the node's certificate authority");
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())
            .map_err(|source| TlsError::Io { path: ca_key.clone(), source })?;
        std::fs::write(&ca_crt, cert.pem()).map_err(|source| TlsError::Io { path: ca_crt.clone(), source })?;
        // A new CA invalidates any node certificate signed by an old one.
        let _ = std::fs::remove_file(&node_crt);
        key
    };

    let names_text = names.join("\n");
    let current = std::fs::read_to_string(&node_sans).unwrap_or_default();
    if !(node_crt.exists() && node_key.exists() && current == names_text) {
        tracing::info!(names = ?names, "creating the node certificate");
        let issuer = Issuer::new(ca_params()?, ca_key_pair);
        let key = KeyPair::generate()?;
        let cert = node_params(node_name, names.clone())?.signed_by(&key, &issuer)?;
        write_private(&node_key, key.serialize_pem().as_bytes())
            .map_err(|source| TlsError::Io { path: node_key.clone(), source })?;
        std::fs::write(&node_crt, cert.pem()).map_err(|source| TlsError::Io { path: node_crt.clone(), source })?;
        std::fs::write(&node_sans, &names_text).map_err(|source| TlsError::Io { path: node_sans.clone(), source })?;
    }

    let ca_cert_pem = read(&ca_crt)?;
    let server_config = server_config(&node_crt, &node_key, &ca_crt)?;
    let ca_fingerprint = fingerprint(&ca_cert_pem)?;
    Ok(TlsMaterial { ca_cert_path: ca_crt, ca_cert_pem, ca_fingerprint, server_config })
}

/// The parameters of a node certificate: `node_name` as common name, `names` as
/// SANs, usable as a TLS server (the API) and client (node-to-node mutual TLS).
fn node_params(node_name: &str, names: Vec<String>) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name);
    params.distinguished_name.push(DnType::OrganizationName, CA_ORG);
    params.use_authority_key_identifier_extension = true;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    Ok(params)
}

/// The hex SHA-256 of the first certificate in `pem` (its DER): what a join token
/// carries so the joining node can pin the cluster CA before sending the token.
pub fn fingerprint(pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|source| TlsError::Pem { path: PathBuf::from("<certificate>"), source })?;
    Ok(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

/// A new node key and a CSR for `node_name` with the SANs `names`, as PEM
/// (key, csr). The key never leaves the node that made it.
pub fn node_csr(node_name: &str, names: Vec<String>) -> Result<(String, String), TlsError> {
    node_csr_with(KeyPair::generate()?, node_name, names)
}

/// Like [`node_csr`] with an existing key (PEM): a join retried after a crash must
/// present the key the cluster saw, or the used token is refused.
pub fn node_csr_for_key(key_pem: &str, node_name: &str, names: Vec<String>) -> Result<(String, String), TlsError> {
    node_csr_with(KeyPair::from_pem(key_pem)?, node_name, names)
}

fn node_csr_with(key: KeyPair, node_name: &str, names: Vec<String>) -> Result<(String, String), TlsError> {
    // Only the names go in the request: the signer decides usages and validity.
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Why a CSR was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the certificate request is not a valid PEM PKCS#10 request with a valid signature")]
    BadRequest(#[source] rcgen::Error),
    #[error("the certificate request names {found:?}, not the joining node {wanted:?}")]
    WrongName { found: String, wanted: String },
    #[error("cannot sign")]
    Sign(#[from] rcgen::Error),
}

/// Signs `csr_pem` for `node_name` with the CA key `ca_key_pem`. The request's common
/// name must be `node_name`; its SANs are kept (the holder of a join token is trusted
/// to say where it listens), the validity and usages are ours.
/// The SHA-256 (hex) of a CSR's SubjectPublicKeyInfo: what binds a used join token to
/// the key of the node that used it, so only that node may retry its join.
pub fn csr_key_digest(csr_pem: &str) -> Result<String, SignError> {
    use rcgen::PublicKeyData;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::BadRequest)?;
    Ok(hex::encode(sha2::Sha256::digest(csr.public_key.subject_public_key_info())))
}

pub fn sign_csr(ca_key_pem: &str, csr_pem: &str, node_name: &str) -> Result<String, SignError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::BadRequest)?;
    let found = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(|v| match v {
            rcgen::DnValue::Utf8String(s) => s.clone(),
            rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    if found != node_name {
        return Err(SignError::WrongName { found, wanted: node_name.to_owned() });
    }
    let sans: Vec<String> = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|s| match s {
            rcgen::SanType::DnsName(n) => Some(n.to_string()),
            rcgen::SanType::IpAddress(ip) => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(ca_key_pem)?);
    let signed =
        rcgen::CertificateSigningRequestParams { params: node_params(node_name, sans)?, public_key: csr.public_key };
    Ok(signed.signed_by(&issuer)?.pem())
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name.push(DnType::OrganizationName, CA_ORG);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650 * 2);
    Ok(params)
}

fn pem_err(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem { path: path.into(), source }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.into(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path).map_err(pem_err(path))?.collect::<Result<_, _>>().map_err(pem_err(path))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// A server configuration serving `cert` (followed by the CA, so clients can build
/// the chain) with `key`: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
///
/// A client certificate is asked for but optional: users present none and use
/// tokens; other nodes present their node certificate. One that does not chain to
/// `ca` fails the handshake. Which routes need one is the API's business
/// (`cluster::peer`).
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut chain = certs(cert)?;
    chain.extend(certs(ca)?);
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_err(key))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side of node-to-node traffic: trusts only the cluster CA in
/// `<data_dir>/ca.crt` and presents `node.crt`/`node.key`. For reqwest, pass it to
/// `ClientBuilder::use_preconfigured_tls`.
pub fn peer_client_config(data_dir: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let (ca, cert, key) = (data_dir.join("ca.crt"), data_dir.join("node.crt"), data_dir.join("node.key"));
    let key = PrivateKeyDer::from_pem_file(&key).map_err(pem_err(&key))?;
    let mut config =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .with_root_certificates(roots(&ca)?)
            .with_client_auth_cert(certs(&cert)?, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The common name of a DER certificate, if it has a UTF-8 one.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_then_reuses_and_renews_only_the_node_cert() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create(dir.path(), "node-a", Some("127.0.0.1")).expect("create");
        assert!(a.ca_cert_path.is_absolute());
        for key in ["ca.key", "node.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let node1 = std::fs::read(dir.path().join("node.crt")).expect("node.crt");
        let b = load_or_create(dir.path(), "node-a", Some("127.0.0.1")).expect("reuse");
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(node1, std::fs::read(dir.path().join("node.crt")).expect("node.crt"), "reused");
        let c = load_or_create(dir.path(), "node-a", Some("fish.example")).expect("renew");
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem, "the CA is kept");
        assert_ne!(node1, std::fs::read(dir.path().join("node.crt")).expect("node.crt"), "new names, new cert");
    }

    #[test]
    fn a_csr_is_signed_for_its_node_only() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = load_or_create(dir.path(), "node-a", None).expect("create");
        let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).expect("ca.key");
        let (_key, csr) = node_csr("node-b", wanted_names("node-b", Some("10.0.0.2"))).expect("csr");
        let cert = sign_csr(&ca_key, &csr, "node-b").expect("sign");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("node-b"));
        // It chains to the CA, as a client certificate too.
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(&ca.ca_cert_path).expect("roots")))
            .build()
            .expect("verifier");
        verifier.verify_client_cert(&der, &[], rustls_pki_types::UnixTime::now()).expect("chains to the CA");
        assert!(matches!(sign_csr(&ca_key, &csr, "node-c"), Err(SignError::WrongName { .. })));
        assert!(matches!(sign_csr(&ca_key, "garbage", "node-b"), Err(SignError::BadRequest(_))));
        assert_eq!(fingerprint(&ca.ca_cert_pem).expect("fp"), ca.ca_fingerprint);
        assert_eq!(ca.ca_fingerprint.len(), 64);
    }
}
