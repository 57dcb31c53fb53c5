//! A test PKI: a CA, a server certificate for 127.0.0.1 and `localhost`, a client
//! certificate, written as PEM files to a temporary directory.

use std::path::PathBuf;

use mqttproto::server::ServerTlsOptions;
use mqttproto::transport::TlsOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A temporary directory with a test CA, a server certificate for 127.0.0.1, and a client
/// certificate.
pub struct Pki {
    pub dir: PathBuf,
    pub client_der: Vec<u8>,
}

impl Pki {
    pub fn generate(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("mqttproto-bsec-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "client-1");
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();
        for (file, text) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client_cert.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        Pki {
            dir,
            client_der: client_cert.der().to_vec(),
        }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    pub fn server(&self) -> ServerTlsOptions {
        ServerTlsOptions::new(self.path("server.pem"), self.path("server.key"))
    }

    pub fn client(&self, with_cert: bool) -> TlsOptions {
        TlsOptions {
            system_roots: false,
            ca_file: Some(self.path("ca.pem")),
            client_cert_file: with_cert.then(|| self.path("client.pem")),
            client_key_file: with_cert.then(|| self.path("client.key")),
            server_name: None,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
