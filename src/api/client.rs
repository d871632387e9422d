//! A minimal blocking HTTP/1.1 client over a Unix socket: one request per
//! connection, a `Content-Length` (or read-to-close) response. `utsuwa ctl`
//! uses it, and so do the tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Errors talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the API: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response from the API: {0}")]
    Malformed(String),
}

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON (Null if it is empty or not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends one request and reads the response.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() || method != "GET" {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    stream.write_all(req.as_bytes())?;
    read_reply(&mut stream)
}

/// Reads one response from `stream`.
pub fn read_reply(stream: &mut impl Read) -> Result<Reply, ClientError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ClientError::Malformed(
                "connection closed before the headers ended".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            ClientError::Malformed(format!(
                "status line '{}'",
                head.lines().next().unwrap_or("")
            ))
        })?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf.split_off(head_end);
    match length {
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(ClientError::Malformed("connection closed mid-body".into()));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if status == 204 || status < 200 => body.clear(),
        None => {
            stream.read_to_end(&mut body)?;
        }
    }
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// What `utsuwa ctl` can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlCommand {
    Info,
    Pause,
    Resume,
    CtrlAltDel,
    Config,
    Metrics,
}

impl CtlCommand {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "info" => CtlCommand::Info,
            "pause" => CtlCommand::Pause,
            "resume" => CtlCommand::Resume,
            "ctrl-alt-del" => CtlCommand::CtrlAltDel,
            "config" => CtlCommand::Config,
            "metrics" => CtlCommand::Metrics,
            _ => return None,
        })
    }

    /// The request it makes: method, path, body.
    pub fn request(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            CtlCommand::Info => ("GET", "/", None),
            CtlCommand::Pause => ("PATCH", "/vm", Some(r#"{"state":"Paused"}"#)),
            CtlCommand::Resume => ("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#)),
            CtlCommand::CtrlAltDel => (
                "PUT",
                "/actions",
                Some(r#"{"action_type":"SendCtrlAltDel"}"#),
            ),
            CtlCommand::Config => ("GET", "/vm/config", None),
            CtlCommand::Metrics => ("GET", "/metrics", None),
        }
    }
}

/// Runs a `ctl` command: the text to print on success, or the error.
pub fn ctl(socket: &Path, command: CtlCommand) -> Result<String, String> {
    let (method, path, body) = command.request();
    let reply = request(socket, method, path, body).map_err(|e| e.to_string())?;
    if reply.status >= 400 {
        let msg = reply.json()["fault_message"]
            .as_str()
            .map_or_else(|| reply.body.clone(), str::to_string);
        return Err(format!("{method} {path}: {} {msg}", reply.status));
    }
    Ok(match command {
        CtlCommand::Metrics => reply.body,
        _ if reply.body.is_empty() => serde_json::json!({ "status": reply.status }).to_string(),
        _ => serde_json::to_string_pretty(&reply.json()).unwrap_or(reply.body),
    })
}
