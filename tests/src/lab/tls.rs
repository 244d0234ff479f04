//! The lab's TLS: a CA made at `lab up`, a leaf per pod signed by it (written as PEM into the
//! lab's state directory, so that bring-your-own proxies can load them too), the rustls
//! configs of the built-in proxy, and the proxy's handshake counters.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, HandshakeKind, RootCertStore, ServerConfig, SupportedProtocolVersion,
    client::Resumption,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
};
use serde::{Deserialize, Serialize};

use super::{config::TlsVersion, state::NAMESPACE};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making the lab's certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("verifying client certificates: {0}")]
    Verifier(String),
}

/// The directory under the lab's state directory that holds the CA and the leaves.
pub const TLS_DIR: &str = "tls";

/// The name a pod's certificate carries and its peers verify: the Service's DNS name.
pub fn mesh_name(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

/// Where the lab's PEM files are. Per pod (`service` is the pod's service name, `ingress`
/// included): `<service>.crt` (the leaf, then the CA), `<service>.key`, and `<service>.pem`
/// (both in one file, as haproxy's `crt` takes them); the CA alone in `ca.crt`. The CA's key
/// is never written: nothing after `lab up` signs anything.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(TLS_DIR),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.crt"))
    }

    pub fn key(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.key"))
    }

    pub fn pem(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.pem"))
    }

    /// Where the built-in proxies publish their handshake counts.
    pub fn stats_dir(&self) -> PathBuf {
        self.dir.join("stats")
    }

    /// Makes the CA and a leaf per service. Each leaf names its Service's DNS name (the
    /// ingress's also the node's IP, which HTTPS clients reach it by), serves as both server
    /// and client certificate as Istio's workload certificates do, and its key is readable by
    /// `key_owner` (the sidecars' uid) and root only.
    pub fn generate(
        &self,
        services: &[&str],
        extra_ip: IpAddr,
        key_owner: u32,
    ) -> Result<(), TlsError> {
        let stats = self.stats_dir();
        fs::create_dir_all(&stats).map_err(io(format!("creating {}", stats.display())))?;
        // The sidecars run as `key_owner` and write their counts here.
        std::os::unix::fs::chown(&stats, Some(key_owner), None)
            .map_err(io(format!("chown {}", stats.display())))?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "hopprobe lab CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        write(&self.ca(), ca_cert.pem().as_bytes(), 0o644)?;
        for service in services {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![mesh_name(service)])?;
            params.distinguished_name.push(DnType::CommonName, *service);
            if *service == super::names::INGRESS_SERVICE {
                params.subject_alt_names.push(SanType::IpAddress(extra_ip));
            }
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
            let chain = format!("{}{}", cert.pem(), ca_cert.pem());
            let key_pem = key.serialize_pem();
            write(&self.cert(service), chain.as_bytes(), 0o644)?;
            for (path, text) in [
                (self.key(service), key_pem.clone()),
                (self.pem(service), format!("{chain}{key_pem}")),
            ] {
                write(&path, text.as_bytes(), 0o600)?;
                std::os::unix::fs::chown(&path, Some(key_owner), None)
                    .map_err(io(format!("chown {}", path.display())))?;
            }
        }
        Ok(())
    }

    fn chain(&self, service: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let path = self.cert(service);
        CertificateDer::pem_file_iter(&path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_err(&path, e))
    }

    fn private_key(&self, service: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
        let path = self.key(service);
        PrivateKeyDer::from_pem_file(&path).map_err(|e| pem_err(&path, e))
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let path = self.ca();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| pem_err(&path, e))? {
            roots.add(cert.map_err(|e| pem_err(&path, e))?)?;
        }
        Ok(roots)
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> TlsError {
    move |source| TlsError::Io { context, source }
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    fs::write(path, bytes).map_err(io(format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

/// How every TLS endpoint of the lab is set: one version, resumption on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPolicy {
    pub version: TlsVersion,
    pub resumption: bool,
}

impl TlsPolicy {
    fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static V1_3: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static V1_2: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        match self.version {
            TlsVersion::V1_3 => &V1_3,
            TlsVersion::V1_2 => &V1_2,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server presenting `identity`'s certificate; `mutual`: the client must present one signed
/// by the lab's CA. Resumption on: stateless tickets (what Envoy and haproxy issue by default)
/// and the session cache rustls keeps for TLS 1.2 session IDs; off: neither, and no TLS 1.3
/// tickets sent.
pub fn server_config(
    files: &TlsFiles,
    identity: &str,
    policy: TlsPolicy,
    mutual: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(policy.versions())?;
    let builder = if mutual {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(files.roots()?), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config =
        builder.with_single_cert(files.chain(identity)?, files.private_key(identity)?)?;
    if policy.resumption {
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    } else {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

/// A client trusting the lab's CA only, presenting `identity`'s certificate when given (mTLS).
/// Share one per process: its session cache is what makes resumption happen.
pub fn client_config(
    files: &TlsFiles,
    identity: Option<&str>,
    policy: TlsPolicy,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(policy.versions())?
        .with_root_certificates(files.roots()?);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(files.chain(id)?, files.private_key(id)?)?,
        None => builder.with_no_client_auth(),
    };
    if !policy.resumption {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The name a client verifies: a Service's DNS name, or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError::Rustls(rustls::Error::General(format!("{name:?}: {e}"))))
}

/// Handshakes a proxy completed, by side and kind, and the ones that failed (a plaintext
/// client on a TLS port, a certificate the CA did not sign).
#[derive(Debug, Default)]
pub struct HandshakeStats {
    server_full: AtomicU64,
    server_resumed: AtomicU64,
    client_full: AtomicU64,
    client_resumed: AtomicU64,
    failed: AtomicU64,
}

/// [`HandshakeStats`] as the proxy writes them to its `--tls-stats` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeCounts {
    pub server_full: u64,
    pub server_resumed: u64,
    pub client_full: u64,
    pub client_resumed: u64,
    pub failed: u64,
}

impl HandshakeStats {
    pub fn done(&self, server: bool, kind: Option<HandshakeKind>) {
        let resumed = kind == Some(HandshakeKind::Resumed);
        let counter = match (server, resumed) {
            (true, false) => &self.server_full,
            (true, true) => &self.server_resumed,
            (false, false) => &self.client_full,
            (false, true) => &self.client_resumed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> HandshakeCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandshakeCounts {
            server_full: get(&self.server_full),
            server_resumed: get(&self.server_resumed),
            client_full: get(&self.client_full),
            client_resumed: get(&self.client_resumed),
            failed: get(&self.failed),
        }
    }

    /// Rewrites `path` whenever the counts change, from a thread of its own, so that no
    /// connection's path ever waits on the file (the lab is SIGKILLed, so there is no
    /// last write at exit: a reader sees counts at most 50 ms old).
    pub fn publish(self: &Arc<Self>, path: PathBuf) {
        let stats = self.clone();
        std::thread::spawn(move || {
            let mut last = None;
            loop {
                let now = stats.counts();
                if last != Some(now)
                    && let Ok(text) = serde_json::to_string(&now)
                {
                    let tmp = path.with_extension("tmp");
                    if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, &path).is_ok() {
                        last = Some(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
}

/// Reads a proxy's `--tls-stats` file.
pub fn read_counts(path: &Path) -> Option<HandshakeCounts> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// Placeholders every bring-your-own template gets, TLS or not: the files' paths for `identity`
/// (`{tls_ca}`, `{tls_cert}`, `{tls_key}`, `{tls_pem}`), the policy (`{tls_version}` 1.3 or 1.2,
/// `{tls_resumption}` on or off) and `{global_ssl}`, haproxy's `global` setting that turns its
/// session cache off when resumption is. `{bind_ssl}` and `{server_ssl}` come per listener and
/// upstream from [`haproxy_bind`] and [`haproxy_server`].
pub fn template_vars(
    files: &TlsFiles,
    identity: &str,
    policy: TlsPolicy,
) -> Vec<(&'static str, String)> {
    let path = |p: PathBuf| p.display().to_string();
    vec![
        ("tls_ca", path(files.ca())),
        ("tls_cert", path(files.cert(identity))),
        ("tls_key", path(files.key(identity))),
        ("tls_pem", path(files.pem(identity))),
        ("tls_version", policy.version.to_string()),
        (
            "tls_resumption",
            if policy.resumption { "on" } else { "off" }.into(),
        ),
        (
            "global_ssl",
            if policy.resumption {
                String::new()
            } else {
                "tune.ssl.cachesize 0".into()
            },
        ),
    ]
}

fn haproxy_versions(policy: TlsPolicy) -> String {
    let v = match policy.version {
        TlsVersion::V1_3 => "TLSv1.3",
        TlsVersion::V1_2 => "TLSv1.2",
    };
    format!("ssl-min-ver {v} ssl-max-ver {v}")
}

/// haproxy `bind` options for a TLS listener presenting `identity`'s certificate; `mutual`:
/// clients must present one of the lab's CA. Empty for `None` (a plaintext listener).
pub fn haproxy_bind(
    files: &TlsFiles,
    identity: &str,
    policy: TlsPolicy,
    tls: Option<bool>,
) -> String {
    let Some(mutual) = tls else {
        return String::new();
    };
    let mut s = format!(
        "ssl crt {} {}",
        files.pem(identity).display(),
        haproxy_versions(policy)
    );
    if mutual {
        s.push_str(&format!(
            " ca-file {} verify required",
            files.ca().display()
        ));
    }
    if !policy.resumption {
        s.push_str(" no-tls-tickets");
    }
    s
}

/// haproxy `server` options for mutual TLS to the upstream named `name`, presenting
/// `identity`'s certificate. Empty for `None` (plaintext upstream).
pub fn haproxy_server(
    files: &TlsFiles,
    identity: &str,
    policy: TlsPolicy,
    name: Option<&str>,
) -> String {
    let Some(name) = name else {
        return String::new();
    };
    let mut s = format!(
        "ssl crt {} ca-file {} verify required verifyhost {name} sni str({name}) {}",
        files.pem(identity).display(),
        files.ca().display(),
        haproxy_versions(policy)
    );
    if !policy.resumption {
        s.push_str(" no-ssl-reuse");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(version: TlsVersion, resumption: bool) -> TlsPolicy {
        TlsPolicy {
            version,
            resumption,
        }
    }

    #[test]
    fn haproxy_options_follow_the_policy() {
        let files = TlsFiles::new(Path::new("/run/hopprobe-lab/hpl"));
        let on = policy(TlsVersion::V1_3, true);
        assert_eq!(haproxy_bind(&files, "details", on, None), "");
        assert_eq!(
            haproxy_bind(&files, "ingress", on, Some(false)),
            "ssl crt /run/hopprobe-lab/hpl/tls/ingress.pem ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3"
        );
        let off = policy(TlsVersion::V1_2, false);
        let bind = haproxy_bind(&files, "details", off, Some(true));
        assert!(bind.contains("ca-file /run/hopprobe-lab/hpl/tls/ca.crt verify required"));
        assert!(
            bind.contains("TLSv1.2") && bind.ends_with("no-tls-tickets"),
            "{bind}"
        );
        let server = haproxy_server(&files, "reviews", off, Some(&mesh_name("ratings")));
        assert!(
            server.contains("verifyhost ratings.bookinfo.svc.cluster.local")
                && server.ends_with("no-ssl-reuse"),
            "{server}"
        );
        let vars = template_vars(&files, "reviews", off);
        assert!(vars.contains(&("global_ssl", "tune.ssl.cachesize 0".into())));
    }

    /// Certificates from `generate` make a mutual handshake with each other, resume with
    /// resumption on and not with it off; a client without a certificate is refused.
    #[test]
    fn generated_certificates_handshake_and_resume_as_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::new(dir.path());
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        files
            .generate(&["details", "reviews"], [10, 77, 0, 1].into(), me)
            .expect("certs");
        for version in [TlsVersion::V1_3, TlsVersion::V1_2] {
            for resumption in [true, false] {
                let p = policy(version, resumption);
                let server = server_config(&files, "details", p, true).expect("server");
                let client = client_config(&files, Some("reviews"), p).expect("client");
                let kinds: Vec<_> = (0..3)
                    .map(|_| handshake(&server, &client).expect("handshake"))
                    .collect();
                let resumed = kinds
                    .iter()
                    .filter(|k| **k == HandshakeKind::Resumed)
                    .count();
                assert_eq!(resumed, if resumption { 2 } else { 0 }, "{p:?}: {kinds:?}");
            }
        }
        let server =
            server_config(&files, "details", policy(TlsVersion::V1_3, true), true).expect("server");
        let anonymous =
            client_config(&files, None, policy(TlsVersion::V1_3, true)).expect("client");
        assert!(handshake(&server, &anonymous).is_err());
    }

    /// A handshake in memory, then one byte each way so that TLS 1.3 tickets arrive.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
    ) -> Result<HandshakeKind, rustls::Error> {
        use std::io::{Read, Write};
        let mut s = rustls::ServerConnection::new(server.clone())?;
        let mut c = rustls::ClientConnection::new(
            client.clone(),
            server_name(&mesh_name("details")).expect("name"),
        )?;
        c.writer().write_all(b"x").expect("buffered");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("to memory");
            s.read_tls(&mut &buf[..]).expect("from memory");
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("to memory");
            c.read_tls(&mut &buf[..]).expect("from memory");
            c.process_new_packets()?;
        }
        let mut got = [0u8; 1];
        s.reader().read_exact(&mut got).expect("the byte arrived");
        Ok(c.handshake_kind().expect("handshake done"))
    }
}
