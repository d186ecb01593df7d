//! Key material for the control plane: a CA, the API server's serving
//! certificate, the service-account signing key, and the real node's client
//! certificates.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    service_account_key_pem: String,
    service_account_public_pem: String,
    /// Client certificates (certificate, key) by file stem, for the real node's kubelet and kube-proxy.
    clients: Vec<(&'static str, String, String)>,
}

pub(crate) struct Files {
    pub(crate) ca_cert: PathBuf,
    pub(crate) service_account_key: PathBuf,
    pub(crate) service_account_public: PathBuf,
}

impl Pki {
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "redeploy-testenv-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default.svc".to_string(),
            "10.96.0.1".to_string(),
        ])?;
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        // ECDSA P-256: the API server signs service-account tokens with ES256.
        let service_account = KeyPair::generate()?;

        // Identities the API server maps from a client certificate (CN = user,
        // O = group). Made up front, at the cost of two key pairs, so the CA key
        // never has to outlive start-up.
        let mut clients = Vec::new();
        for (stem, user, group) in [
            ("kubelet", format!("system:node:{}", crate::REAL_NODE_NAME), Some("system:nodes")),
            ("kube-proxy", "system:kube-proxy".to_string(), None),
        ] {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, user);
            if let Some(group) = group {
                params.distinguished_name.push(DnType::OrganizationName, group);
            }
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            clients.push((stem, cert.pem(), key.serialize_pem()));
        }
        Ok(Pki {
            ca_pem: ca.pem(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            service_account_key_pem: service_account.serialize_pem(),
            service_account_public_pem: service_account.public_key_pem(),
            clients,
        })
    }

    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<Files> {
        let files = Files {
            ca_cert: dir.join("ca.crt"),
            service_account_key: dir.join("service-account.key"),
            service_account_public: dir.join("service-account.pub"),
        };
        fs::write(&files.ca_cert, &self.ca_pem)?;
        fs::write(dir.join("apiserver.crt"), &self.serving_cert_pem)?;
        fs::write(dir.join("apiserver.key"), &self.serving_key_pem)?;
        fs::write(&files.service_account_key, &self.service_account_key_pem)?;
        fs::write(&files.service_account_public, &self.service_account_public_pem)?;
        for (stem, cert, key) in &self.clients {
            fs::write(dir.join(format!("{stem}.crt")), cert)?;
            fs::write(dir.join(format!("{stem}.key")), key)?;
        }
        Ok(files)
    }
}

/// 32 random bytes, hex-encoded: the admin's bearer token.
pub(crate) fn random_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}
