//! The subset of HTTP/1.1 the API speaks, as a pure parser and a response writer: one
//! request per connection (`Connection: close`), a body only with `Content-Length`, limits
//! on the head and the body. Pure, so it is unit-tested without sockets.

/// The request line and headers together may not exceed this.
pub const MAX_HEAD: usize = 8 * 1024;

/// A request as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A response: a status and a JSON body (empty for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// Extra header lines ("Allow: GET"), without the line end.
    pub headers: Vec<String>,
}

impl Response {
    pub fn json(status: u16, body: String) -> Self {
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// An error: `{"error": "<message>"}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "error": message.into() }).to_string();
        Response::json(status, body)
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: vibe-vmm\r\nConnection: close\r\n",
            self.status,
            reason(self.status)
        );
        if !self.body.is_empty() {
            head += "Content-Type: application/json\r\n";
        }
        head += &format!("Content-Length: {}\r\n", self.body.len());
        for h in &self.headers {
            head += h;
            head += "\r\n";
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    Request(Request),
    /// Not a request this server takes: answer with this and close.
    Refused(Response),
}

/// Parses one request from the start of `buf`, with bodies up to `max_body` bytes.
pub fn parse(buf: &[u8], max_body: usize) -> Parsed {
    let Some(head_len) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Parsed::Refused(Response::error(
                431,
                format!("request head longer than {MAX_HEAD} bytes"),
            ));
        }
        return Parsed::Incomplete;
    };
    if head_len > MAX_HEAD {
        return Parsed::Refused(Response::error(
            431,
            format!("request head longer than {MAX_HEAD} bytes"),
        ));
    }
    let bad = |msg: String| Parsed::Refused(Response::error(400, msg));
    let Ok(head) = std::str::from_utf8(&buf[..head_len]) else {
        return bad("request head is not UTF-8".into());
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, path, version] = parts[..] else {
        return bad(format!(
            "malformed request line {:?} (expected METHOD PATH HTTP/1.1)",
            truncate(request_line)
        ));
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return bad(format!("malformed method {:?}", truncate(method)));
    }
    if !path.starts_with('/') {
        return bad(format!("malformed path {:?}", truncate(path)));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parsed::Refused(Response::error(
            505,
            format!(
                "unsupported version {:?} (HTTP/1.1 only)",
                truncate(version)
            ),
        ));
    }
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return bad(format!("malformed header line {:?}", truncate(line)));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n <= max_body => length = n,
                Ok(n) => {
                    return Parsed::Refused(Response::error(
                        413,
                        format!("body of {n} bytes is over the limit of {max_body}"),
                    ))
                }
                Err(_) => return bad(format!("bad Content-Length {:?}", truncate(value))),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(Response::error(
                501,
                "Transfer-Encoding is not supported: send a Content-Length",
            ));
        }
    }
    let body_start = head_len + 4;
    if buf.len() < body_start + length {
        return Parsed::Incomplete;
    }
    Parsed::Request(Request {
        method: method.into(),
        path: path.into(),
        body: buf[body_start..body_start + length].to_vec(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// At most 64 characters of something a client sent, for an error message.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Splits an HTTP response into (status, body); for the client and tests.
pub fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let head_len = find(bytes, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_len]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = String::from_utf8_lossy(&bytes[head_len + 4..]).into_owned();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(p: Parsed) -> u16 {
        match p {
            Parsed::Refused(r) => r.status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let p = parse(b"GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n", 100);
        assert_eq!(
            p,
            Parsed::Request(Request {
                method: "GET".into(),
                path: "/vm".into(),
                body: vec![]
            })
        );
        let req = b"PUT /vm/stop HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        for cut in 0..req.len() {
            assert_eq!(parse(&req[..cut], 100), Parsed::Incomplete, "{cut}");
        }
        match parse(req, 100) {
            Parsed::Request(r) => assert_eq!(r.body, b"{}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_get_the_right_status() {
        assert_eq!(status(parse(b"\x00\x01garbage\r\n\r\n", 100)), 400);
        assert_eq!(status(parse(b"GET\r\n\r\n", 100)), 400);
        assert_eq!(status(parse(b"get /vm HTTP/1.1\r\n\r\n", 100)), 400);
        assert_eq!(status(parse(b"GET vm HTTP/1.1\r\n\r\n", 100)), 400);
        assert_eq!(status(parse(b"GET /vm HTTP/2\r\n\r\n", 100)), 505);
        assert_eq!(
            status(parse(b"GET /vm HTTP/1.1\r\nNoColon\r\n\r\n", 100)),
            400
        );
        let big = b"PUT /vm HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(status(parse(big, 100)), 413);
        let neg = b"PUT /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(status(parse(neg, 100)), 400);
        let chunked = b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(parse(chunked, 100)), 501);
        assert_eq!(status(parse(&[b'a'; MAX_HEAD + 1], 100)), 431);
    }

    #[test]
    fn responses_round_trip() {
        let r = Response::error(409, "the VM is already paused");
        let bytes = r.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
        let (status, body) = parse_response(&bytes).unwrap();
        assert_eq!(status, 409);
        assert_eq!(body, r#"{"error":"the VM is already paused"}"#);
    }
}
