//! The /metrics endpoint: hyper's HTTP/1.1 on tokio, one task a connection, so an idle or slow
//! client never delays another scrape. Every response is the latest [`Snapshot`]'s body, a
//! `Bytes` shared with the renderer (a reference count, never a copy).
use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A client must send its whole request head within this, or its connection is closed (an
/// idle connection too).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection lives at most this long, response included: a client that stops reading
/// cannot hold its task forever. One request a connection (no keep-alive), so a timely
/// scrape is never cut by it.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `/`: a page pointing at the metrics.
const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>cfstrace</title></head><body>\n\
<h1>cfstrace</h1>\n<p>CFS bandwidth-control period timers against the hard-lockup watchdog: \
<a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

/// `--prometheus ADDR`: `:9090` or `9090` bind 127.0.0.1; `HOST:PORT` (`0.0.0.0:9090`,
/// `[::]:9090`, `localhost:9090`) is taken as given.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("{e} (examples: :9090, 9090, 0.0.0.0:9090)"))?
        .next()
        .ok_or_else(|| format!("{s} resolves to no address"))
}

/// The latest exposition, shared by the watch loop (it sets one per interval) and every
/// response (each takes a reference to it). Clones share the same slot.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(Arc<Mutex<Bytes>>);

impl Snapshot {
    /// Replace the body later scrapes get.
    pub fn set(&self, body: Bytes) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = body;
    }

    /// The current body (a reference-counted handle, not a copy).
    pub fn get(&self) -> Bytes {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A bound /metrics listener, not yet accepting: [`Server::run`] serves it.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    snapshot: Snapshot,
}

/// Bind `addr` (port 0 picks a free one) for scrapes answered from `snapshot`. Must be called
/// within a tokio runtime with I/O enabled.
pub async fn bind(addr: SocketAddr, snapshot: Snapshot) -> io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    Ok(Server { listener, snapshot })
}

impl Server {
    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accept and answer scrapes until the future is dropped (its task aborted or its runtime
    /// shut down); never returns otherwise. Each connection is a task of its own on the
    /// current runtime, which needs I/O and time enabled.
    pub async fn run(self) {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .keep_alive(false);
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                // A connection that failed before we took it concerns no other.
                Err(e) if is_connection_error(&e) => continue,
                // Out of file descriptors or memory: let some connections finish first.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let snapshot = self.snapshot.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.method(), req.uri().path(), &snapshot);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                // A client's error or timeout ends its own connection and nothing else.
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The response to `method` on `path`: `/metrics` is the snapshot, `/` a page linking to it,
/// anything else 404 (405 for methods other than GET and HEAD; hyper leaves a HEAD's body out).
pub fn respond(method: &Method, path: &str, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    let reply = |status, ctype, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
        r
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET and HEAD\n"),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, super::CONTENT_TYPE, snapshot.get()),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX.as_bytes()),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found: try /metrics\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[test]
    fn listen_addresses() {
        for (given, bound) in [
            (":9090", "127.0.0.1:9090"),
            ("9100", "127.0.0.1:9100"),
            ("0.0.0.0:9090", "0.0.0.0:9090"),
            ("[::1]:9090", "[::1]:9090"),
        ] {
            let want: SocketAddr = bound.parse().unwrap();
            assert_eq!(parse_listen_addr(given), Ok(want), "{given}");
        }
        assert!(parse_listen_addr("nonsense").is_err());
    }

    fn body(r: Response<Full<Bytes>>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(r.into_body().collect()).unwrap().to_bytes()
    }

    #[test]
    fn routes() {
        let snap = Snapshot::default();
        snap.set(Bytes::from_static(b"m 1\n# EOF\n"));
        let r = respond(&Method::GET, "/metrics", &snap);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], super::super::CONTENT_TYPE);
        assert_eq!(body(r), "m 1\n# EOF\n");
        let r = respond(&Method::GET, "/", &snap);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            String::from_utf8(body(r).to_vec())
                .unwrap()
                .contains("href=\"/metrics\"")
        );
        assert_eq!(
            respond(&Method::HEAD, "/metrics", &snap).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/nope", &snap).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::GET, "/metrics/x", &snap).status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&Method::POST, "/metrics", &snap);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    fn snapshot_is_shared_not_copied() {
        let snap = Snapshot::default();
        let body = Bytes::from(vec![b'x'; 4096]);
        snap.set(body.clone());
        let (a, b) = (snap.clone().get(), snap.get());
        assert_eq!(a.as_ptr(), body.as_ptr());
        assert_eq!(b.as_ptr(), body.as_ptr());
    }
}
