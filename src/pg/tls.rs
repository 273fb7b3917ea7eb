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

use std::path::PathBuf;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::SslMode as Negotiation;
use postgres_openssl::MakeTlsConnector;

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
    pub fn connector(&self, attempt: Attempt) -> std::result::Result<MakeTlsConnector, String> {
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
            builder
                .set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| format!("pg_sslkey {}: {e}", key.display()))?;
            builder.check_private_key().map_err(|e| {
                format!(
                    "pg_sslkey {} is not the key of pg_sslcert {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
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
        Ok(connector)
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
        } else if error_text.contains("certificate verify failed") {
            Some(format!(
                "the server's certificate is not signed by a CA in pg_sslrootcert {} (pg_sslmode = {})",
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
        assert_eq!(full.explain("password authentication failed"), None);
    }
}
