//! A test PKI generated with rcgen at test time: a CA, a server certificate for 127.0.0.1 and
//! localhost, and a client certificate.
#![allow(dead_code)]

use std::path::PathBuf;

use mqttproto::transport::TlsOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.
    pub fn generate(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("mqttproto-pki-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "mqttproto test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
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
        Pki { dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    pub fn mosquitto_tls(&self, require_cert: bool) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
            self.path("ca.pem").display(),
            self.path("server.pem").display(),
            self.path("server.key").display(),
            require_cert
        )
    }

    pub fn tls(&self, client_cert: bool) -> TlsOptions {
        TlsOptions {
            system_roots: false,
            ca_file: Some(self.path("ca.pem")),
            client_cert_file: client_cert.then(|| self.path("client.pem")),
            client_key_file: client_cert.then(|| self.path("client.key")),
            server_name: None,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
