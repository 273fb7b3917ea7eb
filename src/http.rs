//! A deliberately small HTTP/1.1 server for health checks and metrics, and the matching
//! client `pgzfs status` uses to read another node's daemon state.
//!
//! Load balancers and Prometheus send one short request per connection. So the server
//! reads one request head (request line and headers, no body), answers, and closes:
//! no keep-alive, no chunking, nothing that needs a web framework.
//!
//! Whoever can reach the port is a stranger, and a load balancer drops a node whose
//! checks fail, so no client may starve the checks of others. One thread reads every
//! request head at once with poll(2): a head has [`HEAD_DEADLINE`] in all to arrive, however
//! it dribbles (a per-read timeout would be reset by one byte every few seconds). A client
//! address holds at most [`PER_CLIENT`] connections, and when every place is taken the
//! connection that has been sending its head longest makes room for the new one. Only a
//! complete request reaches one of the [`MAX_WORKERS`] worker threads, and `/liveness` is
//! answered without one. (tiny_http was considered: it gives each connection a blocking
//! thread of its own and has neither a total head deadline nor a per-client cap, which
//! are the point here.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Error, Result};

/// Request line plus headers. Health checkers send well under 1 KiB.
pub const MAX_HEAD: usize = 8 * 1024;
/// The path the server answers itself, without a worker: the process is alive.
pub const LIVENESS: &str = "/liveness";
/// The time a client has, from connecting, to send its whole request head.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// The time a worker has to hand over an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one client address (an IPv6 /64) holds at once, arriving or answered.
pub const PER_CLIENT: usize = 8;
/// Connections whose head is arriving; a new one beyond makes room (see [`Reception`]).
pub const MAX_ARRIVING: usize = 256;
/// Requests answered at once (a check asks PostgreSQL); more get 503 at once.
pub const MAX_WORKERS: usize = 16;
/// The longest poll(2) sleeps, so that a stop is seen even if its wake-up is lost.
const POLL_TICK: Duration = Duration::from_millis(250);
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
        // One connection of our own wakes poll() at once to see the flag.
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
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::failed(format!("http_listen {address}: {e}")))?;
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    let thread = std::thread::Builder::new()
        .name("pgzfs-http".into())
        .spawn(move || Reception::new(listener, handler).run(&flag))
        .map_err(|e| Error::failed(format!("cannot start the HTTP thread: {e}")))?;
    tracing::info!("serving health checks and metrics on http://{bound}");
    Ok(Server {
        bound,
        stopping,
        thread: Some(thread),
    })
}

/// Who a connection counts against for [`PER_CLIENT`]: its IPv4 address, or the /64 of
/// its IPv6 address (one host usually has a whole /64 to pick addresses from).
fn client_of(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
        v4 => v4,
    }
}

/// The connections each client holds, reading or being answered.
type Holdings = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection counted against its client until it is dropped, on whichever thread
/// that happens.
struct Slot {
    client: IpAddr,
    holdings: Holdings,
}

