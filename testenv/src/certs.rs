//! Key material for the control plane: a CA, the API server's serving
//! certificate and the service-account signing key.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    service_account_key_pem: String,
    service_account_public_pem: String,
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
        Ok(Pki {
            ca_pem: ca.pem(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            service_account_key_pem: service_account.serialize_pem(),
            service_account_public_pem: service_account.public_key_pem(),
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
        Ok(files)
    }
}

/// 32 random bytes, hex-encoded: the admin's bearer token.
pub(crate) fn random_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}
