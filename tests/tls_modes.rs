//! Each `pg_sslmode` against a real PostgreSQL 15 with `ssl = on` that takes only
//! `hostssl` connections, as pgzfs's own connections make them: what gets through, what
//! is refused, and what the refusal says. No ZFS, no lab: one server of its own on a free
//! port under /tmp, torn down at the end. (tests/tls.rs runs the whole re-seed over TLS.)

mod certs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certs::{issue, issue_client, make_ca, text};
use pgzfs::pg::tls::{PgTls, SslMode};
use pgzfs::pg::{Pg, PgTarget};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL of this test's own, as the postgres OS user; stopped and removed on drop.
struct Server {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(dir: &Path, certificate: &(PathBuf, PathBuf)) -> Server {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed in {PG_BIN}: run scripts/install-deps"
        );
        let data = dir.join("data");
        let server = Server {
            dir: dir.to_path_buf(),
            port: free_port(),
        };
        let status = Command::new("chown")
            .args(["postgres:postgres", text(dir)])
            .status()
            .unwrap();
        assert!(status.success());
        let out = as_postgres(
            "initdb",
            &["-D", text(&data), "-U", "postgres", "--auth=trust", "-N"],
        );
        assert!(out.status.success(), "initdb: {out:?}");
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            server.port,
            text(dir),
            text(&certificate.0),
            text(&certificate.1)
        );
        append(&data.join("postgresql.conf"), &conf);
        // TLS or nothing: no line would take a plaintext TCP connection.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let log = dir.join("server.log");
        let out = as_postgres(
            "pg_ctl",
            &[
                "-D",
                text(&data),
                "-l",
                text(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {out:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        server
    }

    /// Serve another certificate from the next connection on.
    fn serve(&self, certificate: &(PathBuf, PathBuf)) {
        self.sql(&format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            text(&certificate.0)
        ));
        self.sql(&format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            text(&certificate.1)
        ));
        self.sql("SELECT pg_reload_conf()");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.sql("SHOW ssl_cert_file") != text(&certificate.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server never reloaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SQL over the unix socket, as postgres.
    fn sql(&self, sql: &str) -> String {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .args(["-X", "-At", "-h", text(&self.dir), "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn target(&self, mode: &str, root_cert: Option<&Path>) -> PgTarget {
        self.target_with(PgTls {
            mode: SslMode::parse(mode).unwrap(),
            root_cert: root_cert.map(Path::to_path_buf),
            cert: None,
            key: None,
        })
    }

    fn target_with(&self, tls: PgTls) -> PgTarget {
        PgTarget {
            node: "db1".into(),
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            database: "postgres".into(),
            passfile: Some(self.dir.join("no-pgpass")),
            connect_timeout: Duration::from_secs(5),
            tls,
        }
    }

    /// Connect like pgzfs; Ok(whether the session is encrypted, as the server sees it).
    fn connect(&self, mode: &str, root_cert: Option<&Path>) -> Result<bool, String> {
        self.connect_with(self.target(mode, root_cert))
    }

    fn connect_with(&self, target: PgTarget) -> Result<bool, String> {
        let pg = Pg::connect(&target).map_err(|e| e.message().to_string())?;
        let ssl = self.sql(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'pgzfs'",
        );
        drop(pg);
        Ok(ssl == "t")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres("pg_ctl", &["-D", text(&data), "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[test]
fn every_sslmode_connects_or_refuses_as_libpq_would() {
    let dir = std::env::temp_dir().join(format!("pgzfs-tls-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_ca(&dir, "lab-ca");
    make_ca(&dir, "other-ca");
    let right = issue(&dir, "lab-ca", "db1", "IP:127.0.0.1,DNS:localhost");
    let stranger = issue(&dir, "other-ca", "impostor", "IP:127.0.0.1,DNS:localhost");
    let elsewhere = issue(&dir, "lab-ca", "db9", "DNS:db9.example.net");
    let server = Server::start(&dir, &right);
    let ca_path = text(&ca).to_string();
    let ca = Some(ca.as_path());

    // The server's certificate is the lab CA's, for 127.0.0.1.
    assert_eq!(server.connect("verify-full", ca), Ok(true));
    assert_eq!(server.connect("verify-ca", ca), Ok(true));
    // A session stays usable while the thread does other things with OpenSSL, as a
    // re-seed holds its backup session while libssh2 loads an SSH key. Such calls can
    // leave errors in the thread's OpenSSL error queue (libssh2 does), and OpenSSL then
    // takes a read that merely has to wait for a failure.
    let mut held = Pg::connect(&server.target("verify-full", ca)).unwrap();
    for _ in 0..3 {
        assert_eq!(server.connect("verify-full", ca), Ok(true));
        let stale = openssl::x509::X509::from_pem(b"not a certificate").unwrap_err();
        stale.put();
        assert_eq!(held.is_in_recovery().map_err(|e| e.to_string()), Ok(false));
    }
    drop(held);
    assert_eq!(server.connect("require", None), Ok(true));
    assert_eq!(server.connect("prefer", None), Ok(true));
    // allow tries plaintext first; the server refuses it, so allow goes on with TLS.
    assert_eq!(server.connect("allow", None), Ok(true));
    let plaintext = server.connect("disable", None).unwrap_err();
    assert!(plaintext.contains("no encryption"), "{plaintext}");

    // Another CA's certificate at the same address: someone else's server.
    server.serve(&stranger);
    for mode in ["verify-full", "verify-ca", "require"] {
        let refused = server.connect(mode, ca).unwrap_err();
        assert!(
            refused.contains(&format!(
                "the server's certificate is not signed by a CA in pg_sslrootcert {} (pg_sslmode = {mode})",
                ca_path
            )),
            "{mode}: {refused}"
        );
    }
    // require without a root certificate encrypts without knowing whom it talks to.
    assert_eq!(server.connect("require", None), Ok(true));

    // The lab CA's certificate, for another host: only the chain checks out.
    server.serve(&elsewhere);
    let refused = server.connect("verify-full", ca).unwrap_err();
    assert!(
        refused.contains("the server's certificate is not for this host name"),
        "{refused}"
    );
    assert_eq!(server.connect("verify-ca", ca), Ok(true));

    // pg_hba.conf asks for a client certificate from the lab CA, for the user's name.
    server.serve(&right);
    std::fs::write(
        dir.join("data/pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
    )
    .unwrap();
    server.sql(&format!("ALTER SYSTEM SET ssl_ca_file = '{ca_path}'"));
    server.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    let refused = server.connect("verify-full", ca).unwrap_err();
    assert!(
        refused.contains("requires a valid client certificate"),
        "{refused}"
    );
    let (cert, key) = issue_client(&dir, "lab-ca", "postgres");
    let with_certificate = |cert: &Path, key: &Path| {
        server.target_with(PgTls {
            mode: SslMode::VerifyFull,
            root_cert: ca.map(Path::to_path_buf),
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
        })
    };
    assert_eq!(server.connect_with(with_certificate(&cert, &key)), Ok(true));
    // A key that is not the certificate's is caught before anything is sent.
    let (_, other_key) = issue_client(&dir, "lab-ca", "intruder");
    let refused = server
        .connect_with(with_certificate(&cert, &other_key))
        .unwrap_err();
    assert!(
        refused.contains("pg_sslkey ") && refused.contains("key values mismatch"),
        "{refused}"
    );
}
