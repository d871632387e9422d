//! The host end of the probe's `net` check, shared by the network tests
//! (through `net.rs`) and the `net` benchmark (`bench/src/net.rs`
//! includes this file): a network namespace (deleted on drop), TAP
//! devices inside it, AF_PACKET sockets opened inside it (`netns.rs`), the
//! probe's own frame format (guests/probe/README.md, "net frames") with its
//! pattern and FNV (`frame.rs`), and the peer that talks to the probe over
//! one TAP (`session.rs`). This file says whether the tests can run here.
//!
//! Nothing here touches the host's own interfaces: every device, address,
//! socket and process lives in the namespace. Self-contained (no `super`
//! beyond this folder), so that another crate can compile it in: whoever
//! includes it names this file with `#[path]`, and the files beside it are
//! found relative to it.

mod frame;
mod netns;
mod session;

pub use frame::*;
pub use netns::*;
pub use session::*;

use std::path::{Path, PathBuf};

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Why network tests cannot run here (None: they can): they need root,
/// `ip` (iproute2) and /dev/net/tun.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TAP devices need it)".into());
    }
    if which("ip").is_none() {
        return Some("`ip` (iproute2) not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing".into());
    }
    None
}
