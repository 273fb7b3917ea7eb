//! TLS to PostgreSQL with libpq's `sslmode` semantics, for pgzfs's own connections (through
//! postgres-openssl) and for the standby's `primary_conninfo` (libpq itself).
//!
//! Without TLS, anyone on the path between two nodes can answer "not writable" to
//! promote's probe, forge LSNs, or read the replication stream. The modes, as libpq has
//! them:
//!
//! | mode          | encrypted                          | server checked                     |
//! |---------------|------------------------------------|------------------------------------|
//! | `disable`     | never                              | no                                 |
//! | `allow`       | only if the server insists         | chain, if `pg_sslrootcert` is set  |
//! | `prefer`      | if the server offers it (default)  | chain, if `pg_sslrootcert` is set  |
//! | `require`     | always                             | chain, if `pg_sslrootcert` is set  |
//! | `verify-ca`   | always                             | chain against `pg_sslrootcert`     |
//! | `verify-full` | always                             | chain, and the host name           |
//!
//! One difference from libpq: when `prefer` finds a server that offers TLS and the
//! handshake fails (a certificate that does not verify), libpq tries again without TLS;
//! pgzfs reports the failure instead.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::SslMode as Negotiation;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres_openssl::MakeTlsConnector;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: [&'static str; 6] = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];

    pub fn parse(value: &str) -> std::result::Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "allow" => Ok(SslMode::Allow),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!(
                "{other:?} is not an sslmode; use one of {}",
                SslMode::NAMES.join(", ")
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// verify-ca and verify-full check the server against a CA, and so need one.
    pub fn needs_root_cert(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// How to reach one node's PostgreSQL over TLS: `pg_sslmode`, `pg_sslrootcert`,
/// `pg_sslcert` and `pg_sslkey` (checked at config load: verify modes have a root
/// certificate, a certificate has its key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// The CA certificate(s) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// A client certificate and its key, for `cert` authentication in pg_hba.conf.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What one connection attempt asks of the server and checks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub negotiation: Negotiation,
    pub verify_chain: bool,
    pub verify_host: bool,
}

impl PgTls {
    /// The connection attempts to make, in order; the second (only for `allow`) is made
    /// when the server refuses the first.
    pub fn attempts(&self) -> Vec<Attempt> {
        let checked = self.root_cert.is_some() || self.mode.needs_root_cert();
        let attempt = |negotiation| Attempt {
            negotiation,
            verify_chain: checked,
            verify_host: self.mode == SslMode::VerifyFull,
        };
        match self.mode {
            SslMode::Disable => vec![Attempt {
                negotiation: Negotiation::Disable,
                verify_chain: false,
                verify_host: false,
            }],
            SslMode::Allow => vec![attempt(Negotiation::Disable), attempt(Negotiation::Require)],
            SslMode::Prefer => vec![attempt(Negotiation::Prefer)],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                vec![attempt(Negotiation::Require)]
            }
        }
    }

    /// The connector for one attempt: the CA to check against, the client certificate,
    /// and whether the chain and the host name are checked. Errors name the config key.
    pub fn connector(&self, attempt: Attempt) -> std::result::Result<Connector, String> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        if let Some(root) = &self.root_cert {
            builder
                .set_ca_file(root)
                .map_err(|e| format!("pg_sslrootcert {}: {e}", root.display()))?;
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            builder
                .set_certificate_chain_file(cert)
                .map_err(|e| format!("pg_sslcert {}: {e}", cert.display()))?;
            // OpenSSL checks here that the key belongs to the certificate.
            let unusable = |e: ErrorStack| {
                format!(
                    "pg_sslkey {} (the key of pg_sslcert {}): {e}",
                    key.display(),
                    cert.display()
                )
            };
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(unusable)?;
            builder.check_private_key().map_err(unusable)?;
        }
        builder.set_verify(if attempt.verify_chain {
            SslVerifyMode::PEER
        } else {
            SslVerifyMode::NONE
        });
        let mut connector = MakeTlsConnector::new(builder.build());
        let verify_host = attempt.verify_host;
        // The connector checks the host name (or IP address) it connects to unless told
        // not to; only verify-full wants that.
        connector.set_callback(move |config, _host| {
            config.set_verify_hostname(verify_host);
            Ok(())
        });
        Ok(Connector(connector))
    }

    /// The libpq keywords and values for a connection string (`primary_conninfo`), so the
    /// standby's walreceiver connects the way pgzfs does.
    pub fn conninfo(&self) -> Vec<(&'static str, String)> {
        let mut parts = vec![("sslmode", self.mode.as_str().to_string())];
        if self.mode != SslMode::Disable {
            let files = [
                ("sslrootcert", &self.root_cert),
                ("sslcert", &self.cert),
                ("sslkey", &self.key),
            ];
            for (keyword, path) in files {
                if let Some(path) = path {
                    parts.push((keyword, path.display().to_string()));
                }
            }
        }
        parts
    }

    /// A few words on a failed connection that point at the setting to look at.
    pub fn explain(&self, error_text: &str) -> Option<String> {
        let root = || {
            self.root_cert
                .as_ref()
                .map_or("(none)".to_string(), |p| p.display().to_string())
        };
        if error_text.contains("hostname mismatch") || error_text.contains("IP address mismatch") {
            Some(format!(
                "the server's certificate is not for this host name (pg_sslmode = {})",
                self.mode.as_str()
            ))
        } else if [
            "unable to get local issuer certificate",
            "unable to get issuer certificate",
            "self-signed certificate",
            "self signed certificate",
        ]
        .iter()
        .any(|unknown_issuer| error_text.contains(unknown_issuer))
        {
            Some(format!(
                "the server's certificate is not signed by a CA in pg_sslrootcert {} (pg_sslmode = {})",
                root(),
                self.mode.as_str()
            ))
        } else if error_text.contains("certificate verify failed") {
            // Expired, not yet valid, revoked...: the detail that follows says which.
            Some(format!(
                "the server's certificate does not pass the check against pg_sslrootcert {} (pg_sslmode = {})",
                root(),
                self.mode.as_str()
            ))
        } else if error_text.contains("server does not support TLS") {
            Some(format!(
                "the server does not offer TLS, and pg_sslmode = {} requires it",
                self.mode.as_str()
            ))
        } else {
            None
        }
    }
}

