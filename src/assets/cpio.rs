//! A writer for the "newc" cpio format (the one the kernel unpacks as an
//! initramfs): every entry is a 110-byte ASCII header (`070701` followed by
//! thirteen 8-digit hex fields), the NUL-terminated name padded to 4 bytes,
//! then the data padded to 4 bytes; the archive ends with `TRAILER!!!`.
//!
//! Entries get distinct inode numbers, owner root and mtime 0, so the same
//! inputs always give the same bytes. Parents must be added before children.

use std::io::{self, Write};

/// Magic of the newc format (no checksums).
pub(crate) const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that closes the archive.
pub(crate) const TRAILER: &str = "TRAILER!!!";
/// Size of a header: magic + 13 fields of 8 hex digits.
pub(crate) const HEADER_LEN: usize = 6 + 13 * 8;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Streams a newc archive into `W`.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

/// The fields of one header that vary between our entries.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory (`path` without a leading `/`, e.g. `"dev"`).
    pub(crate) fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(Entry {
            name: path,
            mode: S_IFDIR | perm,
            nlink: 2,
            rdev: (0, 0),
            data: &[],
        })
    }

    /// A regular file with the given contents.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(Entry {
            name: path,
            mode: S_IFREG | perm,
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// A symbolic link; the data of the entry is the link target.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let data = target.as_bytes();
        self.entry(Entry {
            name: path,
            mode: S_IFLNK | 0o777,
            nlink: 1,
            rdev: (0, 0),
            data,
        })
    }

    /// A character device node.
    pub(crate) fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(Entry {
            name: path,
            mode: S_IFCHR | perm,
            nlink: 1,
            rdev: (major, minor),
            data: &[],
        })
    }

    /// Writes the trailer and hands back the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0; // the trailer carries inode 0
        self.entry(Entry {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
            data: &[],
        })?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, e: Entry<'_>) -> io::Result<()> {
        if e.name.is_empty() || e.name.starts_with('/') || e.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio name {:?}", e.name),
            ));
        }
        let size = u32::try_from(e.data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is too large for cpio", e.name),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = e.name.len() as u32 + 1;
        let fields: [u32; 13] = [
            ino, e.mode, 0, 0, e.nlink, 0, size, 0, 0, e.rdev.0, e.rdev.1, namesize, 0,
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + e.name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(e.name.as_bytes());
        header.push(0);
        self.put(&header)?;
        self.pad()?;
        self.put(e.data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry read back from an archive.
    #[derive(Debug)]
    pub(crate) struct Parsed {
        pub name: String,
        pub fields: [u32; 13],
        pub data: Vec<u8>,
    }

    impl Parsed {
        pub fn mode(&self) -> u32 {
            self.fields[1]
        }
    }

    /// A strict reader: checks magic, hex fields, alignment and the trailer.
    pub(crate) fn parse(buf: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header not 4-byte aligned");
            assert_eq!(&buf[pos..pos + 6], MAGIC, "bad magic at {pos}");
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let hex = std::str::from_utf8(&buf[pos + 6 + i * 8..pos + 14 + i * 8]).unwrap();
                assert!(
                    hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "field {i} not hex: {hex}"
                );
                *f = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = fields[11] as usize;
            let name_start = pos + HEADER_LEN;
            let name = &buf[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).next_multiple_of(4);
            assert!(buf[name_start + namesize..data_start]
                .iter()
                .all(|&b| b == 0));
            let size = fields[6] as usize;
            let data = buf[data_start..data_start + size].to_vec();
            pos = (data_start + size).next_multiple_of(4);
            assert!(buf[data_start + size..pos].iter().all(|&b| b == 0));
            let done = name == TRAILER;
            out.push(Parsed { name, fields, data });
            if done {
                assert_eq!(pos, buf.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    #[test]
    fn round_trip() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.file("abc", 0o644, b"abc").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(buf.len() % 4, 0);

        let e = parse(&buf);
        let names: Vec<_> = e.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "empty",
                "abc",
                "bin/sh",
                TRAILER
            ]
        );

        assert_eq!(e[0].mode(), 0o040_755);
        assert_eq!(e[0].fields[4], 2);
        assert_eq!(e[1].mode(), 0o020_600);
        assert_eq!((e[1].fields[9], e[1].fields[10]), (5, 1));
        assert_eq!(e[2].mode(), 0o100_755);
        assert_eq!(e[2].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[3].fields[6], 0);
        assert_eq!(e[4].data, b"abc");
        assert_eq!(e[5].mode(), 0o120_777);
        assert_eq!(e[5].data, b"busybox");
        // Inodes are distinct and non-zero; the trailer is all zero but nlink.
        let mut inos: Vec<_> = e[..6].iter().map(|p| p.fields[0]).collect();
        inos.dedup();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6]);
        assert_eq!(e[6].fields, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]);
    }

    #[test]
    fn header_layout_is_exact() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"xy").unwrap();
        let buf = w.finish().unwrap();
        let expect = concat!(
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
            "a\0", // 110 + 2 = 112: already aligned
            "xy\0\0",
        );
        assert_eq!(&buf[..expect.len()], expect.as_bytes());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/abs", 0o644, b"").is_err());
        assert!(w.file("", 0o644, b"").is_err());
    }
}
