//! The CMOS real-time clock (MC146818) at ports 0x70/0x71, so the guest's
//! clock starts at the host's date and time. Hand-written: rust-vmm's
//! vm-superio only has the Arm PL031 RTC. Time registers follow the
//! guest's choice of BCD or binary and 12 or 24-hour format (register B);
//! a guest that sets the clock (SET bit, new values, SET cleared) moves it
//! by an offset, the host clock is never touched.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// The century byte the FADT's CENTURY field names.
pub const CENTURY: usize = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate; UIP (bit 7) never set
/// since the registers are computed on each read.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_DEFAULT: u8 = 0x02;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
const REG_B_SET: u8 = 0x80;
/// Register D: valid RAM and time.
const REG_D_VRT: u8 = 0x80;

pub struct Rtc {
    index: u8,
    ram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// Host clock, replaceable in tests.
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Default for Rtc {
    fn default() -> Self {
        Self::with_clock(host_now)
    }
}

impl Rtc {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_clock(now: fn() -> i64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A] = REG_A_DEFAULT;
        ram[REG_B] = REG_B_DEFAULT;
        ram[REG_D] = REG_D_VRT;
        Rtc {
            index: 0,
            ram,
            offset: 0,
            now,
        }
    }

    fn encode(&self, value: u8) -> u8 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.ram[REG_B] & REG_B_BINARY != 0 {
            value
        } else {
            (value >> 4) * 10 + (value & 0xf)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[REG_B] & REG_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, raw: u8) -> u8 {
        if self.ram[REG_B] & REG_B_24H != 0 {
            return self.decode(raw);
        }
        let h12 = self.decode(raw & 0x7f) % 12;
        if raw & 0x80 != 0 {
            h12 + 12
        } else {
            h12
        }
    }

    /// The guest's current time, as seconds since the epoch.
    fn guest_time(&self) -> i64 {
        (self.now)() + self.offset
    }

    fn read_register(&mut self, reg: usize) -> u8 {
        // While SET is on, the guest sees what it wrote.
        if self.ram[REG_B] & REG_B_SET != 0 && (reg <= YEAR || reg == CENTURY) {
            return self.ram[reg];
        }
        let t = civil_from_unix(self.guest_time());
        match reg {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            WEEKDAY => self.encode(t.weekday + 1),
            DAY => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode((t.year % 100) as u8),
            CENTURY => self.encode((t.year / 100) as u8),
            REG_C => std::mem::take(&mut self.ram[REG_C]),
            _ => self.ram[reg],
        }
    }

    fn write_register(&mut self, reg: usize, value: u8) {
        match reg {
            REG_B => {
                let was_set = self.ram[REG_B] & REG_B_SET != 0;
                if value & REG_B_SET != 0 && !was_set {
                    // Freeze the current time into the registers for editing.
                    for r in [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY] {
                        self.ram[r] = self.read_register(r);
                    }
                }
                self.ram[REG_B] = value;
                if was_set && value & REG_B_SET == 0 {
                    self.commit_set_time();
                }
            }
            REG_C | REG_D => {}
            // Register A's UIP bit is read-only.
            REG_A => self.ram[REG_A] = value & 0x7f,
            _ => self.ram[reg] = value,
        }
    }

    /// The guest finished setting the clock: adopt its values as an offset.
    fn commit_set_time(&mut self) {
        let century = self.decode(self.ram[CENTURY]);
        let century = if century == 0 { 20 } else { century };
        let year = century as i64 * 100 + self.decode(self.ram[YEAR]) as i64;
        let t = Civil {
            year,
            month: self.decode(self.ram[MONTH]),
            day: self.decode(self.ram[DAY]),
            hour: self.decode_hour(self.ram[HOURS]),
            minute: self.decode(self.ram[MINUTES]),
            second: self.decode(self.ram[SECONDS]),
            weekday: 0,
        };
        if (1..=12).contains(&t.month)
            && (1..=31).contains(&t.day)
            && t.hour < 24
            && t.minute < 60
            && t.second < 60
        {
            self.offset = unix_from_civil(&t) - (self.now)();
        } else {
            log::debug!("rtc: guest set an invalid time {t:?}; ignored");
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                0 => self.index,
                1 => self.read_register(self.index as usize),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port is the NMI mask; it has no effect here.
            (0, [value]) => self.index = value & 0x7f,
            (1, [value]) => self.write_register(self.index as usize, *value),
            _ => log::debug!("rtc: ignored write at offset {offset}"),
        }
    }
}

