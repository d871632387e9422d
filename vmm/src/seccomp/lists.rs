//! The allow-lists, one per [`ThreadKind`]. Found by reading each thread's
//! code and by running the test suite with the filters on (a missing call
//! names itself on stderr) and under `strace -f`.

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition, SeccompRule};

use super::ThreadKind;

// KVM ioctls (KVMIO = 0xAE), as _IO/_IOR/_IOW encode them.
const KVM_RUN: u64 = 0xAE80;
const KVM_GET_REGS: u64 = 0x8090_AE81; // _IOR(0x81, kvm_regs: 144 bytes)
const KVM_GET_CLOCK: u64 = 0x8030_AE7C; // _IOR(0x7c, kvm_clock_data: 48)
const KVM_SET_CLOCK: u64 = 0x4030_AE7B; // _IOW(0x7b, kvm_clock_data: 48)
const KVM_IRQFD: u64 = 0x4020_AE76; // _IOW(0x76, kvm_irqfd: 32)
const KVM_IOEVENTFD: u64 = 0x4040_AE79; // _IOW(0x79, kvm_ioeventfd: 64)
const KVM_SET_GSI_ROUTING: u64 = 0x4008_AE6A; // _IOW(0x6a, kvm_irq_routing: 8)

type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// What the block, net and rng workers need beyond the common list: the
/// spawner thread starts them, so its filter must let these through.
const WORKER_EXTRA: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
];

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// `ioctl(_, request)` for each request in `requests`.
fn ioctls(requests: &[u64]) -> Result<Vec<SeccompRule>, String> {
    requests
        .iter()
        .map(|&r| rule(vec![cond(1, Op::Eq, r)?]))
        .collect()
}

/// Calls every thread may make: signal return and restart (SIGSTOP and
/// SIGCONT), locks, the allocator, logging to stderr, thread exit, and the
/// SIGSYS handler's own tcsetattr on stdin.
fn common() -> Result<Rules, String> {
    let mut r: Rules = [
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_futex,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_madvise,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_write,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getrandom,
        libc::SYS_close,
    ]
    .into_iter()
    .map(|nr| (nr, vec![]))
    .collect();
    // Putting the terminal back: TCSETS on stdin from the SIGSYS handler;
    // glibc's tcsetattr (restore_terminal) also reads it back (TCGETS).
    r.push((
        libc::SYS_ioctl,
        [libc::TCSETS, libc::TCGETS]
            .into_iter()
            .map(|req| {
                rule(vec![
                    cond(0, Op::Eq, libc::STDIN_FILENO as u64)?,
                    cond(1, Op::Eq, req)?,
                ])
            })
            .collect::<Result<_, _>>()?,
    ));
    Ok(r)
}

fn plain(r: &mut Rules, nrs: &[i64]) {
    r.extend(nrs.iter().map(|&nr| (nr, vec![])));
}

/// Merges `extra` ioctl rules into the ioctl entry of `r`.
fn add_ioctls(r: &mut Rules, requests: &[u64]) -> Result<(), String> {
    let extra = ioctls(requests)?;
    match r.iter_mut().find(|(nr, _)| *nr == libc::SYS_ioctl) {
        Some((_, rules)) => rules.extend(extra),
        None => r.push((libc::SYS_ioctl, extra)),
    }
    Ok(())
}

