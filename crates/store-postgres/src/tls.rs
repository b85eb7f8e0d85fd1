//! TLS through rustls (the `ring` provider), as `sslmode` and `sslrootcert`
//! ask: the connector of every connection the store opens and of every
//! cancel request it sends.
//!
//! - `prefer` and `require`: TLS without a certificate check (libpq's
//!   meaning), except that `require` with an `sslrootcert` file checks the
//!   chain, as libpq does. The handshake's signatures are always verified.
//! - `verify-ca`: the chain against the roots, not the host name.
//! - `verify-full`: the chain and the host name.
//!
//! The roots are the PEM file `sslrootcert` names, or the platform's
//! trusted roots (`sslrootcert=system`, or a verify-* mode without
//! `sslrootcert`). Sessions offer ALPN `postgresql` (what PostgreSQL 17
//! asks with `sslnegotiation=direct`) and give tokio-postgres the
//! `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use waymark_core::Error;

use crate::ssl::{RootCert, Ssl, SslMode};

/// The store's connector: one rustls configuration for every session of
/// a store, and what it checks (for messages). Cheap to clone.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<ClientConfig>,
    checks: Arc<Checks>,
}

/// What a connector checks, for the messages of refused certificates.
#[derive(Debug)]
struct Checks {
    mode: SslMode,
    /// The roots the chain is checked against, if it is.
    roots: Option<RootCert>,
}

impl fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustls")
            .field("sslmode", &self.checks.mode)
            .field("roots", &self.checks.roots)
            .finish_non_exhaustive()
    }
}

impl MakeRustls {
    /// The connector `ssl` asks for. Reads the roots now: a missing or
    /// unreadable `sslrootcert` is an [`Error::Invalid`] naming it.
    pub(crate) fn new(ssl: &Ssl) -> Result<Self, Error> {
        // The provider is named, never the process default: an application
        // that also links aws-lc-rs changes nothing here.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let roots = ssl.roots();
        let verifier: Arc<dyn ServerCertVerifier> = match &roots {
            None => Arc::new(ChainOrNothing {
                roots: None,
                algorithms,
            }),
            Some(root) => {
                let roots = Arc::new(load_roots(root, ssl.mode)?);
                if ssl.mode == SslMode::VerifyFull {
                    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                        .build()
                        .map_err(|e| {
                            Error::invalid("sslrootcert", format!("{root} is not usable: {e}"))
                        })?
                } else {
                    Arc::new(ChainOrNothing {
                        roots: Some(roots),
                        algorithms,
                    })
                }
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("sslmode", format!("no TLS version available: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            checks: Arc::new(Checks {
                mode: ssl.mode,
                roots,
            }),
        })
    }
}

/// The trusted roots `root` names.
fn load_roots(root: &RootCert, mode: SslMode) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = read_pem_certificates(path)?;
            for (i, cert) in certs.into_iter().enumerate() {
                store.add(cert).map_err(|e| {
                    Error::invalid(
                        "sslrootcert",
                        format!(
                            "certificate {} of {} is not usable as a root: {e}",
                            i + 1,
                            path.display()
                        ),
                    )
                })?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(Error::invalid(
                    "sslrootcert",
                    format!(
                        "sslmode={mode} checks the server's certificate against the system's \
                         trusted roots (sslrootcert=system, or no sslrootcert), and none were \
                         found{why}: set sslrootcert to the PEM file of the server's certificate \
                         authority"
                    ),
                ));
            }
        }
    }
    Ok(store)
}

/// Every certificate of the PEM file at `path` (other PEM sections, such as
/// a key, are skipped); at least one.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::invalid(
            "sslrootcert",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid(
                "sslrootcert",
                format!("{} is not a PEM file of certificates: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(
            "sslrootcert",
            format!(
                "{} holds no certificate (no -----BEGIN CERTIFICATE----- section)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The certificate checks short of `verify-full`, whose host-name check is
/// rustls' own verifier. With `roots` (`verify-ca`, and `require` with a
/// root file) the chain must lead to one of them, whatever host name the
/// certificate is for; without (`prefer`, `require` without a root file) any
/// certificate is accepted, as libpq does. The handshake's signatures are
/// verified either way (the session is then encrypted to whoever holds the
/// certificate's key).
#[derive(Debug)]
struct ChainOrNothing {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOrNothing {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    /// `domain` is the `host` of the connection string (tokio-postgres
    /// passes it even when `hostaddr` says where to connect).
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is neither a host name nor an IP address TLS can use"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
            checks: self.checks.clone(),
        })
    }
}

/// One session's handshake.
#[derive(Debug)]
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    checks: Arc<Checks>,
}

/// The handshake in progress.
pub(crate) type ConnectFuture<S> =
    Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = ConnectFuture<S>;

    fn connect(self, stream: S) -> ConnectFuture<S> {
        let Self {
            config,
            name,
            checks,
        } = self;
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(config)
                .connect(name.clone(), stream)
                .await
                .map(RustlsStream)
                .map_err(|e| explain(e, &name, &checks))
        })
    }
}

