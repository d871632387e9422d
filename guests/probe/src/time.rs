//! Time: the TSC, calibrated against the PIT (channel 2, gated through port
//! 0x61) or, without a PIT, against the CMOS RTC's once-a-second update.

use crate::hw::{inb, outb, rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1_000_000);

const PIT_HZ: u64 = 1_193_182;

pub struct Calibration {
    pub tsc_khz: u64,
    pub source: &'static str,
}

pub fn calibrate() -> Calibration {
    let (khz, source) = match pit_calibrate() {
        Some(khz) => (khz, "pit"),
        None => match rtc_calibrate() {
            Some(khz) => (khz, "rtc"),
            None => (2_000_000, "none"),
        },
    };
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    Calibration {
        tsc_khz: khz,
        source,
    }
}

fn pit_read_ch2() -> u16 {
    outb(0x43, 0x80); // latch channel 2
    let lo = inb(0x42);
    let hi = inb(0x42);
    u16::from_le_bytes([lo, hi])
}

/// TSC kHz over 10 ms of PIT channel 2 (mode 0, counting down from 0xffff).
fn pit_calibrate() -> Option<u64> {
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01); // gate high, speaker off
    outb(0x43, 0xb0); // channel 2, lo/hi byte, mode 0, binary
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    let result = (|| {
        // Wait for the count to start moving.
        let first = pit_read_ch2();
        let mut start = None;
        for _ in 0..20_000 {
            let c = pit_read_ch2();
            if c != first {
                start = Some((c, rdtsc()));
                break;
            }
        }
        let (c0, t0) = start?;
        const TICKS: u16 = 11_932; // 10 ms
        for _ in 0..2_000_000 {
            outb(0x43, 0x80);
            let t = rdtsc();
            let c = u16::from_le_bytes([inb(0x42), inb(0x42)]);
            let elapsed = c0.wrapping_sub(c);
            if (TICKS..0x8000).contains(&elapsed) {
                let cycles = t - t0;
                return Some(cycles * PIT_HZ / u64::from(elapsed) / 1000);
            }
        }
        None
    })();
    outb(0x61, port61);
    result
}

fn rtc_uip() -> bool {
    outb(0x70, 0x0a);
    inb(0x71) & 0x80 != 0
}

/// Wait for the end of an RTC update (UIP falling edge); the TSC then.
fn rtc_update_edge() -> Option<u64> {
    let mut was = rtc_uip();
    for _ in 0..50_000_000u64 {
        let now = rtc_uip();
        if was && !now {
            return Some(rdtsc());
        }
        was = now;
    }
    None
}

/// TSC kHz over one RTC second (takes one to two seconds).
fn rtc_calibrate() -> Option<u64> {
    let t0 = rtc_update_edge()?;
    let t1 = rtc_update_edge()?;
    let khz = (t1 - t0) / 1000;
    (khz > 1000).then_some(khz)
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Microseconds since an arbitrary origin.
pub fn now_us() -> u64 {
    (rdtsc() as u128 * 1000 / u128::from(tsc_khz())) as u64
}

pub struct Deadline(u64);

impl Deadline {
    pub fn after_us(us: u64) -> Deadline {
        Deadline(rdtsc().saturating_add(us.saturating_mul(tsc_khz()) / 1000))
    }

    pub fn after_ms(ms: u64) -> Deadline {
        Deadline::after_us(ms.saturating_mul(1000))
    }

    pub fn expired(&self) -> bool {
        rdtsc() >= self.0
    }
}

pub fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.expired() {
        crate::hw::pause();
    }
}

/// Poll `done` until it is true or `ms` pass; true if it became true.
pub fn wait_ms(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let d = Deadline::after_ms(ms);
    loop {
        if done() {
            return true;
        }
        if d.expired() {
            return done();
        }
        crate::hw::pause();
    }
}