/// The rules of `kind`, keyed by system call number.
pub fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut r = common()?;
    match kind {
        ThreadKind::Vcpu => {
            // KVM_RUN and what exits lead to; device activation by the
            // guest driver (MSI-X routes, irqfds, ioeventfd doorbells,
            // TAP offloads, the stop eventfd). Workers are started by the
            // spawner thread, not here: no clone, no seccomp, no io_uring.
            add_ioctls(
                &mut r,
                &[
                    KVM_RUN,
                    KVM_GET_REGS,
                    KVM_GET_CLOCK,
                    KVM_IRQFD,
                    KVM_IOEVENTFD,
                    KVM_SET_GSI_ROUTING,
                    libc::TUNSETOFFLOAD,
                ],
            )?;
            plain(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_eventfd2,
                    libc::SYS_clock_nanosleep,
                    libc::SYS_nanosleep,
                    libc::SYS_sched_getaffinity,
                ],
            );
        }
        ThreadKind::Spawner => {
            // Starts device workers: thread creation, and what a worker
            // does before its own filter is on and in its loop (seccomp
            // filters are inherited and all of them apply), which its own
            // filter then narrows.
            plain(&mut r, WORKER_EXTRA);
            plain(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_eventfd2,
                    libc::SYS_sched_getaffinity,
                    libc::SYS_rseq,
                    libc::SYS_set_robust_list,
                    libc::SYS_clone3, // answers ENOSYS: see `no_clone3`
                ],
            );
            r.push((
                libc::SYS_prctl,
                vec![
                    rule(vec![cond(0, Op::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?])?,
                    rule(vec![cond(0, Op::Eq, libc::PR_SET_NAME as u64)?])?,
                ],
            ));
            r.push((
                libc::SYS_seccomp,
                vec![rule(vec![cond(
                    0,
                    Op::Eq,
                    libc::SECCOMP_SET_MODE_FILTER as u64,
                )?])?],
            ));
            // pthread_create's clone: threads only, never a new process.
            let thread = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;
            r.push((
                libc::SYS_clone,
                vec![rule(vec![cond(0, Op::MaskedEq(thread), thread)?])?],
            ));
        }
        ThreadKind::Block => plain(
            &mut r,
            &[
                libc::SYS_read,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_create1,
                libc::SYS_epoll_ctl,
                libc::SYS_io_uring_enter,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_preadv2,
                libc::SYS_pwritev2,
                libc::SYS_fdatasync,
                libc::SYS_fsync,
                libc::SYS_fallocate,
            ],
        ),
        ThreadKind::Net => plain(
            &mut r,
            &[
                libc::SYS_read,
                libc::SYS_readv,
                libc::SYS_writev,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_create1,
                libc::SYS_epoll_ctl,
            ],
        ),
        ThreadKind::Rng => plain(
            &mut r,
            &[
                libc::SYS_read,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_create1,
                libc::SYS_epoll_ctl,
            ],
        ),
        ThreadKind::Vsock => {
            // Its own epoll set, the host streams (accept, read the
            // CONNECT line with MSG_PEEK, splice with readv/writev, the
            // OK line with send, shut down), connecting to PATH_<port>:
            // Unix sockets only.
            plain(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_writev,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_accept4,
                    libc::SYS_connect,
                    libc::SYS_shutdown,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_unlink,
                ],
            );
            r.push((
                libc::SYS_socket,
                vec![rule(vec![cond(0, Op::Eq, libc::AF_UNIX as u64)?])?],
            ));
            // FIONBIO: accepted streams are made non-blocking.
            add_ioctls(&mut r, &[libc::FIONBIO])?;
        }
        ThreadKind::Console => plain(
            &mut r,
            &[
                libc::SYS_read,
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_clock_nanosleep,
                libc::SYS_nanosleep,
            ],
        ),
        ThreadKind::Main | ThreadKind::Api => {
            // Wait for the exit event, kick the vCPUs out of KVM_RUN,
            // join every thread, stop the device workers, print.
            plain(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_tgkill,
                    libc::SYS_clock_nanosleep,
                    libc::SYS_nanosleep,
                ],
            );
            // Offloads put back on a user's TAP when the device goes, and
            // the interrupt and doorbell eventfds a device still has
            // registered with KVM taken back as it is shut down.
            add_ioctls(&mut r, &[libc::TUNSETOFFLOAD, KVM_IRQFD, KVM_IOEVENTFD])?;
            if kind == ThreadKind::Api {
                // Serve the listening Unix socket (bound before the VM
                // started: no new sockets), pause and resume (the guest
                // clock), a metrics file set after start, and remove the
                // socket file at the end.
                plain(
                    &mut r,
                    &[
                        libc::SYS_accept4,
                        libc::SYS_recvfrom,
                        libc::SYS_sendto,
                        libc::SYS_writev,
                        libc::SYS_shutdown,
                        libc::SYS_fcntl,
                        libc::SYS_openat,
                        libc::SYS_fstat,
                        libc::SYS_statx,
                        libc::SYS_unlink,
                    ],
                );
                // FIONBIO: accepted connections are made non-blocking.
                add_ioctls(&mut r, &[KVM_GET_CLOCK, KVM_SET_CLOCK, libc::FIONBIO])?;
            }
        }
    }
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rules) in r {
        map.entry(nr).or_default().extend(rules);
    }
    Ok(map)
}

