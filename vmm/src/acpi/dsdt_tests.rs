//! Tests of the DSDT (a child of dsdt.rs): they read the AML bytes back out
//! of guest memory and decode the parts that matter — `\_S5`, EISA IDs,
//! `_UID`s and `_CRS` resource descriptors — with decoders written from the
//! ACPI spec, not with the crate that encoded them.

use super::super::testutil::*;
use super::*;

fn dsdt(cfg: &super::super::AcpiConfig) -> Vec<u8> {
    let (mem, rsdp) = build_tables(cfg);
    find_table(&mem, rsdp, b"DSDT").1
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Offset just past the first `name` after the first `device` NameSeg.
fn after(dsdt: &[u8], device: &[u8; 4], name: &[u8; 4]) -> usize {
    let dev = position(dsdt, device).unwrap_or_else(|| panic!("no device {device:?}"));
    let at = position(&dsdt[dev..], name).unwrap_or_else(|| panic!("no {name:?} in {device:?}"));
    dev + at + 4
}

/// Decodes an AML integer (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix):
/// (value, encoded length).
fn integer(b: &[u8]) -> (u64, usize) {
    match b[0] {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0x0a => (u64::from(b[1]), 2),
        0x0b => (u64::from(u16_at(b, 1)), 3),
        0x0c => (u64::from(u32_at(b, 1)), 5),
        0x0e => (u64_at(b, 1), 9),
        op => panic!("not an integer: {op:#x}"),
    }
}

/// Decodes a PkgLength: (value, encoded length).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let follow = usize::from(b[0] >> 6);
    if follow == 0 {
        return (usize::from(b[0] & 0x3f), 1);
    }
    let mut len = usize::from(b[0] & 0x0f);
    for i in 0..follow {
        len |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (len, 1 + follow)
}

/// Decodes a compressed EISA ID (ACPI 6.5 §19.3.4, EISAID): three 5-bit
/// letters (1 = 'A') in the first two bytes, big-endian, then four hex digits.
fn eisa_id(b: &[u8]) -> String {
    let letters = u16::from_be_bytes([b[0], b[1]]);
    let letter = |shift: u16| char::from(b'@' + ((letters >> shift) & 0x1f) as u8);
    format!(
        "{}{}{}{:02X}{:02X}",
        letter(10),
        letter(5),
        letter(0),
        b[2],
        b[3]
    )
}

/// The EISA ID that `name` (`_HID` or `_CID`) of `device` is set to.
fn eisa_name(dsdt: &[u8], device: &[u8; 4], name: &[u8; 4]) -> String {
    let at = after(dsdt, device, name);
    assert_eq!(dsdt[at], 0x0c, "{name:?} of {device:?} is not a DWord");
    eisa_id(&dsdt[at + 1..at + 5])
}

/// The resource descriptors in the `_CRS` buffer of `device`, each with its
/// tag and length bytes, the end tag left out.
fn crs(dsdt: &[u8], device: &[u8; 4]) -> Vec<Vec<u8>> {
    let mut p = after(dsdt, device, b"_CRS");
    assert_eq!(dsdt[p], 0x11, "_CRS is not a Buffer");
    p += 1;
    p += pkg_length(&dsdt[p..]).1;
    let (size, n) = integer(&dsdt[p..]);
    p += n;
    let buf = &dsdt[p..p + size as usize];
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let tag = buf[i];
        let len = if tag & 0x80 != 0 {
            3 + usize::from(u16_at(buf, i + 1))
        } else {
            1 + usize::from(tag & 0x07)
        };
        if tag & 0x80 == 0 && (tag >> 3) & 0x0f == 0x0f {
            assert_eq!(i + len, buf.len(), "end tag is not last");
            return out;
        }
        out.push(buf[i..i + len].to_vec());
        i += len;
    }
}

