//! What a benchmark leaves behind if it is interrupted: child process
//! groups (each VMM leads its own, so the terminal's Ctrl-C does not reach
//! them) and network namespaces. `install` blocks SIGINT, SIGTERM and
//! SIGHUP in the calling thread, which must be the main thread before it
//! starts any other (threads inherit the mask; `Command` clears it in
//! children), and waits for them in a thread of its own that kills every
//! registered process group, deletes every registered namespace and exits.

use std::sync::Mutex;

static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

pub fn install() {
    let set = signals();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        eprintln!("utsuwa-bench: cannot block signals ({rc}): no clean-up on Ctrl-C");
        return;
    }
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` valid for writing.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        eprintln!("\nutsuwa-bench: signal {sig}: cleaning up");
        for pid in GROUPS.lock().map(|g| g.clone()).unwrap_or_default() {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is a child of ours that was not reaped yet.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
        for ns in NAMESPACES.lock().map(|n| n.clone()).unwrap_or_default() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns])
                .status();
        }
        std::process::exit(128 + sig);
    });
}

/// A child that leads its own process group, not yet reaped.
pub fn add_group(pid: u32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.push(pid);
    }
}

pub fn remove_group(pid: u32) {
    if let Ok(mut g) = GROUPS.lock() {
        g.retain(|&p| p != pid);
    }
}

/// A network namespace to delete on a signal (its owner deletes it otherwise).
pub fn add_namespace(name: &str) {
    if let Ok(mut n) = NAMESPACES.lock() {
        n.push(name.to_string());
    }
}

pub fn remove_namespace(name: &str) {
    if let Ok(mut n) = NAMESPACES.lock() {
        n.retain(|x| x != name);
    }
}
