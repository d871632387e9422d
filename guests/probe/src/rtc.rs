//! The `rtc` check: the CMOS real-time clock as a Unix time.

use crate::hw::{inb, outb};
use crate::msg::Msg;
use crate::plan::Plan;
use crate::time;

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

fn update_in_progress() -> bool {
    cmos(0x0a) & 0x80 != 0
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Raw {
    sec: u8,
    min: u8,
    hour: u8,
    day: u8,
    mon: u8,
    year: u8,
    century: u8,
}

fn read_raw(century_reg: u8) -> Raw {
    Raw {
        sec: cmos(0x00),
        min: cmos(0x02),
        hour: cmos(0x04),
        day: cmos(0x07),
        mon: cmos(0x08),
        year: cmos(0x09),
        century: if century_reg != 0 {
            cmos(century_reg)
        } else {
            0
        },
    }
}

fn bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn check(plan: &Plan, century_reg: u8) -> Result<(), Msg> {
    // Two identical reads outside an update.
    let mut raw = None;
    for _ in 0..10 {
        time::wait_ms(20, || !update_in_progress());
        let a = read_raw(century_reg);
        time::wait_ms(20, || !update_in_progress());
        let b = read_raw(century_reg);
        if a == b {
            raw = Some(a);
            break;
        }
    }
    let raw = raw.ok_or_else(|| fail!("RTC never read the same twice"))?;
    let reg_b = cmos(0x0b);
    let binary = reg_b & 0x04 != 0;
    let h24 = reg_b & 0x02 != 0;
    let conv = |v: u8| if binary { v } else { bcd(v) };
    let pm = raw.hour & 0x80 != 0;
    let mut hour = conv(raw.hour & 0x7f);
    if !h24 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let (sec, min, day, mon, yy) = (
        conv(raw.sec),
        conv(raw.min),
        conv(raw.day),
        conv(raw.mon),
        conv(raw.year),
    );
    let century = if century_reg != 0 && conv(raw.century) >= 19 {
        i64::from(conv(raw.century))
    } else if yy < 70 {
        20
    } else {
        19
    };
    let year = century * 100 + i64::from(yy);
    let valid =
        sec < 60 && min < 60 && hour < 24 && (1..=31).contains(&day) && (1..=12).contains(&mon);
    let unix = days_from_civil(year, i64::from(mon), i64::from(day)) * 86_400
        + i64::from(hour) * 3600
        + i64::from(min) * 60
        + i64::from(sec);
    outln!(
        "PROBE rtc unix={} time={:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z binary={} 24h={} century_reg={:#x}",
        unix,
        year,
        mon,
        day,
        hour,
        min,
        sec,
        u8::from(binary),
        u8::from(h24),
        century_reg
    );
    if !valid {
        return Err(fail!(
            "invalid date/time fields {raw_fmt}",
            raw_fmt = RawFmt(raw)
        ));
    }
    if let Some(want) = plan.rtc {
        let diff = unix - want as i64;
        if diff.abs() > 60 {
            return Err(fail!("rtc unix={unix} expected {want} (off by {diff} s)"));
        }
    }
    Ok(())
}

struct RawFmt(Raw);

impl core::fmt::Display for RawFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let r = self.0;
        write!(
            f,
            "sec={:#x} min={:#x} hour={:#x} day={:#x} mon={:#x} year={:#x}",
            r.sec, r.min, r.hour, r.day, r.mon, r.year
        )
    }
}
