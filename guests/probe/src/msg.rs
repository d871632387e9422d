//! A small fixed-capacity text buffer (no allocator): failure reasons.

use core::fmt;

pub struct Msg {
    buf: [u8; 384],
    len: usize,
}

impl Msg {
    pub const fn new() -> Msg {
        Msg {
            buf: [0; 384],
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are appended (cut at a char boundary), so this is UTF-8.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `fail!("fmt", args..)`: a `Msg` for `Err(..)`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut m = $crate::msg::Msg::new();
        let _ = write!(m, $($arg)*);
        m
    }};
}
