//! The guest side: the `/init` script, the initramfs built around it, and the
//! console protocol between that script and the host.
//!
//! # Protocol
//!
//! * Kernel command line token `utsuwa.cmd=<base64>`: the command, a
//!   `sh -c` string, encoded with the standard base64 alphabet *with*
//!   padding (`A-Z a-z 0-9 + / =`). None of these characters is special to
//!   the kernel's parser (no spaces, no quotes), and a `.` in the name keeps
//!   the kernel from handing it to init as an environment variable; `/init`
//!   reads it from `/proc/cmdline`. Use [`encode_cmd`] to build the token.
//!   The x86 kernel command line holds 2048 bytes in all, so a command can
//!   be at most ~1.4 KiB.
//! * With a command, `/init` quiets kernel console messages, turns off the
//!   console's `\n` -> `\r\n` translation and prints
//!   `UTSUWA-CMD-BEGIN\n<output>\nUTSUWA-CMD-END rc=<N>\n`, where `<output>`
//!   is exactly what the command wrote to stdout and stderr (the newline
//!   before the end marker belongs to the marker), then powers off.
//!   [`parse_cmd_output`] takes it apart. `rc=125` means the token did not
//!   decode.
//! * Without one, `/init` hands PID 1 to busybox init, which runs the
//!   session (`/init console`: prints `UTSUWA-READY`, an interactive shell
//!   on the console with job control, power-off when it exits) and answers
//!   Ctrl-Alt-Del (`/init ctrlaltdel`) with a clean reboot; `poweroff` and
//!   `reboot` work with or without `-f`.
//!
//! Either way, failures to load a module are printed as
//! `utsuwa-init: insmod <name> failed (required|optional): <why>`.
//!
//! "Powers off" means `poweroff -f` when the kernel found ACPI S5 (it logs
//! `ACPI: PM: (supports ... S5)`), else `reboot -f`: without a power-off
//! method the kernel would just halt the vCPU, while a reboot reaches the
//! VMM as a reset (the i8042 pulse with `reboot=k`). `utsuwa.exit=poweroff`
//! or `utsuwa.exit=reboot` on the command line forces either.

use std::io::BufWriter;
use std::path::Path;

use super::cpio::CpioWriter;
use super::modules::Module;

/// The `/init` script.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Name of the kernel command-line parameter that carries the command.
pub const CMD_PARAM: &str = "utsuwa.cmd";
/// Printed when the interactive shell is about to start.
pub const READY_MARKER: &str = "UTSUWA-READY";
/// Printed on its own line right before the command's output.
pub const CMD_BEGIN_MARKER: &str = "UTSUWA-CMD-BEGIN";
/// Printed, preceded by a newline, after the command's output: `... rc=N`.
pub const CMD_END_MARKER: &str = "UTSUWA-CMD-END";

