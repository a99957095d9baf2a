//! TLS for the connections ragway makes to its own services (Postgres, Redis): one
//! process-wide rustls crypto provider, and CA files read and checked before use.

use std::path::Path;
use std::sync::Once;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Makes aws-lc-rs the process's default rustls provider, once. Both aws-lc-rs and
/// ring are compiled in (different dependencies ask for each), and a library that
/// builds a rustls config without naming a provider — the Redis client does — then
/// panics rather than pick one. Call it before the first connection is made.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means an embedding application installed its own first: it serves.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// The PEM text of a file of trusted CA certificates, checked to hold at least one
/// certificate that parses as a trust anchor (so a wrong path or a key file is
/// reported where it is configured, not as a failed handshake later).
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut anchors = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
        anchors
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    if anchors.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("ragway-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = read_ca_file(&dir.join("absent.pem")).unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let not_a_cert = read_ca_file(&key).unwrap_err();
        assert!(
            not_a_cert.contains("holds no PEM certificate"),
            "{not_a_cert}"
        );
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = read_ca_file(&garbage).unwrap_err();
        assert!(bad.contains("not a usable CA certificate"), "{bad}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
