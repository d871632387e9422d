//! The command lines of the API side: `utsuwa --api-sock PATH` (or
//! `utsuwa api --api-sock PATH`), which serves the API with no VM until
//! the client starts one, and `utsuwa ctl --api-sock PATH COMMAND`.

use std::path::PathBuf;

use super::client::CtlCommand;

/// Firecracker's instance ID when none is given.
pub const DEFAULT_ID: &str = "anonymous-instance";

/// `utsuwa api` (and `utsuwa run --config-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiArgs {
    /// None: no API (`--no-api`, with a config file).
    pub socket: Option<PathBuf>,
    pub id: String,
    pub config_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    /// Forward stdin to the guest even when it is not a terminal (as
    /// `utsuwa run` does); the API alone forwards only a terminal.
    pub forward_stdin: bool,
    /// `--no-seccomp`: no system call filters.
    pub no_seccomp: bool,
}

/// `utsuwa ctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlArgs {
    pub socket: PathBuf,
    pub command: CtlCommand,
}

fn split(arg: &str) -> (String, Option<String>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
        _ => (arg.to_string(), None),
    }
}

fn value(
    inline: Option<String>,
    args: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<String, String> {
    inline
        .or_else(|| args.next())
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// Parses the options of `utsuwa api` (all of them, `--api-sock` included).
pub fn parse_api(mut args: impl Iterator<Item = String>) -> Result<ApiArgs, String> {
    let mut out = ApiArgs {
        socket: None,
        id: DEFAULT_ID.to_string(),
        config_file: None,
        log_level: log::LevelFilter::Warn,
        forward_stdin: false,
        no_seccomp: false,
    };
    let mut no_api = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = split(&arg);
        match flag.as_str() {
            "--api-sock" => out.socket = Some(PathBuf::from(value(inline, &mut args, &flag)?)),
            "--id" => {
                let id = value(inline, &mut args, &flag)?;
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(format!(
                        "--id: '{id}' must be 1 to 64 letters, digits, '-' or '_'"
                    ));
                }
                out.id = id;
            }
            "--config-file" => {
                out.config_file = Some(PathBuf::from(value(inline, &mut args, &flag)?))
            }
            "--no-api" if inline.is_none() => no_api = true,
            "--no-seccomp" if inline.is_none() => out.no_seccomp = true,
            "--log-level" => {
                let v = value(inline, &mut args, &flag)?;
                out.log_level = crate::logger::parse_level(&v)
                    .ok_or_else(|| format!("--log-level: unknown level '{v}'"))?;
            }
            other => {
                return Err(format!(
                    "unknown option '{other}' for api (see utsuwa --help)"
                ))
            }
        }
    }
    if no_api {
        if out.config_file.is_none() {
            return Err("--no-api needs --config-file (nothing else could start the VM)".into());
        }
        out.socket = None;
        out.forward_stdin = true;
    } else if out.socket.is_none() {
        return Err("api needs --api-sock PATH (or --no-api with --config-file)".into());
    }
    Ok(out)
}

/// Parses the arguments of `utsuwa ctl`.
pub fn parse_ctl(mut args: impl Iterator<Item = String>) -> Result<CtlArgs, String> {
    let mut socket = None;
    let mut command = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = split(&arg);
        match flag.as_str() {
            "--api-sock" => socket = Some(PathBuf::from(value(inline, &mut args, &flag)?)),
            other if command.is_none() && !other.starts_with('-') => {
                command = Some(CtlCommand::parse(other).ok_or_else(|| {
                    format!("unknown ctl command '{other}' (info, pause, resume, ctrl-alt-del, config, metrics)")
                })?)
            }
            other => return Err(format!("unexpected argument '{other}' for ctl")),
        }
    }
    Ok(CtlArgs {
        socket: socket.ok_or("ctl needs --api-sock PATH")?,
        command: command
            .ok_or("ctl needs a command: info, pause, resume, ctrl-alt-del, config, metrics")?,
    })
}

/// Whether `utsuwa run ARGS` is the config-file form (handled here).
pub fn is_config_run(args: &[String]) -> bool {
    args.iter().any(|a| {
        ["--config-file", "--api-sock", "--no-api"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    })
}

/// Parses `utsuwa run --config-file FILE [--api-sock PATH | --no-api]`:
/// boots the file's VM at once; stdin goes to the guest as with `run`.
pub fn parse_run_config(args: Vec<String>) -> Result<ApiArgs, String> {
    let has_socket = args
        .iter()
        .any(|a| a == "--api-sock" || a.starts_with("--api-sock="));
    let mut out = parse_api(args.into_iter().chain(
        // Without --api-sock, run serves no API.
        (!has_socket).then(|| "--no-api".to_string()),
    ))
    .map_err(|e| e.replace("for api", "for run --config-file"))?;
    if out.config_file.is_none() {
        return Err("--api-sock and --no-api with run need --config-file (to configure the VM through the API, use utsuwa --api-sock PATH)".into());
    }
    out.forward_stdin = true;
    Ok(out)
}