/// OpenSSL keeps a queue of errors per thread, and a TLS read or write that merely has to
/// wait is reported as failed when an earlier, unrelated call left an error there. Other
/// users of OpenSSL on the same thread do leave some: libssh2 loading an SSH key, or
/// loading a CA file. So pgzfs's TLS sessions to PostgreSQL empty the queue before every
/// step of the handshake and every read, write, flush and shutdown. This wraps
/// postgres-openssl's connector to do that.
#[derive(Clone)]
pub struct Connector(MakeTlsConnector);

/// Forget whatever errors earlier calls left in this thread's OpenSSL error queue.
fn clear_openssl_errors() {
    drop(ErrorStack::get());
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + std::fmt::Debug + Send + Sync + 'static,
{
    type Stream = Clearing<postgres_openssl::TlsStream<S>>;
    type TlsConnect = Clearing<postgres_openssl::TlsConnector>;
    type Error = ErrorStack;

    fn make_tls_connect(
        &mut self,
        host: &str,
    ) -> std::result::Result<Self::TlsConnect, ErrorStack> {
        clear_openssl_errors();
        <MakeTlsConnector as MakeTlsConnect<S>>::make_tls_connect(&mut self.0, host).map(Clearing)
    }
}

/// A TLS connector, handshake or stream that empties the OpenSSL error queue before each
/// step (see [`Connector`]).
pub struct Clearing<T>(T);

impl<S> TlsConnect<S> for Clearing<postgres_openssl::TlsConnector>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Clearing<postgres_openssl::TlsStream<S>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Stream, Self::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = Clearing(self.0.connect(stream));
        Box::pin(async move { handshake.await.map(Clearing) })
    }
}

