//! A deliberately small HTTP/1.1 server for health checks and metrics, and the matching
//! client `pgzfs status` uses to read another node's daemon state.
//!
//! Load balancers and Prometheus send one short request per connection. So the server
//! reads one request head (request line and headers, no body), answers, and closes:
//! no keep-alive, no chunking, nothing that needs a web framework. Everything a client
//! controls is bounded: the head size, the time to send it, and the number of
//! connections served at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Request line plus headers. Health checkers send well under 1 KiB.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request, and we have to send the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 at once, without reading them.
const MAX_CONNECTIONS: usize = 16;
/// The most the client reads of an answer (`/state` is a few hundred bytes).
const MAX_RESPONSE: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `?a=1&b` as [("a", "1"), ("b", "")], in order, not percent-decoded: no endpoint
    /// takes a value that would need it.
    pub query: Vec<(String, String)>,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        let mut text = body.to_string();
        text.push('\n');
        Response::new(status, "application/json", text)
    }

    fn error(status: u16) -> Response {
        Response::new(status, "text/plain", format!("{}\n", reason(status)))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a request could not be read; each maps to the status that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// Malformed, or the client closed the connection half way.
    Malformed,
    TooLarge,
    TimedOut,
    Version,
}

impl BadRequest {
    fn status(self) -> u16 {
        match self {
            BadRequest::Malformed => 400,
            BadRequest::TooLarge => 431,
            BadRequest::TimedOut => 408,
            BadRequest::Version => 505,
        }
    }
}

/// Read one request head: up to the blank line that ends it, never more than
/// `MAX_HEAD` bytes. Bytes after the blank line (a body) are left unread.
pub fn read_request(stream: &mut impl Read) -> std::result::Result<Request, BadRequest> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // One byte at a time: requests are tiny, and this never reads past the head.
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(BadRequest::Malformed),
            Ok(_) => head.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(BadRequest::TimedOut)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BadRequest::Malformed),
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() >= MAX_HEAD {
            return Err(BadRequest::TooLarge);
        }
    }
    parse_head(&head)
}

fn parse_head(head: &[u8]) -> std::result::Result<Request, BadRequest> {
    let text = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed)?;
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().ok_or(BadRequest::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return Err(BadRequest::Malformed);
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(BadRequest::Version),
        _ => return Err(BadRequest::Malformed),
    }
    // Headers are not used, but a request whose headers are not headers is not HTTP.
    for line in lines.filter(|line| !line.is_empty()) {
        match line.split_once(':') {
            Some((name, _)) if token(name) => {}
            _ => return Err(BadRequest::Malformed),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_string(), value.to_string())
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
    })
}

/// The whole answer as bytes. HEAD gets the head only, with the length the body has.
pub fn render(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    out
}

pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A listening server, serving on a thread of its own until it is stopped.
pub struct Server {
    pub bound: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Stop accepting and close the port; requests already being answered finish.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // accept() blocks: one connection of our own wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&wake_address(self.bound), Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        tracing::info!("stopped serving on http://{}", self.bound);
    }
}