/// Changing what goes into the initramfs without changing [`INIT_SCRIPT`]?
/// Bump this so cached initramfs images get rebuilt.
const LAYOUT_VERSION: u32 = 1;

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The kernel command-line token that makes the guest run `cmd` (a shell
/// command line) and power off: `utsuwa.cmd=<base64(cmd)>`.
pub fn encode_cmd(cmd: &str) -> String {
    let mut out = format!("{CMD_PARAM}=");
    for chunk in cmd.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`encode_cmd`] (accepts the bare base64 too); `None` if
/// the text is not valid padded base64 of UTF-8.
pub fn decode_cmd(token: &str) -> Option<String> {
    let text = token
        .strip_prefix(CMD_PARAM)
        .and_then(|t| t.strip_prefix('='))
        .unwrap_or(token);
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for quad in text.as_bytes().chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || quad[..4 - pad].contains(&b'=') {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | B64.iter().position(|&x| x == c)? as u32;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    String::from_utf8(out).ok()
}

/// Finds the framed command output in what the guest wrote to its console:
/// `(output, rc)`, or `None` if the end marker has not been seen (yet).
pub fn parse_cmd_output(console: &[u8]) -> Option<(Vec<u8>, i32)> {
    let begin = format!("{CMD_BEGIN_MARKER}\n");
    let start = find(console, begin.as_bytes(), 0)? + begin.len();
    let end_marker = format!("\n{CMD_END_MARKER} rc=");
    let end = find(console, end_marker.as_bytes(), start)?;
    let rest = &console[end + end_marker.len()..];
    let digits = rest.iter().position(|b| !b.is_ascii_digit())?;
    let rc = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((console[start..end].to_vec(), rc))
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Identifies the initramfs recipe (script + layout), recorded in the stamp.
pub(crate) fn fingerprint() -> String {
    // FNV-1a: no need for anything stronger to notice an edit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in INIT_SCRIPT.bytes().chain(LAYOUT_VERSION.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Writes the initramfs (uncompressed newc cpio) to `out`.
pub(crate) fn write_initramfs(
    out: &Path,
    busybox: &[u8],
    modules: &[Module],
) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut w = CpioWriter::new(BufWriter::new(file));
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "mnt", "run", "var",
        "etc",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.dir("tmp", 0o1777)?;
    w.dir("root", 0o700)?;
    w.dir("etc/utsuwa", 0o755)?;
    w.dir("lib", 0o755)?;
    w.dir("lib/modules", 0o755)?;
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, busybox)?;
    // Enough to run /init; it installs every other applet link at boot.
    w.symlink("bin/sh", "busybox")?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    let mut list = String::new();
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data)?;
        let kind = if m.required { "required" } else { "optional" };
        list.push_str(&format!("{} {kind}\n", m.name));
    }
    w.file("etc/utsuwa/modules", 0o644, list.as_bytes())?;
    w.file("etc/hostname", 0o644, b"utsuwa\n")?;
    w.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    w.file("etc/group", 0o644, b"root:x:0:\n")?;
    w.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(encode_cmd(""), "utsuwa.cmd=");
        assert_eq!(encode_cmd("f"), "utsuwa.cmd=Zg==");
        assert_eq!(encode_cmd("fo"), "utsuwa.cmd=Zm8=");
        assert_eq!(encode_cmd("foo"), "utsuwa.cmd=Zm9v");
        assert_eq!(encode_cmd("echo hi"), "utsuwa.cmd=ZWNobyBoaQ==");
        assert_eq!(encode_cmd("\u{ff}\u{ff}"), "utsuwa.cmd=w7/Dvw==");
    }

    #[test]
    fn round_trip() {
        for cmd in [
            "",
            "uname -a",
            "echo \"quoted\" 'single' $HOME; ls /dev | wc -l",
            "printf 'a b\\n\\tc' > /tmp/x && cat /tmp/x",
            "echo ünïcödé ✓",
            "x=1\ny=2\necho $((x+y))",
        ] {
            let token = encode_cmd(cmd);
            let value = token.strip_prefix("utsuwa.cmd=").unwrap();
            assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
                "{token}"
            );
            assert_eq!(decode_cmd(&token).as_deref(), Some(cmd));
            assert_eq!(decode_cmd(value).as_deref(), Some(cmd));
        }
        assert_eq!(decode_cmd("utsuwa.cmd=Zm9"), None);
        assert_eq!(decode_cmd("Z=9v"), None);
        assert_eq!(decode_cmd("Zm9*"), None);
    }

    #[test]
    fn parses_framed_output() {
        let console = b"[    0.5] boot noise\r\nUTSUWA-CMD-BEGIN\nhello\nworld\n\nUTSUWA-CMD-END rc=3\n[ 1.0] reboot: Power down\r\n";
        assert_eq!(
            parse_cmd_output(console),
            Some((b"hello\nworld\n".to_vec(), 3))
        );
        let empty = b"UTSUWA-CMD-BEGIN\n\nUTSUWA-CMD-END rc=0\n";
        assert_eq!(parse_cmd_output(empty), Some((Vec::new(), 0)));
        assert_eq!(parse_cmd_output(b"UTSUWA-CMD-BEGIN\nstill running"), None);
        assert_eq!(
            parse_cmd_output(b"UTSUWA-CMD-BEGIN\nx\nUTSUWA-CMD-END rc="),
            None
        );
    }

    #[test]
    fn script_speaks_the_protocol() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        for needle in [
            CMD_PARAM,
            READY_MARKER,
            CMD_BEGIN_MARKER,
            CMD_END_MARKER,
            "utsuwa.exit=",
            "/etc/utsuwa/modules",
        ] {
            assert!(INIT_SCRIPT.contains(needle), "{needle}");
        }
    }

    #[test]
    fn initramfs_contents() {
        let path =
            std::env::temp_dir().join(format!("utsuwa-initramfs-test-{}", std::process::id()));
        let m = Module {
            name: "virtio".into(),
            required: true,
            deps: vec![],
            data: b"\x7fELF".to_vec(),
        };
        write_initramfs(&path, b"BB", &[m]).unwrap();
        let buf = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let entries = super::super::cpio::tests::parse(&buf);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(get("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("init").mode(), 0o100_755);
        assert_eq!(get("bin/busybox").data, b"BB");
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("dev/console").fields[9..11], [5, 1]);
        assert_eq!(get("lib/modules/virtio.ko").data, b"\x7fELF");
        assert_eq!(get("etc/utsuwa/modules").data, b"virtio required\n");
        // Every entry's parent comes before it.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                assert!(
                    entries[..i].iter().any(|p| p.name == parent),
                    "{} before its parent",
                    e.name
                );
            }
        }
    }
}
