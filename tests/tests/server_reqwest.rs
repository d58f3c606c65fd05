//! The fixture server driven by the same HTTP client the product uses (reqwest, blocking).

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sysext_tests::{FixtureServer, Response};

/// A client like the product's, but never routed through an environment proxy: the fixture
/// lives on loopback and tests must not depend on the machine's proxy settings.
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

#[test]
fn serves_bytes_and_logs_requests() {
    let server = FixtureServer::start();
    assert!(server.url().starts_with("http://127.0.0.1:"));
    let body: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    server.set("/a/file.bin", Response::ok(body.clone()));

    let resp = client().get(server.url_for("/a/file.bin?x=1")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(body.len() as u64));
    assert_eq!(resp.bytes().unwrap().as_ref(), body.as_slice());

    let head = client().head(server.url_for("/a/file.bin")).send().unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], body.len().to_string().as_str());

    assert_eq!(server.hits("/a/file.bin"), 2);
    assert_eq!(server.total_hits(), 2);
    assert_eq!(server.requests(), ["/a/file.bin", "/a/file.bin"]);
}

#[test]
fn unknown_and_removed_paths_are_404() {
    let server = FixtureServer::start();
    let resp = client().get(server.url_for("/nope")).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().unwrap().contains("/nope"));

    server.set("/gone", Response::ok("here"));
    assert_eq!(client().get(server.url_for("/gone")).send().unwrap().status(), 200);
    server.remove("/gone");
    assert_eq!(client().get(server.url_for("/gone")).send().unwrap().status(), 404);
    assert_eq!(server.requests(), ["/nope", "/gone", "/gone"]);
}

#[test]
fn truncated_body_is_an_error_or_short() {
    let server = FixtureServer::start();
    server.set("/t", Response::ok(vec![b'x'; 100_000]).truncate_after(1000));
    let resp = client().get(server.url_for("/t")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(100_000));
    match resp.bytes() {
        Err(_) => {}
        Ok(bytes) => assert!(bytes.len() < 100_000, "got the full body despite truncation"),
    }

    // Streaming readers see the same thing: an error or fewer bytes than announced.
    let mut resp = client().get(server.url_for("/t")).send().unwrap();
    let mut buf = Vec::new();
    match resp.read_to_end(&mut buf) {
        Err(_) => assert!(buf.len() <= 1000),
        Ok(n) => assert_eq!(n, 1000),
    }
}

#[test]
fn fail_first_then_success() {
    let server = FixtureServer::start();
    server.set("/flaky", Response::ok("finally").fail_first(2, 503));
    let c = client();
    for _ in 0..2 {
        let resp = c.get(server.url_for("/flaky")).send().unwrap();
        assert_eq!(resp.status(), 503);
    }
    let resp = c.get(server.url_for("/flaky")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "finally");
    assert_eq!(server.hits("/flaky"), 3);

    // Setting a route again resets its counters.
    server.set("/flaky", Response::ok("again").fail_first(1, 500));
    assert_eq!(c.get(server.url_for("/flaky")).send().unwrap().status(), 500);
    assert_eq!(c.get(server.url_for("/flaky")).send().unwrap().text().unwrap(), "again");
}

#[test]
fn drop_first_is_a_connection_error() {
    let server = FixtureServer::start();
    server.set("/d", Response::ok("ok").drop_first(2).fail_first(1, 502));
    let c = client();
    for _ in 0..2 {
        let err = c.get(server.url_for("/d")).send().unwrap_err();
        assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    }
    assert_eq!(c.get(server.url_for("/d")).send().unwrap().status(), 502);
    assert_eq!(c.get(server.url_for("/d")).send().unwrap().text().unwrap(), "ok");
    assert_eq!(server.hits("/d"), 4);
}

#[test]
fn delay_slows_responses_and_client_timeouts_fire() {
    let server = FixtureServer::start();
    server.set("/slow", Response::ok("late").delay(Duration::from_millis(300)));
    let start = Instant::now();
    assert_eq!(client().get(server.url_for("/slow")).send().unwrap().text().unwrap(), "late");
    assert!(start.elapsed() >= Duration::from_millis(300));

    server.set("/slower", Response::ok("never").delay(Duration::from_secs(30)));
    let impatient =
        reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_millis(200)).build().unwrap();
    let err = impatient.get(server.url_for("/slower")).send().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    // Dropping the server must not wait out the 30 s delay.
    let start = Instant::now();
    drop(server);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[test]
fn redirects_are_followed() {
    let server = FixtureServer::start();
    server.set("/release", Response::redirect("/cdn/blob"));
    server.set("/cdn/blob", Response::ok("blob"));
    assert_eq!(client().get(server.url_for("/release")).send().unwrap().text().unwrap(), "blob");
    assert_eq!(server.requests(), ["/release", "/cdn/blob"]);
}

#[test]
fn routes_change_while_running_from_other_threads() {
    let server = Arc::new(FixtureServer::start());
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                let path = format!("/p{i}");
                server.set(&path, Response::ok(format!("body {i}")));
                let text = client().get(server.url_for(&path)).send().unwrap().text().unwrap();
                assert_eq!(text, format!("body {i}"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.total_hits(), 8);
}

#[test]
fn survives_clients_that_disconnect_early() {
    let server = FixtureServer::start();
    server.set("/big", Response::ok(vec![0u8; 8 << 20]));
    for _ in 0..5 {
        let mut resp = client().get(server.url_for("/big")).send().unwrap();
        let mut first = [0u8; 10];
        resp.read_exact(&mut first).unwrap();
        drop(resp);
    }
    let resp = client().get(server.url_for("/big")).send().unwrap();
    assert_eq!(resp.bytes().unwrap().len(), 8 << 20);
}