/// Where to connect to reach a listener bound to `bound` (an unspecified address is
/// reached on loopback).
fn wake_address(bound: SocketAddr) -> SocketAddr {
    let mut address = bound;
    if address.ip().is_unspecified() {
        address.set_ip(match bound {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address
}

/// Bind `address` (so that a taken port is an error the caller reports) and serve it on
/// a thread of its own until [`Server::stop`].
pub fn spawn(address: SocketAddr, handler: Arc<Handler>) -> Result<Server> {
    let listener = TcpListener::bind(address)
        .map_err(|e| Error::failed(format!("http_listen {address}: cannot listen: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::failed(format!("http_listen {address}: {e}")))?;
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    let thread = std::thread::Builder::new()
        .name("pgzfs-http".into())
        .spawn(move || accept_loop(listener, handler, flag))
        .map_err(|e| Error::failed(format!("cannot start the HTTP thread: {e}")))?;
    tracing::info!("serving health checks and metrics on http://{bound}");
    Ok(Server {
        bound,
        stopping,
        thread: Some(thread),
    })
}

fn accept_loop(listener: TcpListener, handler: Arc<Handler>, stopping: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::warn!("http: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(&render(&Response::error(503), false));
            continue;
        }
        let (handler, active) = (Arc::clone(&handler), Arc::clone(&active));
        let spawned = std::thread::Builder::new()
            .name("pgzfs-http-conn".into())
            .spawn(move || {
                serve_one(&mut stream, &*handler);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!("http: cannot start a connection thread: {e}");
        }
    }
}

fn serve_one(stream: &mut TcpStream, handler: &Handler) {
    let (response, head_only) = match read_request(stream) {
        Ok(request) => {
            let head_only = request.method == "HEAD";
            let response = match request.method.as_str() {
                // HAProxy's httpchk sends OPTIONS unless told otherwise; Patroni answers
                // it like GET, and so do we.
                "GET" | "HEAD" | "OPTIONS" => handler(&request),
                _ => Response::error(405),
            };
            (response, head_only)
        }
        Err(bad) => (Response::error(bad.status()), false),
    };
    let _ = stream.write_all(&render(&response, head_only));
    let _ = stream.flush();
}

/// GET `path` from `host:port`: the status and the body. For reading another node's
/// daemon state; bounded in time and size like the server.
pub fn get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let describe =
        |e: &dyn std::fmt::Display| Error::failed(format!("http://{host}:{port}{path}: {e}"));
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|e| describe(&e))?
        .next()
        .ok_or_else(|| describe(&"no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| describe(&e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| describe(&e))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| describe(&e))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| describe(&e))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| describe(&e))?;
    parse_response(&raw).ok_or_else(|| describe(&"not an HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .strip_prefix("HTTP/1.")?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> std::result::Result<Request, BadRequest> {
        read_request(&mut text.as_bytes())
    }

    #[test]
    fn a_haproxy_check_with_its_query_is_understood() {
        let got =
            request("OPTIONS /replica?lag=16MB HTTP/1.0\r\nUser-Agent: HAProxy\r\n\r\n").unwrap();
        assert_eq!(got.method, "OPTIONS");
        assert_eq!(got.path, "/replica");
        assert_eq!(got.param("lag"), Some("16MB"));
        assert_eq!(got.param("other"), None);
        let bare = request("GET /health HTTP/1.1\n\n").unwrap();
        assert_eq!((bare.path.as_str(), bare.query.len()), ("/health", 0));
    }

    #[test]
    fn broken_requests_get_the_status_that_says_why() {
        assert_eq!(request("GET /health\r\n\r\n"), Err(BadRequest::Malformed));
        assert_eq!(
            request("GET health HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            request("GET /a b HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(
            request("G(T / HTTP/1.1\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(request("GET / HTTP/2.0\r\n\r\n"), Err(BadRequest::Version));
        assert_eq!(
            request("GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(BadRequest::Malformed)
        );
        // The client hung up before the blank line.
        assert_eq!(
            request("GET / HTTP/1.1\r\nHost: x\r\n"),
            Err(BadRequest::Malformed)
        );
        assert_eq!(BadRequest::TimedOut.status(), 408);
    }

    #[test]
    fn an_endless_head_is_cut_off_at_the_limit_without_reading_on() {
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD * 4));
        let mut reader = endless.as_bytes();
        assert_eq!(read_request(&mut reader), Err(BadRequest::TooLarge));
        assert_eq!(
            reader.len(),
            endless.len() - MAX_HEAD,
            "read exactly MAX_HEAD bytes"
        );
    }

    #[test]
    fn answers_carry_their_length_and_head_answers_no_body() {
        let response = Response::new(503, "text/plain", "no\n");
        let full = String::from_utf8(render(&response, false)).unwrap();
        assert!(
            full.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{full}"
        );
        assert!(full.contains("Content-Length: 3\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nno\n"), "{full}");
        let head = String::from_utf8(render(&response, true)).unwrap();
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"),
            "{head}"
        );
        assert_eq!(
            parse_response(full.as_bytes()),
            Some((503, "no\n".to_string()))
        );
    }

    #[test]
    fn the_server_answers_over_a_real_socket_and_refuses_other_methods() {
        let handler: Arc<Handler> =
            Arc::new(|r: &Request| Response::new(200, "text/plain", format!("{}\n", r.path)));
        let server = spawn("127.0.0.1:0".parse().unwrap(), handler).unwrap();
        let bound = server.bound;
        let (status, body) = get(
            "127.0.0.1",
            bound.port(),
            "/health?x=1",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!((status, body.as_str()), (200, "/health\n"));
        let mut stream = TcpStream::connect(bound).unwrap();
        stream
            .write_all(b"DELETE /health HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");

        // Stopped, the port is closed and can be bound again at once.
        server.stop();
        assert!(
            TcpStream::connect(bound).is_err(),
            "nothing answers on {bound}"
        );
        TcpListener::bind(bound).expect("the port is free again");
    }
}
