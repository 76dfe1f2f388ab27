//! The /metrics endpoint: a thread answering scrapes with the latest exposition text (no
//! HTTP crate: one request line matters, the rest is ignored).
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::CONTENT_TYPE;

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

/// The latest exposition text, shared by the watch loop (writer) and the server (reader).
pub type Snapshot = Arc<Mutex<Arc<String>>>;

/// Bind `addr` and answer scrapes from a thread with the latest snapshot. Returns the address
/// actually bound (port 0 picks a free one).
pub fn serve(addr: SocketAddr, snapshot: Snapshot) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("cfstrace-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // One scrape at a time; the timeouts keep a stuck client from holding it.
                let body = snapshot.lock().map(|s| Arc::clone(&s)).ok();
                let _ = answer(stream, body.as_deref().map(String::as_str).unwrap_or(""));
            }
        })?;
    Ok(bound)
}

/// The status line, content type and body for a request line.
pub fn respond(request_line: &str, metrics: &str) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.to_string()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "cfstrace: metrics are at /metrics\n".into(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        ),
    }
}

fn answer(mut stream: TcpStream, metrics: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    // Read the request head (up to 8 KiB); only its first line matters.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next().unwrap_or("");
    let (status, ctype, body) = respond(line, metrics);
    let head_only = line.starts_with("HEAD ");
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn http_routes() {
        assert_eq!(respond("GET /metrics HTTP/1.1", "m").0, "200 OK");
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.1", "m").2, "m");
        assert_eq!(respond("GET /nope HTTP/1.1", "m").0, "404 Not Found");
        assert_eq!(
            respond("POST /metrics HTTP/1.1", "m").0,
            "405 Method Not Allowed"
        );
    }
}