/// An address space descriptor (Word/DWord/QWord): (resource type,
/// producer, min, max, length). Resource type 0 memory, 1 I/O, 2 bus.
fn address_space(d: &[u8]) -> (u8, bool, u64, u64, u64) {
    let width = match d[0] {
        0x88 => 2,
        0x87 => 4,
        0x8a => 8,
        tag => panic!("not an address space descriptor: {tag:#x}"),
    };
    let field = |i: usize| {
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(&d[6 + i * width..6 + (i + 1) * width]);
        u64::from_le_bytes(v)
    };
    // General flags bit 0 clear: the device produces the range (a window).
    (d[3], d[4] & 1 == 0, field(1), field(2), field(4))
}

/// An I/O port descriptor (small, 0x47): (min, length).
fn io_port(d: &[u8]) -> (u16, u8) {
    assert_eq!(d[0], 0x47);
    assert_eq!(u16_at(d, 2), u16_at(d, 4), "fixed range: min == max");
    (u16_at(d, 2), d[7])
}

/// An extended interrupt descriptor (0x89): (flags, the one interrupt).
fn interrupt(d: &[u8]) -> (u8, u32) {
    assert_eq!(d[0], 0x89);
    assert_eq!(d[4], 1, "one interrupt");
    (d[3], u32_at(d, 5))
}

#[test]
fn revision_2_for_64_bit_integers() {
    assert_eq!(dsdt(&config(1))[8], 2);
}

#[test]
fn s5_is_a_package_whose_first_element_is_the_sleep_type() {
    let dsdt = dsdt(&config(1));
    let at = position(&dsdt, b"_S5_").expect("no _S5_");
    assert_eq!(dsdt[at - 1], 0x08, "_S5_ is not a Name");
    let mut p = at + 4;
    assert_eq!(dsdt[p], 0x12, "_S5_ is not a Package");
    p += 1;
    p += pkg_length(&dsdt[p..]).1;
    assert_eq!(dsdt[p], 4, "element count");
    p += 1;
    let mut elements = Vec::new();
    for _ in 0..4 {
        let (value, n) = integer(&dsdt[p..]);
        elements.push(value);
        p += n;
    }
    assert_eq!(elements, [u64::from(layout::ACPI_S5_SLEEP_TYPE), 0, 0, 0]);
    assert_eq!(elements[0], 5);
}

#[test]
fn hids_are_eisa_encoded() {
    let dsdt = dsdt(&config(1));
    // PNP0A08 by hand: P=16, N=14, P=16 → 0b0_10000_01110_10000 = 0x41d0.
    let at = after(&dsdt, b"PCI0", b"_HID");
    assert_eq!(&dsdt[at..at + 5], &[0x0c, 0x41, 0xd0, 0x0a, 0x08]);
    assert_eq!(eisa_name(&dsdt, b"PCI0", b"_HID"), "PNP0A08");
    assert_eq!(eisa_name(&dsdt, b"PCI0", b"_CID"), "PNP0A03");
    assert_eq!(eisa_name(&dsdt, b"COM1", b"_HID"), "PNP0501");
    assert_eq!(eisa_name(&dsdt, b"RTC_", b"_HID"), "PNP0B00");
    assert_eq!(eisa_name(&dsdt, b"PS2K", b"_HID"), "PNP0303");
    assert_eq!(eisa_name(&dsdt, b"ECAM", b"_HID"), "PNP0C02");
}

#[test]
fn pci0_is_segment_0_bus_0_uid_0() {
    let dsdt = dsdt(&config(1));
    for name in [b"_SEG", b"_UID", b"_BBN"] {
        assert_eq!(
            integer(&dsdt[after(&dsdt, b"PCI0", name)..]).0,
            0,
            "{name:?}"
        );
    }
    assert!(position(&dsdt, b"_ADR").is_none(), "_HID and _ADR together");
}

