//! Does a server's pg_hba.conf let a replication connection in? The client library pgzfs
//! uses cannot open one (it has no `replication=` startup parameter), so this sends the
//! startup message of a physical replication connection itself, with postgres-protocol's
//! encoder and parser, and reads only the server's first answer: a request for a
//! password means a pg_hba line matched; an error names why not. No password is sent
//! and nothing is logged in: the connection is closed after that first answer.
//!
//! Without TLS only: a server whose pg_hba has only `hostssl` lines for replication
//! answers "no pg_hba.conf entry ... no encryption", which the caller reports as such.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend, frontend};

/// The server's first answer to a replication startup.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplicationAnswer {
    /// It asked for a password, or let the role in without one.
    Accepted,
    /// A pg_hba line refuses it, or none matches (SQLSTATE 28000), with the message.
    Refused(String),
    /// Some other error (too many connections, the database system is starting up, a
    /// wrong role, ...), with the message.
    Other(String),
}

/// Ask the server at `host`:`port` whether `user` may open a physical replication
/// connection from here. An error: it could not be asked (not reachable, not PostgreSQL).
pub fn probe_replication(
    host: &str,
    port: u16,
    user: &str,
    timeout: Duration,
) -> Result<ReplicationAnswer, String> {
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut startup = BytesMut::new();
    frontend::startup_message(
        [
            ("user", user),
            ("replication", "true"),
            ("application_name", "pgzfs-check"),
        ],
        &mut startup,
    )
    .map_err(|e| e.to_string())?;
    stream.write_all(&startup).map_err(|e| e.to_string())?;

    // One message, however it is cut into reads; a server says little before it
    // decides, so anything past 64 KiB is not PostgreSQL talking.
    let mut received = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut parsing = received.clone();
        match backend::Message::parse(&mut parsing) {
            Ok(Some(message)) => return Ok(judge(message)),
            Ok(None) => {}
            Err(e) => return Err(format!("{host}:{port} does not speak PostgreSQL: {e}")),
        }
        if received.len() > 64 * 1024 {
            return Err(format!("{host}:{port} sent no answer a server would send"));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("no answer from {host}:{port}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{host}:{port} closed the connection without an answer"
            ));
        }
        received.extend_from_slice(&chunk[..n]);
    }
}

fn judge(message: backend::Message) -> ReplicationAnswer {
    use backend::Message::*;
    match message {
        AuthenticationOk
        | AuthenticationCleartextPassword
        | AuthenticationMd5Password(_)
        | AuthenticationSasl(_)
        | AuthenticationGss
        | AuthenticationSspi
        | AuthenticationKerberosV5
        | AuthenticationScmCredential => ReplicationAnswer::Accepted,
        ErrorResponse(body) => {
            let mut code = String::new();
            let mut text = String::new();
            let mut fields = body.fields();
            while let Ok(Some(field)) = fields.next() {
                match field.type_() {
                    b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    b'M' => text = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    _ => {}
                }
            }
            // 28000: invalid_authorization_specification, what a missing or rejecting
            // pg_hba line gives before any password is asked for.
            if code == "28000" {
                ReplicationAnswer::Refused(text)
            } else {
                ReplicationAnswer::Other(format!("{text} (SQLSTATE {code})"))
            }
        }
        _ => ReplicationAnswer::Other("an unexpected first message".to_string()),
    }
}