macro_rules! names {
    ($($sys:ident),* $(,)?) => {
        const NAMES: &[(i64, &str)] = &[$((nr_of::$sys, stringify!($sys))),*];
    };
}

/// The name of system call `nr`, for the calls utsuwa allows somewhere
/// and the ones an attacker would try first.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, s)| *s)
}

#[allow(non_upper_case_globals)]
mod nr_of {
    pub use libc::{
        SYS_accept as accept, SYS_accept4 as accept4, SYS_bind as bind, SYS_brk as brk,
        SYS_clock_nanosleep as clock_nanosleep, SYS_clone as clone, SYS_clone3 as clone3,
        SYS_close as close, SYS_connect as connect, SYS_dup as dup, SYS_dup2 as dup2,
        SYS_dup3 as dup3, SYS_epoll_create1 as epoll_create1, SYS_epoll_ctl as epoll_ctl,
        SYS_epoll_pwait as epoll_pwait, SYS_epoll_wait as epoll_wait, SYS_eventfd2 as eventfd2,
        SYS_execve as execve, SYS_execveat as execveat, SYS_fallocate as fallocate,
        SYS_fcntl as fcntl, SYS_fdatasync as fdatasync, SYS_fork as fork, SYS_fstat as fstat,
        SYS_fsync as fsync, SYS_futex as futex, SYS_getdents64 as getdents64,
        SYS_getrandom as getrandom, SYS_io_uring_enter as io_uring_enter,
        SYS_io_uring_setup as io_uring_setup, SYS_ioctl as ioctl, SYS_kill as kill,
        SYS_listen as listen, SYS_lseek as lseek, SYS_madvise as madvise, SYS_mmap as mmap,
        SYS_mount as mount, SYS_mprotect as mprotect, SYS_mremap as mremap, SYS_munmap as munmap,
        SYS_nanosleep as nanosleep, SYS_newfstatat as newfstatat, SYS_open as open,
        SYS_openat as openat, SYS_pipe2 as pipe2, SYS_poll as poll, SYS_ppoll as ppoll,
        SYS_prctl as prctl, SYS_pread64 as pread64, SYS_preadv as preadv, SYS_ptrace as ptrace,
        SYS_pwrite64 as pwrite64, SYS_pwritev as pwritev, SYS_read as read, SYS_readv as readv,
        SYS_recvfrom as recvfrom, SYS_recvmsg as recvmsg, SYS_rseq as rseq,
        SYS_rt_sigaction as rt_sigaction, SYS_rt_sigprocmask as rt_sigprocmask,
        SYS_sched_getaffinity as sched_getaffinity, SYS_sendmsg as sendmsg, SYS_sendto as sendto,
        SYS_set_robust_list as set_robust_list, SYS_setns as setns, SYS_sigaltstack as sigaltstack,
        SYS_socket as socket, SYS_stat as stat, SYS_statx as statx, SYS_tgkill as tgkill,
        SYS_unlink as unlink, SYS_unlinkat as unlinkat, SYS_unshare as unshare, SYS_vfork as vfork,
        SYS_wait4 as wait4, SYS_write as write, SYS_writev as writev,
    };
}

names!(
    read,
    write,
    close,
    fstat,
    stat,
    lseek,
    mmap,
    mprotect,
    munmap,
    brk,
    rt_sigaction,
    rt_sigprocmask,
    ioctl,
    pread64,
    pwrite64,
    readv,
    writev,
    preadv,
    pwritev,
    dup,
    dup2,
    dup3,
    nanosleep,
    clock_nanosleep,
    socket,
    connect,
    accept,
    accept4,
    sendto,
    recvfrom,
    sendmsg,
    recvmsg,
    bind,
    listen,
    clone,
    clone3,
    fork,
    vfork,
    execve,
    execveat,
    wait4,
    kill,
    tgkill,
    fcntl,
    fsync,
    fdatasync,
    fallocate,
    unlink,
    unlinkat,
    open,
    openat,
    poll,
    ppoll,
    madvise,
    mremap,
    futex,
    epoll_create1,
    epoll_ctl,
    epoll_wait,
    epoll_pwait,
    eventfd2,
    pipe2,
    prctl,
    ptrace,
    getrandom,
    io_uring_setup,
    io_uring_enter,
    sched_getaffinity,
    set_robust_list,
    rseq,
    sigaltstack,
    statx,
    newfstatat,
    getdents64,
    mount,
    setns,
    unshare,
);
