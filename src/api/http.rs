//! A small, strict HTTP/1.1 request parser and response writer: what the
//! API needs and nothing more. A request is a request line, headers and a
//! `Content-Length` body; chunked bodies, header folding and anything
//! ambiguous (two different lengths, a length with `Transfer-Encoding`)
//! are refused. The parser works on whatever bytes have arrived so far and
//! says whether it needs more, so the server never blocks on a client.

use std::fmt;

/// The most header bytes (request line and headers, with the blank line).
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The methods the API serves; anything else is refused as bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }

    fn parse(text: &str) -> Option<Method> {
        match text {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            _ => None,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request line and headers, parsed; the body follows `len` bytes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// None for a method the API does not serve (answered 400).
    pub method: Option<Method>,
    /// The method as sent, for error messages.
    pub method_text: String,
    /// The path, without query or fragment.
    pub path: String,
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits before sending the body.
    pub expect_continue: bool,
    /// Bytes of the request line and headers, blank line included.
    pub len: usize,
}

/// Why a request cannot be served; the connection is closed after the
/// error response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    fn bad(message: impl Into<String>) -> Self {
        HttpError {
            status: 400,
            message: message.into(),
        }
    }
}

/// Parses the head of the request at the start of `buf`: `Ok(None)` if
/// its blank line has not arrived yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(i) => i + 4,
        None if buf.len() >= MAX_HEAD => {
            return Err(HttpError::bad(format!(
                "request line and headers exceed {MAX_HEAD} bytes"
            )))
        }
        None => return Ok(None),
    };
    if end > MAX_HEAD {
        return Err(HttpError::bad(format!(
            "request line and headers exceed {MAX_HEAD} bytes"
        )));
    }
    let text = std::str::from_utf8(&buf[..end - 4])
        .map_err(|_| HttpError::bad("request head is not valid UTF-8"))?;
    if text
        .bytes()
        .any(|b| (b < 0x20 && b != b'\r' && b != b'\n' && b != b'\t') || b == 0x7f)
    {
        return Err(HttpError::bad("control character in request head"));
    }
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.contains(['\r', '\n']) {
        return Err(HttpError::bad("bare CR or LF in request line"));
    }
    let mut parts = request_line.split(' ');
    let (Some(method_text), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::bad(format!(
            "malformed request line '{request_line}'"
        )));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        other => {
            return Err(HttpError {
                status: 505,
                message: format!("unsupported HTTP version '{other}'"),
            })
        }
    };
    let path = request_path(target)?;
    let mut head = Head {
        method: Method::parse(method_text),
        method_text: method_text.to_string(),
        path,
        content_length: 0,
        keep_alive: http11,
        expect_continue: false,
        len: end,
    };
    let mut length: Option<usize> = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::bad("folded header lines are not accepted"));
        }
        if line.contains(['\r', '\n']) {
            return Err(HttpError::bad("bare CR or LF in a header"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::bad(format!("malformed header line '{line}'")));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(HttpError::bad(format!("malformed header name '{name}'")));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = parse_length(value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::bad("conflicting Content-Length headers"));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                return Err(HttpError::bad(
                    "Transfer-Encoding is not supported: send the body with a Content-Length",
                ))
            }
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
            "expect" => {
                if value.eq_ignore_ascii_case("100-continue") {
                    head.expect_continue = true;
                } else {
                    return Err(HttpError {
                        status: 417,
                        message: format!("unsupported expectation '{value}'"),
                    });
                }
            }
            _ => {}
        }
    }
    head.content_length = length.unwrap_or(0);
    if head.content_length > MAX_BODY {
        return Err(HttpError {
            status: 413,
            message: format!(
                "request body of {} bytes exceeds the limit of {MAX_BODY} bytes",
                head.content_length
            ),
        });
    }
    Ok(Some(head))
}

/// The path of an origin-form (`/a/b?q`) or absolute-form
/// (`http://localhost/a/b`) target, without its query and fragment.
fn request_path(target: &str) -> Result<String, HttpError> {
    let rest = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.find('/').map_or("/", |i| &rest[i..])
        }
        Some(_) => {
            return Err(HttpError::bad(format!(
                "unsupported request target '{target}'"
            )))
        }
        None => target,
    };
    if !rest.starts_with('/') {
        return Err(HttpError::bad(format!(
            "unsupported request target '{target}'"
        )));
    }
    let path = rest.split(['?', '#']).next().unwrap_or("/");
    Ok(path.to_string())
}

fn parse_length(value: &str) -> Result<usize, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::bad(format!("invalid Content-Length '{value}'")));
    }
    // More digits than fit is certainly more than the limit.
    Ok(value.parse::<usize>().unwrap_or(usize::MAX))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            content_type: "",
            body: Vec::new(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A Firecracker-style error: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: &str) -> Self {
        Response::json(status, &serde_json::json!({ "fault_message": message }))
    }

    /// Plain text (Prometheus metrics).
    pub fn text(body: String) -> Self {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: body.into_bytes(),
        }
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: utsuwa\r\n",
            self.status,
            reason(self.status)
        );
        // 1xx and 204 responses carry neither a body nor its length.
        if self.status != 204 && self.status >= 200 {
            if !self.content_type.is_empty() {
                out += &format!("Content-Type: {}\r\n", self.content_type);
            }
            out += &format!("Content-Length: {}\r\n", self.body.len());
        }
        if close {
            out += "Connection: close\r\n";
        }
        out += "\r\n";
        let mut bytes = out.into_bytes();
        if self.status != 204 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The interim response for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