/// The handshake's error, saying in words what a refused certificate means
/// and which setting refused it.
fn explain(error: io::Error, name: &ServerName<'_>, checks: &Checks) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(cause)) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let host = name.to_str();
    let mode = checks.mode;
    let roots = checks
        .roots
        .as_ref()
        .map_or_else(|| "no roots".to_owned(), RootCert::to_string);
    let what = match cause {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's certificate does not match the host name {host:?} \
                 (sslmode={mode} checks that it names the host connected to)"
            )
        }
        CertificateError::UnknownIssuer => format!(
            "the server's certificate is not signed by a trusted root (sslmode={mode} checks \
             its chain against {roots})"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("the server's certificate has expired (sslmode={mode})")
        }
        _ => format!("the server's certificate was refused (sslmode={mode})"),
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{what}: {}",
            rustls::Error::InvalidCertificate(cause.clone())
        ),
    )
}

/// A TLS session to the server.
#[derive(Debug)]
pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate, with the hash of its signature algorithm (SHA-256 for
    /// MD5 and SHA-1). None for algorithms that name no hash (Ed25519,
    /// RSA-PSS), as in libpq's server.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point_hash(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The `tls-server-end-point` hash of `cert` (DER).
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    Some(match channel_binding_hash(signature_algorithm(cert)?)? {
        Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The hash RFC 5929 says to use for a certificate signed with the
/// algorithm whose OID (DER content bytes) is `oid`.
fn channel_binding_hash(oid: &[u8]) -> Option<Hash> {
    // 1.2.840.113549.1.1.x: PKCS #1 RSA.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    // 1.2.840.10045.4.x: ECDSA.
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if let Some(&[last]) = oid.strip_prefix(RSA) {
        return match last {
            // md5, sha1, sha256 WithRSAEncryption
            0x04 | 0x05 | 0x0b => Some(Hash::Sha256),
            0x0c => Some(Hash::Sha384),
            0x0d => Some(Hash::Sha512),
            _ => None,
        };
    }
    match oid.strip_prefix(ECDSA)? {
        // ecdsa-with-SHA1, ecdsa-with-SHA256
        [0x01] | [0x03, 0x02] => Some(Hash::Sha256),
        [0x03, 0x03] => Some(Hash::Sha384),
        [0x03, 0x04] => Some(Hash::Sha512),
        _ => None,
    }
}

/// The OID of `cert`'s `signatureAlgorithm`: `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, … }, … }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (certificate, _) = der_element(cert, SEQUENCE)?;
    let (_tbs, rest) = der_element(certificate, SEQUENCE)?;
    let (algorithm, _) = der_element(rest, SEQUENCE)?;
    let (oid, _) = der_element(algorithm, OID)?;
    Some(oid)
}

/// The content of the DER element at the start of `input`, which must have
/// tag `tag`, and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, input) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut input) = input.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        let count = usize::from(len & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if input.len() < len {
        return None;
    }
    Some(input.split_at(len))
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_and_long() {
        assert_eq!(
            der_element(&[0x30, 0x01, 0xaa, 0xbb], 0x30),
            Some((&[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(der_element(&long, 0x30).map(|(c, _)| c.len()), Some(256));
        assert_eq!(der_element(&[0x30, 0x05, 0x00], 0x30), None);
        assert_eq!(der_element(&[0x31, 0x00], 0x30), None);
    }

    #[test]
    fn signature_algorithms_map_to_rfc_5929_hashes() {
        // A certificate's outline: tbs, then AlgorithmIdentifier.
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x02, 0x05, 0x00]; // a stand-in tbs
            body.extend([0x30, alg.len() as u8]);
            body.extend(alg);
            body.extend([0x03, 0x01, 0x00]);
            let mut der = vec![0x30, body.len() as u8];
            der.extend(body);
            der
        };
        let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let ecdsa_sha384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let ed25519 = [0x2b, 0x65, 0x70];
        let of = |oid: &[u8]| channel_binding_hash(signature_algorithm(&cert(oid))?);
        assert_eq!(of(&sha256_rsa), Some(Hash::Sha256));
        assert_eq!(of(&ecdsa_sha384), Some(Hash::Sha384));
        assert_eq!(of(&ed25519), None);
        assert_eq!(
            end_point_hash(&cert(&sha256_rsa)).map(|h| h.len()),
            Some(32)
        );
        assert_eq!(end_point_hash(b"not der"), None);
    }

    #[test]
    fn missing_root_files_are_invalid_naming_sslrootcert() {
        let ssl = Ssl {
            mode: SslMode::VerifyFull,
            root_cert: Some(RootCert::File("/nonexistent/waymark-ca.pem".into())),
        };
        match MakeRustls::new(&ssl) {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "sslrootcert");
                assert!(message.contains("/nonexistent/waymark-ca.pem"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let dir = std::env::temp_dir().join(format!("waymark-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let ssl = Ssl {
            mode: SslMode::VerifyCa,
            root_cert: Some(RootCert::File(empty)),
        };
        match MakeRustls::new(&ssl) {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "sslrootcert");
                assert!(message.contains("no certificate"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn modes_without_a_check_build_without_roots() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require] {
            let ssl = Ssl {
                mode,
                root_cert: None,
            };
            assert!(MakeRustls::new(&ssl).is_ok(), "{mode}");
        }
    }
}
