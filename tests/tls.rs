//! TLS to PostgreSQL on real zfs-fuse, sshd and PostgreSQL 15 with `ssl = on` and a lab
//! CA: with `pg_sslmode = verify-full` pgzfs talks to a server whose certificate the CA
//! signed for the host it dials, the re-seeded standby streams over TLS too, and a server
//! with a certificate from another CA, or for another host, is refused with a message
//! that says so. pg_hba.conf takes only `hostssl` connections, so nothing here can
//! quietly fall back to plaintext.

mod certs;
mod common;

use std::path::PathBuf;

use certs::{issue, make_ca, text};
use common::{file_text, stderr_of, Lab};

/// Make db1 serve this certificate, from the next connection on.
fn serve_certificate(lab: &Lab, (crt, key): &(PathBuf, PathBuf)) {
    lab.sql(
        "db1",
        &format!("ALTER SYSTEM SET ssl_cert_file = '{}'", text(crt)),
    );
    lab.sql(
        "db1",
        &format!("ALTER SYSTEM SET ssl_key_file = '{}'", text(key)),
    );
    lab.sql("db1", "ALTER SYSTEM SET ssl = on");
    lab.sql("db1", "SELECT pg_reload_conf()");
    // The reload is asynchronous: wait until the postmaster has taken it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lab.sql("db1", "SHOW ssl_cert_file") != text(crt) || lab.sql("db1", "SHOW ssl") != "on" {
        assert!(std::time::Instant::now() < deadline, "db1 never reloaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `pgzfs check` on db1 (which connects to its PostgreSQL): exit code and stderr.
fn check(lab: &Lab) -> (Option<i32>, String) {
    let out = lab.pgzfs("db1", &["check"]);
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(" over TLS (pg_sslmode "), "{stdout}");
    }
    (out.status.code(), stderr_of(&out))
}

#[test]
fn verify_full_reaches_the_right_server_streams_over_tls_and_refuses_a_stranger() {
    let lab = Lab::up("tls");
    let tls = lab.dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = make_ca(&tls, "lab-ca");
    make_ca(&tls, "other-ca");
    // The nodes are 127.0.0.1 in the lab config: that is the name verify-full checks.
    let right = issue(&tls, "lab-ca", "db1", "IP:127.0.0.1,DNS:localhost");
    let stranger = issue(&tls, "other-ca", "impostor", "IP:127.0.0.1,DNS:localhost");
    let elsewhere = issue(&tls, "lab-ca", "db9", "DNS:db9.example.net");

    // Only TLS from here on: every TCP line in pg_hba.conf becomes hostssl.
    let hba = lab.data_dir("db1").join("pg_hba.conf");
    let rules = file_text(&hba).replace("\nhost ", "\nhostssl ");
    assert!(rules.contains("hostssl replication"), "{rules}");
    std::fs::write(&hba, rules).unwrap();
    serve_certificate(&lab, &right);
    let config = file_text(&lab.config()).replacen(
        "[defaults]\n",
        &format!(
            "[defaults]\npg_sslmode = \"verify-full\"\npg_sslrootcert = \"{}\"\n",
            text(&ca)
        ),
        1,
    );
    assert!(
        config.contains("pg_sslmode"),
        "the lab config has [defaults]"
    );
    lab.write_config(&config);

    let (code, stderr) = check(&lab);
    assert_eq!(code, Some(0), "verify-full against the lab CA: {stderr}");

    // The standby's walreceiver dials the primary with the same settings.
    lab.reset_secondary("db2");
    lab.assert_streaming("db2");
    let conninfo = lab.sql("db2", "SHOW primary_conninfo");
    assert!(
        conninfo.contains(&format!("sslmode=verify-full sslrootcert={}", text(&ca))),
        "{conninfo}"
    );
    assert_eq!(
        lab.sql(
            "db1",
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'db2'"
        ),
        "t",
        "db2 streams over TLS"
    );
    assert_eq!(
        lab.sql("db2", "SELECT status FROM pg_stat_wal_receiver"),
        "streaming"
    );
    lab.assert_same_contents("db1", "db2");

    // Someone else's server at db1's address: its certificate is from another CA.
    serve_certificate(&lab, &stranger);
    let (code, stderr) = check(&lab);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the server's certificate is not signed by a CA in pg_sslrootcert {}",
            text(&ca)
        )),
        "the message says what is wrong: {stderr}"
    );

    // A certificate from the right CA, but for another host: verify-full refuses it,
    // verify-ca (the chain only) takes it.
    serve_certificate(&lab, &elsewhere);
    let (code, stderr) = check(&lab);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the server's certificate is not for this host name"),
        "{stderr}"
    );
    lab.write_config(&config.replace("\"verify-full\"", "\"verify-ca\""));
    let (code, stderr) = check(&lab);
    assert_eq!(code, Some(0), "verify-ca checks the chain only: {stderr}");
}
