//! The `net` check: a virtio-net driver (`net/dev.rs`) and, per NIC, a
//! small endpoint (`net/session.rs`) that answers ARP and ICMP echo for the
//! address the plan gives it, exchanges the probe's own frames with a host
//! helper (`net/frame.rs`), benchmarks the link and pings a peer. All NICs
//! are served at once, from one loop, until every NIC met its goals or
//! `probe.net_serve_ms` ran out. Plan keys and output: README, "net".

mod dev;
mod frame;
mod session;

use crate::eth::{Ip, Mac};
use crate::msg::Msg;
use crate::plan::{NetPlan, Plan, MAX_NICS};
use crate::time::{self, Deadline};
use crate::virtio::bus::Devices;
use crate::virtio::DevFn;
use core::fmt::Write as _;
use session::{Phase, Session};

/// The virtio PCI device ID of a network card (0x1040 + type 1).
pub const NET_DEVICE_ID: u16 = 0x1041;

fn has_goals(np: &NetPlan) -> bool {
    np.pings > 0
        || np.tx_frames > 0
        || np.rx_frames > 0
        || np.bench > 0
        || np.tso > 0
        || (np.peer.iter().any(Option::is_some) && np.bench_pings > 0)
}

/// A zeroed `bytes`-long buffer from the DMA arena, for one session's own use.
fn buffer(arena: &mut crate::dma::Arena, bytes: u64) -> Option<&'static mut [u8]> {
    let addr = arena.alloc(bytes, 64)?;
    // SAFETY: fresh arena memory (identity-mapped RAM, handed out once and
    // never to a device), so this is the only reference to it.
    Some(unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, bytes as usize) })
}

/// The `net` check: `net` (discovery and initialisation), then `net-serve`
/// and, when planned, `net-tx`, `net-rx`, `net-tso`, `net-bench`.
pub fn check(devices: &mut Devices, plan: &Plan, report: &mut dyn FnMut(&str, Result<(), Msg>)) {
    let np = &plan.net;
    let serve_ms = np.serve_ms.unwrap_or(if !has_goals(np) {
        0
    } else if np.bench > 0 {
        70_000
    } else {
        10_000
    });
    outln!(
        "PROBE net plan irq={} offload={} mrg={} rx_buf={} pings={} tx_frames={} rx_frames={} bench={} bench_frames={} serve_ms={serve_ms}",
        if np.msix { "msix" } else { "poll" },
        u8::from(np.offload),
        u8::from(np.mrg),
        np.rx_buf,
        np.pings,
        np.tx_frames,
        np.rx_frames,
        np.bench,
        np.bench_frames
    );
    let bus = match devices.bus() {
        Ok(b) => b,
        Err(e) => return report("net", Err(e)),
    };
    let mut why = Msg::new();
    let mut fns = [(0usize, DevFn(0)); MAX_NICS];
    let mut found = 0;
    for (i, f) in bus.find(NET_DEVICE_ID) {
        if found < MAX_NICS {
            fns[found] = (i, f);
        } else {
            let _ = write!(why, "{f}: more than {MAX_NICS} NICs, not driven; ");
        }
        found += 1;
    }
    match np.nics {
        Some(n) if n != found as u64 => {
            let _ = write!(why, "{found} virtio-net functions, expected {n}; ");
        }
        None if found == 0 => {
            let _ = write!(
                why,
                "no virtio-net function (vendor 1af4 device 1041) on bus 0; "
            );
        }
        _ => {}
    }
    let mut sessions: [Option<Session>; MAX_NICS] = core::array::from_fn(|_| None);
    for (index, &(i, devfn)) in fns[..found.min(MAX_NICS)].iter().enumerate() {
        if np.nic.is_some_and(|n| n != index as u64) {
            continue;
        }
        if let Some(e) = bus.bar_error(i) {
            let _ = write!(why, "{devfn}: {e}");
        }
        let nic = match bus
            .transport(i)
            .and_then(|t| dev::Nic::init(t, devfn, index, np, bus))
        {
            Ok(n) => n,
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}; ");
                continue;
            }
        };
        let (Some(scratch), Some(template)) = (
            buffer(&mut bus.arena, dev::MAX_FRAME as u64),
            buffer(&mut bus.arena, 16384),
        ) else {
            let _ = write!(why, "{devfn}: out of DMA memory for frame buffers; ");
            continue;
        };
        let link = match nic.link_up() {
            Some(true) | None => "up",
            Some(false) => "down",
        };
        let (rxq, txq) = nic.qsizes();
        outln!(
            "PROBE net dev={devfn} mac={} link={link} features={:#x} offered={:#x} nic={index} mac_source={} status={} mtu={} ip={} peer={} irq={} rx_qsize={rxq} tx_qsize={txq} rx_buf={} msix_entries={} vectors={}",
            Mac(nic.mac),
            nic.features,
            nic.offered,
            if nic.mac_from_device { "device" } else { "probe" },
            if nic.link_up().is_some() { "yes" } else { "no" },
            nic.mtu,
            Ip(np.ip[index]),
            Ip(np.peer[index]),
            nic.irqs.mode(),
            nic.rx_buf,
            nic.t.msix_entries,
            nic.irqs.entries
        );
        if link == "down" {
            let _ = write!(why, "{devfn}: link down; ");
        }
        sessions[index] = Some(Session::new(nic, index, np, scratch, template));
    }
    let ready = sessions.iter().flatten().count();
    outln!("PROBE net nics={found} ready={ready}");
    if ready == 0 && why.is_empty() {
        let _ = write!(why, "no NIC to drive; ");
    }
    report("net", if why.is_empty() { Ok(()) } else { Err(why) });
    if ready == 0 {
        return;
    }

    // Serve every NIC until all met their goals (or, with none, until the time is up).
    let goals = has_goals(np);
    let deadline = Deadline::after_ms(serve_ms);
    let t0 = time::now_us();
    let mut rounds = 0u64;
    loop {
        let irqs: u32 = sessions
            .iter()
            .flatten()
            .fold(0, |a, s| a.wrapping_add(s.nic.irqs.sum()));
        let mut busy = false;
        for s in sessions.iter_mut().flatten() {
            busy |= s.poll(np);
        }
        rounds += 1;
        let all_done = sessions.iter().flatten().all(|s| s.phase == Phase::Done);
        if (goals && all_done) || deadline.expired() {
            break;
        }
        if !busy && np.msix {
            // Wait for an interrupt; a millisecond at most, for the timers.
            let d = Deadline::after_us(1000);
            while sessions
                .iter()
                .flatten()
                .fold(0u32, |a, s| a.wrapping_add(s.nic.irqs.sum()))
                == irqs
                && !d.expired()
            {
                crate::hw::pause();
            }
        }
    }
    // Let the device take the last frames (DONE among them) before reporting.
    time::wait_ms(500, || {
        sessions.iter_mut().flatten().all(|s| {
            s.nic.reap_tx();
            s.nic.tx_in_flight() == 0
        })
    });
    let served_us = time::now_us() - t0;
    outln!(
        "PROBE net session us={served_us} rounds={rounds} goals={} ended={}",
        u8::from(goals),
        if goals && sessions.iter().flatten().all(|s| s.phase == Phase::Done) {
            "goals"
        } else {
            "time"
        }
    );

    let mut verdicts = [Msg::new(), Msg::new(), Msg::new(), Msg::new(), Msg::new()];
    for s in sessions.iter_mut().flatten() {
        report_session(s, np, served_us, &mut verdicts);
        // Leave the device quiet for whatever runs next.
        let _ = s.nic.t.reset();
    }
    let names = ["net-serve", "net-tx", "net-rx", "net-tso", "net-bench"];
    let wanted = [
        true,
        np.tx_frames > 0,
        np.rx_frames > 0,
        np.tso > 0,
        np.bench > 0 || sessions.iter().flatten().any(|s| s.pings_wanted(np)),
    ];
    for ((name, want), v) in names.iter().zip(wanted).zip(verdicts) {
        if want {
            report(name, if v.is_empty() { Ok(()) } else { Err(v) });
        }
    }
}

