//! A lab CA and server certificates made with openssl(1), for the TLS tests.

#![allow(dead_code)] // Each test crate that includes this uses part of it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One openssl(1) command, its words separated by spaces (lab paths have none).
fn openssl(command: &str) {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A self-signed CA: DIR/NAME.crt and DIR/NAME.key.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let d = dir.display();
    openssl(&format!(
        "req -x509 {NEW_KEY} -days 2 -subj /CN={name} \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
         -keyout {d}/{name}.key -out {d}/{name}.crt"
    ));
    dir.join(format!("{name}.crt"))
}

/// A server certificate signed by CA for the names in `san`: DIR/NAME.crt and .key, the
/// key owned by postgres with mode 0600 as PostgreSQL insists.
pub fn issue(dir: &Path, ca: &str, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let extensions =
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    let (crt, key) = sign(dir, ca, name, name, &extensions);
    let status = Command::new("chown")
        .args(["postgres:postgres", text(&key)])
        .status()
        .unwrap();
    assert!(status.success());
    (crt, key)
}

/// A client certificate signed by CA for the database user `user` (its CN, which
/// PostgreSQL's `cert` authentication matches): DIR/client-USER.crt and .key.
pub fn issue_client(dir: &Path, ca: &str, user: &str) -> (PathBuf, PathBuf) {
    let extensions = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    sign(dir, ca, &format!("client-{user}"), user, extensions)
}

/// A new key and a certificate for it with subject CN=`cn` and these extensions, signed by
/// CA: DIR/NAME.crt and DIR/NAME.key (mode 0600).
fn sign(dir: &Path, ca: &str, name: &str, cn: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let d = dir.display();
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(&format!(
        "req -new {NEW_KEY} -subj /CN={cn} -keyout {d}/{name}.key -out {d}/{name}.csr"
    ));
    openssl(&format!(
        "x509 -req -in {d}/{name}.csr -days 2 -CA {d}/{ca}.crt -CAkey {d}/{ca}.key \
         -CAserial {d}/{ca}.srl -CAcreateserial -extfile {d}/{name}.ext -out {d}/{name}.crt"
    ));
    let key = dir.join(format!("{name}.key"));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir.join(format!("{name}.crt")), key)
}
