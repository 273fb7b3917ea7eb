//! The health and metrics server under a slowloris attack, over real sockets on loopback.
//!
//! A load balancer drops a node whose `/health` fails, so whoever can reach the port must
//! not be able to make the checks of others fail by holding connections open. The
//! attackers here do what slowloris does: open many connections, send the start of a
//! request, and then one more header byte every second, forever. Linux routes all of
//! 127.0.0.0/8 to loopback, so attackers bind 127.0.0.2 and up and count as other
//! clients, while the load balancer checks from 127.0.0.1.
//!
//! No lab: the server and its limits are what is under test; tests/daemon.rs runs the
//! real daemon's checks against real PostgreSQL.

mod slowloris;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgzfs::http::{self, Handler, Request, Response, HEAD_DEADLINE, MAX_WORKERS, PER_CLIENT};
use slowloris::{connect_from, loopback, Slowloris};

/// The check a load balancer makes from 127.0.0.1: the status, within two seconds.
fn check(server: SocketAddr, path: &str) -> u16 {
    let started = Instant::now();
    let (status, _) = http::get("127.0.0.1", server.port(), path, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{path} during the attack: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{path} took {:?}",
        started.elapsed()
    );
    status
}

/// A server whose `/health` answers 200 at once, like the daemon's on a healthy node.
fn healthy_server() -> http::Server {
    let handler: Arc<Handler> = Arc::new(|request: &Request| match request.path.as_str() {
        "/health" => Response::new(200, "text/plain", "up\n"),
        _ => Response::new(404, "text/plain", "no\n"),
    });
    http::spawn("127.0.0.1:0".parse().unwrap(), handler).unwrap()
}

#[test]
fn a_slowloris_from_one_address_holds_only_its_share_and_checks_keep_passing() {
    let server = healthy_server();
    let attack = Slowloris::start(server.bound, &loopback(2, 1), 40);
    // The attackers look at their connections once a second.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        attack.open(),
        PER_CLIENT,
        "one address holds {PER_CLIENT} connections, the rest are turned away"
    );
    // Longer than the head deadline, with a byte every second on every connection.
    let until = Instant::now() + HEAD_DEADLINE + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(check(server.bound, "/liveness"), 200);
        assert_eq!(check(server.bound, "/health"), 200);
        assert!(attack.open() <= PER_CLIENT, "{:?}", attack.fates());
        std::thread::sleep(Duration::from_millis(500));
    }
    let fates = attack.stop();
    assert_eq!(fates.len(), 40);
    assert!(
        fates
            .iter()
            .filter(|f| f.answer.as_deref() == Some("HTTP/1.1 503 Service Unavailable"))
            .count()
            >= 40 - PER_CLIENT,
        "the connections beyond the cap are told 503: {fates:?}"
    );
    // The ones let in dribbled a byte a second, and were cut off at the head deadline all
    // the same.
    let timed_out: Vec<_> = fates
        .iter()
        .filter(|f| f.answer.as_deref() == Some("HTTP/1.1 408 Request Timeout"))
        .collect();
    assert_eq!(timed_out.len(), PER_CLIENT, "{fates:?}");
    for fate in timed_out {
        let held = fate.held.unwrap();
        assert!(
            held >= HEAD_DEADLINE - Duration::from_millis(200)
                && held < HEAD_DEADLINE + Duration::from_secs(2),
            "cut off after {held:?}, not at the {HEAD_DEADLINE:?} deadline"
        );
    }
    server.stop();
}

#[test]
fn a_slowloris_from_many_addresses_cannot_fill_the_server_and_checks_keep_passing() {
    let server = healthy_server();
    // 40 addresses with 8 connections each: more than the server keeps arriving at once.
    let attack = Slowloris::start(server.bound, &loopback(20, 40), PER_CLIENT);
    std::thread::sleep(Duration::from_millis(500));
    let until = Instant::now() + HEAD_DEADLINE + Duration::from_secs(2);
    let mut checks = 0;
    while Instant::now() < until {
        assert_eq!(check(server.bound, "/liveness"), 200);
        assert_eq!(check(server.bound, "/health"), 200);
        checks += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let fates = attack.stop();
    assert!(checks >= 10, "only {checks} rounds of checks");
    assert_eq!(fates.len(), 40 * PER_CLIENT);
    assert!(
        fates.iter().all(|f| f.held.is_some()),
        "none outlives the head deadline: {fates:?}"
    );
    server.stop();
}

#[test]
fn liveness_is_answered_while_every_worker_is_busy() {
    // Checks that ask PostgreSQL can all hang (a stuck server); the process is alive all
    // the same, and a liveness probe must not restart it for that.
    let release = Arc::new(AtomicBool::new(false));
    let stuck = Arc::clone(&release);
    let handler: Arc<Handler> = Arc::new(move |_: &Request| {
        while !stuck.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Response::new(200, "text/plain", "up\n")
    });
    let server = http::spawn("127.0.0.1:0".parse().unwrap(), handler).unwrap();
    // From as many addresses as workers, so that the per-address cap is not what stops them.
    let hanging: Vec<_> = loopback(100, MAX_WORKERS as u8)
        .into_iter()
        .map(|from| {
            let mut stream = connect_from(from, server.bound);
            stream.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(check(server.bound, "/liveness"), 200);
    assert_eq!(
        check(server.bound, "/health"),
        503,
        "no worker free: a prompt 503, not a hang"
    );
    release.store(true, Ordering::SeqCst);
    for mut stream in hanging {
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    assert_eq!(check(server.bound, "/health"), 200);
    server.stop();
}