/// Print one NIC's results; append its failures to the verdicts
/// (serve, tx, rx, tso, bench).
fn report_session(s: &mut Session, np: &NetPlan, served_us: u64, v: &mut [Msg; 5]) {
    let d = s.nic.devfn;
    let c = &s.nic.c;
    let irqs = s.nic.irqs.sum().wrapping_sub(s.irq0);
    let used = c.rx_used + c.tx_used;
    let ms = s.t_done.map_or(served_us, |t| t - s.t0) / 1000;
    outln!(
        "PROBE net-serve dev={d} ip={} pings={} arp_requests={} arp_replies={} icmp_bad_csum={} ip_bad_csum={} malformed={} rx_other={} reply_drops={} phase={:?} ms={ms}",
        Ip(s.ip),
        s.pings,
        s.arp_requests,
        s.arp_replies,
        s.icmp_bad_csum,
        s.ip_bad_csum,
        s.malformed,
        s.rx_other,
        s.reply_drops,
        s.phase
    );
    outln!(
        "PROBE net-stats dev={d} rx_frames={} rx_bytes={} rx_used={} rx_merged={} rx_partial_csum={} rx_data_valid={} rx_too_big={} rx_numbuf_odd={} tx_frames={} tx_bytes={} tx_used={} tx_csum_offload={} irq={} irqs={irqs}",
        c.rx_frames,
        c.rx_bytes,
        c.rx_used,
        c.rx_merged,
        c.rx_partial_csum,
        c.rx_data_valid,
        c.rx_too_big,
        c.rx_numbuf_odd,
        c.tx_frames,
        c.tx_bytes,
        c.tx_used,
        c.tx_csum_offload,
        s.nic.irqs.mode()
    );
    let mut w = Msg::new();
    if let Some(f) = &s.nic.fault {
        let _ = write!(w, "{f}; ");
    }
    if s.nic.needs_reset() {
        let _ = write!(
            w,
            "device status {:#x} (DEVICE_NEEDS_RESET); ",
            s.nic.t.status()
        );
    }
    if s.nic.irqs.msix && used > 0 && irqs == 0 {
        let _ = write!(w, "{used} used buffers but no MSI-X interrupt counted; ");
    }
    if !s.nic.irqs.msix && irqs != 0 {
        let _ = write!(
            w,
            "{irqs} interrupts while polling (MSI-X off, NO_VECTOR); "
        );
    }
    if c.rx_too_big != 0 {
        let _ = write!(
            w,
            "{} frames longer than {} bytes; ",
            c.rx_too_big,
            dev::MAX_FRAME
        );
    }
    if s.ip.is_some() && s.pings < np.pings {
        let _ = write!(w, "answered {} pings, expected {}; ", s.pings, np.pings);
    }
    if s.ip_bad_csum + s.icmp_bad_csum != 0 {
        let _ = write!(
            w,
            "{} IPv4 and {} ICMP checksums bad; ",
            s.ip_bad_csum, s.icmp_bad_csum
        );
    }
    if !w.is_empty() {
        let _ = write!(v[0], "{d}: {w}");
    }
    if np.tx_frames > 0 {
        outln!(
            "PROBE net-tx dev={d} frames={} bytes={} fnv64={:016x} min_len=60 max_len={} in_flight={}",
            s.tx_sent,
            s.tx_payload,
            s.tx_fnv.0,
            14 + usize::from(s.nic.mtu),
            s.nic.tx_in_flight()
        );
        if s.tx_sent != np.tx_frames || s.nic.tx_in_flight() != 0 {
            let _ = write!(
                v[1],
                "{d}: {} of {} frames sent, {} not returned by the device; ",
                s.tx_sent,
                np.tx_frames,
                s.nic.tx_in_flight()
            );
        }
    }
    if np.rx_frames > 0 {
        let (bad_seq, bad_why) = s
            .rx_first_bad
            .map_or((-1i64, "none"), |(q, w)| (i64::from(q), w));
        outln!(
            "PROBE net-rx dev={d} frames={} ok={} bad={} bytes={} fnv64={:016x} first_bad_seq={bad_seq} first_bad={bad_why} out_of_order={} expected={}",
            s.rx_ok + s.rx_bad,
            s.rx_ok,
            s.rx_bad,
            s.rx_payload,
            s.rx_fnv.0,
            s.rx_out_of_order,
            np.rx_frames
        );
        if s.rx_ok != np.rx_frames || s.rx_bad != 0 || s.rx_out_of_order != 0 {
            let _ = write!(
                v[2],
                "{d}: {} intact of {} expected, {} bad (first seq {bad_seq}: {bad_why}), {} out of order; ",
                s.rx_ok, np.rx_frames, s.rx_bad, s.rx_out_of_order
            );
        }
    }
    if np.tso > 0 {
        outln!(
            "PROBE net-tso dev={d} payload={} mss={} sent={}",
            np.tso,
            s.tso_mss,
            u8::from(s.tso_sent && s.tso_mss != 0)
        );
        if s.tso_mss == 0 {
            let _ = write!(v[3], "{d}: GSO frame not sent; ");
        }
    }
    if np.bench > 0 || s.pings_wanted(np) {
        let rate = |frames: u64, us: Option<u64>| match us {
            Some(us) => (frames * 1_000_000 / us, frames * s.bench_len as u64 / us),
            None => (0, 0),
        };
        let (g_fps, g_mbps) = rate(s.g2h_acked, s.g2h_us);
        let (h_fps, h_mbps) = rate(s.bench_in_count(), s.h2g_us);
        outln!(
            "PROBE net-bench dev={d} frame={} g2h_frames={} g2h_host_count={} g2h_us={} g2h_fps={g_fps} g2h_mbps={g_mbps} h2g_frames={} h2g_bad={} h2g_us={} h2g_fps={h_fps} h2g_mbps={h_mbps} window={} pings={} lost={} rtt_min_us={} rtt_avg_us={} rtt_max_us={}",
            if np.bench > 0 { s.bench_len } else { 0 },
            s.g2h_acked,
            s.g2h_host_count,
            s.g2h_us.unwrap_or(0),
            s.bench_in_count(),
            s.h2g_bad,
            s.h2g_us.unwrap_or(0),
            np.window,
            s.rtt_n,
            s.rtt_lost,
            if s.rtt_n > 0 { s.rtt_min } else { 0 },
            s.rtt_sum.checked_div(s.rtt_n).unwrap_or(0),
            s.rtt_max
        );
        let mut w = Msg::new();
        if np.bench > 0 && (s.g2h_us.is_none() || s.h2g_us.is_none()) {
            let _ = write!(w, "benchmark incomplete (phase {:?}); ", s.phase);
        }
        if s.h2g_bad != 0 {
            let _ = write!(w, "{} benchmark frames damaged; ", s.h2g_bad);
        }
        if s.pings_wanted(np) && (s.rtt_n != np.bench_pings) {
            let _ = write!(
                w,
                "{} of {} pings to the peer answered; ",
                s.rtt_n, np.bench_pings
            );
        }
        if !w.is_empty() || !s.errors.is_empty() {
            let _ = write!(v[4], "{d}: {}{w}", s.errors);
        }
    }
}