impl<F: Future + Unpin> Future for Clearing<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        clear_openssl_errors();
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Clearing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        clear_openssl_errors();
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Clearing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        clear_openssl_errors();
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        clear_openssl_errors();
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        clear_openssl_errors();
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: TlsStream + Unpin> TlsStream for Clearing<T> {
    fn channel_binding(&self) -> ChannelBinding {
        self.0.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: &str, root: Option<&str>) -> PgTls {
        PgTls {
            mode: SslMode::parse(mode).unwrap(),
            root_cert: root.map(PathBuf::from),
            cert: None,
            key: None,
        }
    }

    fn plan(mode: &str, root: Option<&str>) -> Vec<(Negotiation, bool, bool)> {
        tls(mode, root)
            .attempts()
            .into_iter()
            .map(|a| (a.negotiation, a.verify_chain, a.verify_host))
            .collect()
    }

    #[test]
    fn every_libpq_mode_name_round_trips_and_nothing_else_is_a_mode() {
        for name in SslMode::NAMES {
            assert_eq!(SslMode::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(SslMode::default(), SslMode::Prefer, "libpq's default");
        for bad in ["", "Require", "verify_full", "on", "true", "verify-full "] {
            let why = SslMode::parse(bad).unwrap_err();
            assert!(why.contains("verify-full"), "{why}");
        }
    }

    #[test]
    fn each_mode_asks_for_tls_and_checks_the_server_as_libpq_does() {
        use Negotiation::{Disable, Prefer, Require};
        let ca = Some("/etc/pgzfs/ca.crt");
        assert_eq!(plan("disable", ca), [(Disable, false, false)]);
        // allow: plaintext first, TLS only when the server refuses plaintext.
        assert_eq!(
            plan("allow", None),
            [(Disable, false, false), (Require, false, false)]
        );
        assert_eq!(plan("prefer", None), [(Prefer, false, false)]);
        // require encrypts without checking whom it talks to...
        assert_eq!(plan("require", None), [(Require, false, false)]);
        // ...unless it has a root certificate: then it checks the chain, as libpq does.
        assert_eq!(plan("require", ca), [(Require, true, false)]);
        assert_eq!(plan("prefer", ca), [(Prefer, true, false)]);
        assert_eq!(plan("verify-ca", ca), [(Require, true, false)]);
        assert_eq!(plan("verify-full", ca), [(Require, true, true)]);
    }

    #[test]
    fn the_conninfo_carries_the_mode_and_the_files_unless_tls_is_off() {
        let mut full = tls("verify-full", Some("/etc/pgzfs/ca.crt"));
        full.cert = Some("/etc/pgzfs/db2.crt".into());
        full.key = Some("/etc/pgzfs/db2.key".into());
        assert_eq!(
            full.conninfo(),
            [
                ("sslmode", "verify-full".to_string()),
                ("sslrootcert", "/etc/pgzfs/ca.crt".to_string()),
                ("sslcert", "/etc/pgzfs/db2.crt".to_string()),
                ("sslkey", "/etc/pgzfs/db2.key".to_string()),
            ]
        );
        assert_eq!(
            tls("disable", Some("/etc/pgzfs/ca.crt")).conninfo(),
            [("sslmode", "disable".to_string())]
        );
        assert_eq!(
            PgTls::default().conninfo(),
            [("sslmode", "prefer".to_string())]
        );
    }

    #[test]
    fn a_root_cert_that_is_not_there_is_named_by_its_key() {
        let broken = tls("verify-full", Some("/nonexistent/pgzfs-test/ca.crt"));
        let attempt = broken.attempts()[0];
        let why = broken.connector(attempt).err().expect("no CA file");
        assert!(
            why.starts_with("pg_sslrootcert /nonexistent/pgzfs-test/ca.crt"),
            "{why}"
        );
    }

    #[test]
    fn failures_are_explained_by_the_setting_behind_them() {
        let full = tls("verify-full", Some("/etc/pgzfs/ca.crt"));
        let why = full
            .explain("error performing TLS handshake: error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed: unable to get local issuer certificate")
            .unwrap();
        assert!(
            why.contains("not signed by a CA in pg_sslrootcert /etc/pgzfs/ca.crt"),
            "{why}"
        );
        let why = full
            .explain("certificate verify failed: hostname mismatch")
            .unwrap();
        assert!(why.contains("not for this host name"), "{why}");
        // Signed by the right CA, but expired: not blamed on the CA.
        let why = full
            .explain("certificate verify failed: certificate has expired")
            .unwrap();
        assert!(
            why.contains("does not pass the check against pg_sslrootcert"),
            "{why}"
        );
        assert_eq!(full.explain("password authentication failed"), None);
    }
}