impl Slot {
    fn take(holdings: &Holdings, client: IpAddr) -> Slot {
        *lock(holdings).entry(client).or_insert(0) += 1;
        Slot {
            client,
            holdings: Arc::clone(holdings),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = lock(&self.holdings);
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection whose request head is still arriving.
struct Arriving {
    stream: TcpStream,
    head: Vec<u8>,
    since: Instant,
    slot: Slot,
}

/// The thread that accepts connections and reads every request head, all of them at
/// once with poll(2). A client that sends its head slowly costs a descriptor and a few
/// bytes here, never a worker, and is cut off [`HEAD_DEADLINE`] after it connected
/// however it dribbles. Only a complete request goes to a worker thread.
struct Reception {
    listener: TcpListener,
    handler: Arc<Handler>,
    arriving: Vec<Arriving>,
    holdings: Holdings,
    workers: Arc<AtomicUsize>,
}

impl Reception {
    fn new(listener: TcpListener, handler: Arc<Handler>) -> Reception {
        Reception {
            listener,
            handler,
            arriving: Vec::new(),
            holdings: Arc::default(),
            workers: Arc::default(),
        }
    }

    fn run(mut self, stopping: &AtomicBool) {
        while !stopping.load(Ordering::SeqCst) {
            let (listener_ready, ready) = self.wait();
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            // Newest first, so that removing one leaves the indexes still to visit valid.
            for index in (0..ready.len()).rev() {
                if ready[index] {
                    self.read_from(index);
                }
            }
            self.expire(Instant::now());
            if listener_ready {
                self.accept_all();
            }
        }
    }

    /// Wait until the listener or an arriving connection has something, or the next
    /// deadline: whether the listener is readable, and which arriving connections are.
    fn wait(&self) -> (bool, Vec<bool>) {
        let now = Instant::now();
        let next_deadline = self
            .arriving
            .iter()
            .map(|a| (a.since + HEAD_DEADLINE).saturating_duration_since(now))
            .min()
            .unwrap_or(POLL_TICK);
        // Rounded up: waking a millisecond early would find nothing expired yet.
        let millis = next_deadline.min(POLL_TICK).as_micros().div_ceil(1000);
        let timeout = PollTimeout::from(u16::try_from(millis).unwrap_or(u16::MAX));
        let interest = PollFlags::POLLIN;
        let mut fds = Vec::with_capacity(self.arriving.len() + 1);
        fds.push(PollFd::new(self.listener.as_fd(), interest));
        fds.extend(
            self.arriving
                .iter()
                .map(|a| PollFd::new(a.stream.as_fd(), interest)),
        );
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("http: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Hang-ups and errors count as readable: the read then sees them.
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        (ready(&fds[0]), fds[1..].iter().map(ready).collect())
    }

    fn read_from(&mut self, index: usize) {
        let arriving = &mut self.arriving[index];
        let mut chunk = [0u8; 1024];
        let room = (MAX_HEAD - arriving.head.len()).min(chunk.len());
        let got = match arriving.stream.read(&mut chunk[..room]) {
            // Closed half way: nobody is left to answer.
            Ok(0) => return drop(self.arriving.swap_remove(index)),
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(_) => return drop(self.arriving.swap_remove(index)),
        };
        let searched_to = arriving.head.len().saturating_sub(3);
        arriving.head.extend_from_slice(&chunk[..got]);
        let complete = head_end(&arriving.head, searched_to);
        if complete.is_none() && arriving.head.len() < MAX_HEAD {
            return;
        }
        let mut done = self.arriving.swap_remove(index);
        let answer = match complete {
            None => Response::error(BadRequest::TooLarge.status()),
            Some(end) => match parse_head(&done.head[..end]) {
                Err(bad) => Response::error(bad.status()),
                Ok(request) => return self.dispatch(done, request),
            },
        };
        answer_now(&mut done.stream, &answer, false);
    }

    /// A complete request: `/liveness` and refusals are answered here and now, the rest
    /// by a worker thread, so that a slow handler never holds up the heads.
    fn dispatch(&mut self, mut done: Arriving, request: Request) {
        let head_only = request.method == "HEAD";
        if !matches!(request.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
            // HAProxy's httpchk sends OPTIONS unless told otherwise; Patroni answers it
            // like GET, and so do we.
            return answer_now(&mut done.stream, &Response::error(405), false);
        }
        if request.path == LIVENESS {
            // The process runs and its server answers: that is all liveness says, so it
            // needs no worker and is answered even when every worker is busy.
            let alive = Response::new(200, "text/plain", "alive\n");
            return answer_now(&mut done.stream, &alive, head_only);
        }
        if self.workers.fetch_add(1, Ordering::SeqCst) >= MAX_WORKERS {
            self.workers.fetch_sub(1, Ordering::SeqCst);
            return answer_now(&mut done.stream, &Response::error(503), head_only);
        }
        // Given back when the worker ends, even by a panic in the handler.
        let worker = Worker(Arc::clone(&self.workers));
        let handler = Arc::clone(&self.handler);
        let spawned = std::thread::Builder::new()
            .name("pgzfs-http-conn".into())
            .spawn(move || {
                let Arriving {
                    mut stream, slot, ..
                } = done;
                let response = handler(&request);
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = stream.write_all(&render(&response, head_only));
                drop((stream, slot, worker));
            });
        if let Err(e) = spawned {
            tracing::warn!("http: cannot start a connection thread: {e}");
        }
    }

    /// Cut off every head that has not arrived in [`HEAD_DEADLINE`], however it dribbled.
    fn expire(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.arriving.len() {
            if now >= self.arriving[index].since + HEAD_DEADLINE {
                let mut late = self.arriving.swap_remove(index);
                answer_now(&mut late.stream, &Response::error(408), false);
            } else {
                index += 1;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, say: wait a little instead of spinning.
                    tracing::warn!("http: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            };
            self.admit(stream, client_of(peer));
        }
    }

    /// Take a new connection in. A client at its cap, or a full house, makes room by
    /// dropping the connection whose head has been arriving longest: whoever is still
    /// sending a head after that long is the likeliest to be dribbling on purpose, and a
    /// health checker that just connected is let in.
    fn admit(&mut self, mut stream: TcpStream, client: IpAddr) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let held = lock(&self.holdings).get(&client).copied().unwrap_or(0);
        if held >= PER_CLIENT && !self.drop_oldest(|a| a.slot.client == client) {
            // All of its connections are with workers: this one waits its turn.
            return answer_now(&mut stream, &Response::error(503), false);
        }
        if self.arriving.len() >= MAX_ARRIVING {
            self.drop_oldest(|_| true);
        }
        let slot = Slot::take(&self.holdings, client);
        self.arriving.push(Arriving {
            stream,
            head: Vec::with_capacity(256),
            since: Instant::now(),
            slot,
        });
    }

    /// Drop the longest-arriving connection of those `which` picks; false if none.
    fn drop_oldest(&mut self, which: impl Fn(&Arriving) -> bool) -> bool {
        let oldest = self
            .arriving
            .iter()
            .enumerate()
            .filter(|(_, a)| which(a))
            .min_by_key(|(_, a)| a.since)
            .map(|(index, _)| index);
        match oldest {
            Some(index) => {
                let mut dropped = self.arriving.swap_remove(index);
                tracing::debug!("http: made room by dropping a slow client");
                answer_now(&mut dropped.stream, &Response::error(503), false);
                true
            }
            None => false,
        }
    }
}

/// One of the [`MAX_WORKERS`], taken until dropped.
struct Worker(Arc<AtomicUsize>);

impl Drop for Worker {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where the head ends (just past its blank line), looking from `from` on.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    (from..head.len()).find_map(|i| {
        if head[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if head[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Answer without waiting: a short answer fits in a fresh socket's send buffer, and a
/// client that does not take it loses it.
fn answer_now(stream: &mut TcpStream, response: &Response, head_only: bool) {
    // Closing with unread bytes sends a reset, which can overtake the answer: take what
    // has come in so far (the stream does not block here).
    let mut sink = [0u8; 1024];
    for _ in 0..MAX_HEAD / sink.len() {
        if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.write_all(&render(response, head_only));
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
    fn a_head_arriving_in_pieces_is_found_where_it_ends() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        // However the bytes were cut up, the search from just before the last piece
        // finds the blank line, including one split across two pieces.
        for cut in 1..head.len() {
            let found = head_end(&head[..cut], 0).or_else(|| head_end(head, cut.saturating_sub(3)));
            assert_eq!(found, Some(head.len() - 4), "cut at {cut}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nX: y\r\n", 0), None);
    }

    #[test]
    fn a_client_is_its_ipv4_address_or_its_ipv6_slash_64() {
        let client = |text: &str| client_of(text.parse().unwrap());
        assert_eq!(client("192.0.2.7:1234"), client("192.0.2.7:80"));
        assert_ne!(client("192.0.2.7:1234"), client("192.0.2.8:1234"));
        // One host picks addresses from its whole /64 at will.
        assert_eq!(
            client("[2001:db8:1:2::1]:80"),
            client("[2001:db8:1:2:ffff::9]:80")
        );
        assert_ne!(
            client("[2001:db8:1:2::1]:80"),
            client("[2001:db8:1:3::1]:80")
        );
        // A dual-stack socket sees IPv4 clients as mapped addresses.
        assert_eq!(client("[::ffff:192.0.2.7]:80"), client("192.0.2.7:80"));
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