/// A broken-down UTC time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Hinnant's algorithm).
fn civil_from_unix(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem % 3600 / 60) as u8,
        second: (rem % 60) as u8,
        weekday: (days + 4).rem_euclid(7) as u8,
    }
}

fn unix_from_civil(t: &Civil) -> i64 {
    let year = t.year - if t.month <= 2 { 1 } else { 0 };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = t.month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + t.day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + t.hour as i64 * 3600 + t.minute as i64 * 60 + t.second as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26 14:46:21 UTC, a Thursday.
    const FIXED: i64 = 1_795_704_381;

    fn rtc() -> Rtc {
        Rtc::with_clock(|| FIXED)
    }

    fn read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(0, &[reg]);
        let mut v = [0u8];
        rtc.read(1, &mut v);
        v[0]
    }

    fn write(rtc: &mut Rtc, reg: u8, value: u8) {
        rtc.write(0, &[reg]);
        rtc.write(1, &[value]);
    }

    #[test]
    fn calendar_conversion_round_trips() {
        let t = civil_from_unix(FIXED);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.weekday),
            (2026, 11, 26, 14, 46, 21, 4)
        );
        for secs in [0, 951_782_400, 4_107_542_399, FIXED] {
            assert_eq!(unix_from_civil(&civil_from_unix(secs)), secs);
        }
        // 2000-02-29 exists.
        let leap = civil_from_unix(951_782_400);
        assert_eq!((leap.month, leap.day), (2, 29));
    }

    #[test]
    fn reads_bcd_by_default() {
        let mut r = rtc();
        assert_eq!(read(&mut r, 0x00), 0x21);
        assert_eq!(read(&mut r, 0x02), 0x46);
        assert_eq!(read(&mut r, 0x04), 0x14);
        assert_eq!(read(&mut r, 0x06), 0x05);
        assert_eq!(read(&mut r, 0x07), 0x26);
        assert_eq!(read(&mut r, 0x08), 0x11);
        assert_eq!(read(&mut r, 0x09), 0x26);
        assert_eq!(read(&mut r, 0x32), 0x20);
        assert_eq!(read(&mut r, 0x0d), 0x80);
        assert_eq!(read(&mut r, 0x0a) & 0x80, 0, "never update-in-progress");
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut r = rtc();
        write(&mut r, 0x0b, REG_B_BINARY);
        assert_eq!(read(&mut r, 0x04), 0x80 | 2, "2 PM, binary, 12-hour");
        assert_eq!(read(&mut r, 0x00), 21);
    }

    #[test]
    fn guest_can_set_the_clock() {
        let mut r = rtc();
        write(&mut r, 0x0b, REG_B_DEFAULT | REG_B_SET);
        write(&mut r, 0x09, 0x30);
        write(&mut r, 0x0b, REG_B_DEFAULT);
        assert_eq!(read(&mut r, 0x09), 0x30);
        assert_eq!(read(&mut r, 0x08), 0x11);
        assert_eq!(
            r.offset,
            unix_from_civil(&Civil {
                year: 2030,
                ..civil_from_unix(FIXED)
            }) - FIXED
        );
    }

    #[test]
    fn out_of_range_index_and_garbage_are_harmless() {
        let mut r = rtc();
        r.write(0, &[0xff]);
        let mut v = [0u8; 2];
        r.read(1, &mut v);
        r.write(1, &[1, 2]);
        r.write(7, &[1]);
        write(&mut r, 0x0b, REG_B_SET);
        write(&mut r, 0x08, 0x99);
        write(&mut r, 0x0b, 0);
        assert_eq!(r.offset, 0, "an invalid month is refused");
    }
}