#[test]
fn one_processor_device_per_vcpu_with_its_uid() {
    for cpus in [1u16, 8, 255] {
        let dsdt = dsdt(&config(cpus));
        let hids = dsdt.windows(8).filter(|w| w == b"ACPI0007").count();
        assert_eq!(hids, usize::from(cpus));
        let last = cpus - 1;
        let name = format!("C{last:03X}");
        let at = after(&dsdt, name.as_bytes().try_into().unwrap(), b"_UID");
        assert_eq!(integer(&dsdt[at..]).0, u64::from(last), "{name}");
    }
}

#[test]
fn pci0_crs_has_the_bus_range_io_and_mmio_windows() {
    let cfg = config(2);
    let (start64, size64) = cfg.pci_mmio64;
    let resources = crs(&dsdt(&cfg), b"PCI0");
    assert_eq!(resources.len(), 6);
    let last_bus = (layout::PCI_ECAM_SIZE >> 20) - 1;
    assert_eq!(
        address_space(&resources[0]),
        (2, true, 0, last_bus, last_bus + 1)
    );
    // The config ports: consumed by the bridge, between the two I/O windows.
    assert_eq!(io_port(&resources[1]), (0xcf8, 8));
    assert_eq!(address_space(&resources[2]), (1, true, 0, 0xcf7, 0xcf8));
    assert_eq!(
        address_space(&resources[3]),
        (1, true, 0xd00, 0xffff, 0xf300)
    );
    let (start32, size32) = (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
    assert_eq!(
        address_space(&resources[4]),
        (0, true, start32, start32 + size32 - 1, size32)
    );
    assert_eq!(resources[4][0], 0x87, "DWord descriptor");
    assert_eq!(
        address_space(&resources[5]),
        (0, true, start64, start64 + size64 - 1, size64)
    );
    assert_eq!(resources[5][0], 0x8a, "QWord descriptor");
    for window in [&resources[4], &resources[5]] {
        assert_eq!(window[5] & 0b110, 0, "not prefetchable, not cacheable");
        assert_eq!(window[5] & 1, 1, "read-write");
    }
}

#[test]
fn an_empty_mmio64_window_is_left_out() {
    let mut cfg = config(1);
    cfg.pci_mmio64 = (0x80_0000_0000, 0);
    let resources = crs(&dsdt(&cfg), b"PCI0");
    assert_eq!(resources.len(), 5);
    assert!(resources.iter().all(|d| d[0] != 0x8a));
}

#[test]
fn legacy_devices_have_their_ports_and_gsis() {
    let dsdt = dsdt(&config(1));
    // Consumer, edge-triggered, active high, exclusive.
    let isa = 0b0011;
    let com1 = crs(&dsdt, b"COM1");
    assert_eq!(com1.len(), 2);
    assert_eq!(io_port(&com1[0]), (layout::COM1_PORT, 8));
    assert_eq!(interrupt(&com1[1]), (isa, layout::COM1_IRQ));
    let rtc = crs(&dsdt, b"RTC_");
    assert_eq!(rtc.len(), 2);
    assert_eq!(io_port(&rtc[0]), (layout::RTC_PORT, 2));
    assert_eq!(interrupt(&rtc[1]), (isa, layout::RTC_IRQ));
    let ps2k = crs(&dsdt, b"PS2K");
    assert_eq!(ps2k.len(), 3);
    assert_eq!(io_port(&ps2k[0]), (layout::I8042_DATA_PORT, 1));
    assert_eq!(io_port(&ps2k[1]), (layout::I8042_COMMAND_PORT, 1));
    assert_eq!(interrupt(&ps2k[2]), (isa, 1));
}

#[test]
fn the_ecam_is_reserved_by_a_motherboard_device() {
    let resources = crs(&dsdt(&config(1)), b"ECAM");
    assert_eq!(resources.len(), 1);
    let d = &resources[0];
    assert_eq!(d[0], 0x86, "Memory32Fixed");
    assert_eq!(u64::from(u32_at(d, 4)), layout::PCI_ECAM_START);
    assert_eq!(u64::from(u32_at(d, 8)), layout::PCI_ECAM_SIZE);
}
