//! ESP images made by Espressif's own `esptool` (PyPI) from ELF files written here (Xtensa for the
//! ESP32, RISC-V for the ESP32-C3), described by `esptool image_info` and parsed by Fieldpatch:
//! both must agree on the chip, flash parameters, entry point, every segment, the checksum and
//! the appended SHA-256; tampered images are refused by both. Partition tables are ESP-IDF
//! `gen_esp32part.py` output (that tool is not on PyPI, so its bytes are kept here) and tables
//! built per the documented format. ESP bundles are built and verified with the bundle tooling.
//! `esptool` is installed by `scripts/setup` into the tools venv; without it these tests fail and
//! say how to get it.

use fieldpatch_core::bundle::container::payload_entry;
use fieldpatch_core::bundle::{
    BundleError, PayloadFormat, VerifiedBundle, create_bundle, sign_bundle_file, verify_file,
};
use fieldpatch_core::image::esp::{
    EspChip, EspImage, EspPayloadKind, EspTarget, FlashMode, OtaData, PartitionTable, checksum,
    layout_of, ota_seq_crc,
};
use fieldpatch_testkit::catalog::BundleKit;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::process::Command;

fn esptool() -> PathBuf {
    let venv = std::env::var("FIELDPATCH_TOOLS_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fieldpatch/venv")
    });
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("esptool")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([venv.join("bin/esptool")]);
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "esptool (Espressif's flashing tool, PyPI) is required for these tests but was not found \
         on PATH or in {}: run scripts/setup (it installs scripts/python-requirements.txt into that venv)",
        venv.display()
    );
}

fn esptool_run(args: &[&str], dir: &Path) -> String {
    let out = Command::new(esptool()).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "esptool {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A minimal ELF32 writer: sections with addresses and bytes, a section-name table, no program
// headers (esptool's elf2image reads sections).

const EM_XTENSA: u16 = 0x5E;
const EM_RISCV: u16 = 0xF3;

struct Section {
    name: &'static str,
    addr: u32,
    data: Vec<u8>,
}

fn elf32(machine: u16, entry: u32, sections: &[Section]) -> Vec<u8> {
    const EHDR: usize = 52;
    const SHDR: usize = 40;
    let mut body = Vec::new();
    let mut placed = Vec::new();
    for s in sections {
        while body.len() % 4 != 0 {
            body.push(0);
        }
        placed.push(EHDR + body.len());
        body.extend_from_slice(&s.data);
    }
    let mut shstrtab = vec![0u8];
    let mut name_offs = Vec::new();
    for s in sections.iter().map(|s| s.name).chain([".shstrtab"]) {
        name_offs.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(s.as_bytes());
        shstrtab.push(0);
    }
    let shstrtab_off = EHDR + body.len();
    body.extend_from_slice(&shstrtab);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let shoff = EHDR + body.len();
    let shnum = sections.len() + 2;

    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let le16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let le32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    le16(&mut elf, 2); // ET_EXEC
    le16(&mut elf, machine);
    le32(&mut elf, 1);
    le32(&mut elf, entry);
    le32(&mut elf, 0); // no program headers
    le32(&mut elf, shoff as u32);
    le32(&mut elf, 0);
    le16(&mut elf, EHDR as u16);
    le16(&mut elf, 32);
    le16(&mut elf, 0);
    le16(&mut elf, SHDR as u16);
    le16(&mut elf, shnum as u16);
    le16(&mut elf, (shnum - 1) as u16);
    assert_eq!(elf.len(), EHDR);
    elf.extend_from_slice(&body);
    let mut shdr = |name: u32, kind: u32, flags: u32, addr: u32, off: usize, size: usize| {
        for x in [name, kind, flags, addr, off as u32, size as u32, 0, 0, 4, 0] {
            le32(&mut elf, x);
        }
    };
    shdr(0, 0, 0, 0, 0, 0);
    for (i, s) in sections.iter().enumerate() {
        // PROGBITS, allocated (and executable for text).
        let flags = if s.name.contains("text") { 0x6 } else { 0x3 };
        shdr(name_offs[i], 1, flags, s.addr, placed[i], s.data.len());
    }
    shdr(name_offs[sections.len()], 3, 0, 0, shstrtab_off, shstrtab.len());
    elf
}

/// An ESP-IDF application descriptor (`esp_app_desc_t`), its ELF-SHA-256 field left zero for
/// `elf2image` to fill.
fn app_desc(version: &str, project: &str) -> Vec<u8> {
    let mut d = vec![0u8; 256];
    d[0..4].copy_from_slice(&0xABCD_5432u32.to_le_bytes());
    d[4..8].copy_from_slice(&3u32.to_le_bytes());
    let put =
        |d: &mut Vec<u8>, at: usize, s: &str| d[at..at + s.len()].copy_from_slice(s.as_bytes());
    put(&mut d, 16, version);
    put(&mut d, 48, project);
    put(&mut d, 80, "12:00:00");
    put(&mut d, 96, "Dec  6 2026");
    put(&mut d, 112, "v5.4");
    d
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// An application ELF for `chip` with flash-mapped data and code, IRAM code and DRAM data.
fn app_elf(chip: EspChip) -> (Vec<u8>, u32) {
    let (machine, drom, irom, iram, dram) = match chip {
        EspChip::Esp32 => (EM_XTENSA, 0x3F40_0020, 0x400D_0020, 0x4008_0000, 0x3FFB_0000),
        EspChip::Esp32C3 => (EM_RISCV, 0x3C00_0020, 0x4200_0020, 0x4038_0000, 0x3FC8_8000),
        other => panic!("no test layout for {other}"),
    };
    let entry = iram + 0x404;
    let sections = [
        Section { name: ".flash.appdesc", addr: drom, data: app_desc("2.4.1", "meter-fw") },
        Section { name: ".flash.rodata", addr: drom + 0x100, data: pattern(1536, 7) },
        Section { name: ".flash.text", addr: irom, data: pattern(6000, 11) },
        Section { name: ".iram0.text", addr: iram, data: pattern(2048, 3) },
        Section { name: ".dram0.data", addr: dram, data: pattern(301, 5) },
    ];
    (elf32(machine, entry, &sections), entry)
}

/// A second-stage bootloader ELF for the ESP32: RAM sections only.
fn bootloader_elf() -> Vec<u8> {
    let sections = [
        Section { name: ".iram_loader.text", addr: 0x4007_8000, data: pattern(3000, 21) },
        Section { name: ".iram.text", addr: 0x4008_0400, data: pattern(1024, 23) },
        Section { name: ".dram0.data", addr: 0x3FFF_0000, data: pattern(400, 25) },
    ];
    elf32(EM_XTENSA, 0x4008_0400, &sections)
}

fn elf2image(dir: &Path, chip: &str, elf: &[u8], out: &str, extra: &[&str]) -> Vec<u8> {
    let input = format!("{out}.elf");
    std::fs::write(dir.join(&input), elf).unwrap();
    let mut args = vec!["--chip", chip, "elf2image", "--flash-mode", "dio", "--flash-size", "4MB"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", out, &input]);
    esptool_run(&args, dir);
    std::fs::read(dir.join(out)).unwrap()
}

fn image_info(dir: &Path, name: &str, bytes: &[u8]) -> String {
    std::fs::write(dir.join(name), bytes).unwrap();
    esptool_run(&["image_info", name], dir)
}

fn line<'a>(info: &'a str, prefix: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in esptool image_info output:\n{info}"))
        .trim()
}

/// The rows of image_info's segment table: (length, load address, file offset).
fn info_segments(info: &str) -> Vec<(u32, u32, usize)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    info.lines()
        .skip_while(|l| !l.trim_start().starts_with("-------"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (hex(f[1]) as u32, hex(f[2]) as u32, hex(f[3]) as usize)
        })
        .collect()
}

fn assert_agrees(img: &EspImage, info: &str, chip: EspChip, entry: u32, elf: &[u8]) {
    assert_eq!(img.chip, Some(chip));
    assert_eq!(line(info, "Chip ID:"), format!("{} ({})", chip.image_chip_id(), chip.name()));
    assert_eq!(line(info, "Entry point:"), format!("{entry:#x}"));
    assert_eq!(img.entry_point, entry);
    assert_eq!(line(info, "Segments:"), img.segments.len().to_string());
    assert_eq!(line(info, "Flash size:"), format!("{}MB", img.flash_size_bytes >> 20));
    assert_eq!(line(info, "Flash mode:"), img.flash_mode.name());
    assert_eq!(img.flash_mode, FlashMode::Dio);
    assert_eq!(Some(line(info, "Flash freq:")), img.flash_freq_name());
    let ours: Vec<_> =
        img.segments.iter().map(|s| (s.length, s.load_address, s.file_offset)).collect();
    assert_eq!(ours, info_segments(info), "segments differ from esptool's:\n{info}");
    assert_eq!(line(info, "Checksum:"), format!("{:#04x} (valid)", img.checksum));
    let sha = img.sha256.as_deref().expect("elf2image appends a SHA-256 by default");
    assert_eq!(line(info, "Validation hash:"), format!("{sha} (valid)"));
    let desc = img.app_desc.as_ref().expect("the application descriptor");
    assert_eq!(line(info, "App version:"), desc.version);
    assert_eq!(line(info, "Project name:"), desc.project_name);
    assert_eq!(desc.version, "2.4.1");
    // elf2image writes the ELF's SHA-256 into the descriptor.
    assert_eq!(desc.elf_sha256, hex::encode(Sha256::digest(elf)));
    assert_eq!(line(info, "ELF file SHA256:"), desc.elf_sha256);
}

#[test]
fn esptool_images_for_esp32_and_esp32_c3_parse_as_esptool_describes_them() {
    let dir = tempfile::tempdir().unwrap();
    for (chip, name) in [(EspChip::Esp32, "esp32"), (EspChip::Esp32C3, "esp32c3")] {
        let (elf, entry) = app_elf(chip);
        let out = format!("{name}-app.bin");
        let bin = elf2image(dir.path(), name, &elf, &out, &["--flash-freq", "40m"]);
        let img = EspImage::parse(&bin).unwrap();
        let info = image_info(dir.path(), &out, &bin);
        assert_agrees(&img, &info, chip, entry, &elf);
        assert_eq!(img.flash_freq_name(), Some("40m"));
        assert_eq!(img.image_len + img.trailing_len, bin.len());
        assert!(img.segments.len() >= 4, "{info}");
    }

    // A second-stage bootloader (RAM segments only, no application descriptor).
    let bin = elf2image(dir.path(), "esp32", &bootloader_elf(), "bootloader.bin", &[]);
    let img = EspImage::parse(&bin).unwrap();
    let info = image_info(dir.path(), "bootloader.bin", &bin);
    assert_eq!(line(&info, "Entry point:"), "0x40080400");
    assert_eq!(img.entry_point, 0x4008_0400);
    let ours: Vec<_> =
        img.segments.iter().map(|s| (s.length, s.load_address, s.file_offset)).collect();
    assert_eq!(ours, info_segments(&info), "{info}");
    assert_eq!(ours.len(), 3);
    assert_eq!(line(&info, "Checksum:"), format!("{:#04x} (valid)", img.checksum));
    assert_eq!(
        line(&info, "Validation hash:"),
        format!("{} (valid)", img.sha256.as_deref().unwrap())
    );
    assert!(img.app_desc.is_none());
}

#[test]
fn images_without_a_digest_and_padded_images_parse() {
    let dir = tempfile::tempdir().unwrap();
    let (elf, _) = app_elf(EspChip::Esp32);
    let bin = elf2image(dir.path(), "esp32", &elf, "nodigest.bin", &["--dont-append-digest"]);
    let img = EspImage::parse(&bin).unwrap();
    assert!(!img.hash_appended && img.sha256.is_none());
    let info = image_info(dir.path(), "nodigest.bin", &bin);
    assert!(!info.contains("Validation hash"), "{info}");
    assert_eq!(line(&info, "Checksum:"), format!("{:#04x} (valid)", img.checksum));

    let bin = elf2image(dir.path(), "esp32", &elf, "padded.bin", &["--pad-to-size", "1MB"]);
    assert_eq!(bin.len(), 1 << 20);
    let img = EspImage::parse(&bin).unwrap();
    assert!(img.hash_appended && img.trailing_len > 0);
    assert_eq!(img.image_len + img.trailing_len, bin.len());
}

#[test]
fn tampered_images_are_refused_by_the_parser_and_by_esptool() {
    let dir = tempfile::tempdir().unwrap();
    let (elf, _) = app_elf(EspChip::Esp32);
    let bin = elf2image(dir.path(), "esp32", &elf, "app.bin", &[]);
    let img = EspImage::parse(&bin).unwrap();
    let seg = img.segments[1];
    let checksum_at = img.image_len - 33;
    assert_eq!(bin[checksum_at], img.checksum);

    // One byte of a segment: the checksum no longer adds up.
    let mut t = bin.clone();
    t[seg.data_offset() + 10] ^= 0x40;
    let e = EspImage::parse(&t).unwrap_err();
    assert_eq!(e.code(), "esp_checksum_mismatch", "{e}");
    let info = image_info(dir.path(), "t1.bin", &t);
    assert!(line(&info, "Checksum:").contains("invalid"), "{info}");
    assert!(line(&info, "Validation hash:").ends_with("(invalid)"), "{info}");

    // Two bytes changed so that their XOR cancels: the checksum holds, the SHA-256 does not.
    let mut t = bin.clone();
    t[seg.data_offset() + 10] ^= 0x40;
    t[seg.data_offset() + 11] ^= 0x40;
    assert_eq!(checksum(&t[seg.data_offset()..seg.data_offset() + 12], 0), {
        checksum(&bin[seg.data_offset()..seg.data_offset() + 12], 0)
    });
    let e = EspImage::parse(&t).unwrap_err();
    assert_eq!(e.code(), "esp_hash_mismatch", "{e}");
    let info = image_info(dir.path(), "t2.bin", &t);
    assert!(line(&info, "Checksum:").ends_with("(valid)"), "{info}");
    assert!(line(&info, "Validation hash:").ends_with("(invalid)"), "{info}");

    // The checksum byte itself.
    let mut t = bin.clone();
    t[checksum_at] ^= 0x01;
    assert_eq!(EspImage::parse(&t).unwrap_err().code(), "esp_checksum_mismatch");

    // The appended SHA-256.
    let mut t = bin.clone();
    t[img.image_len - 1] ^= 0x80;
    let e = EspImage::parse(&t).unwrap_err();
    assert_eq!(e.code(), "esp_hash_mismatch", "{e}");
    let info = image_info(dir.path(), "t3.bin", &t);
    assert!(line(&info, "Validation hash:").ends_with("(invalid)"), "{info}");

    // Truncated anywhere: refused, never a panic.
    for cut in [0, 1, 23, 24, 30, seg.data_offset() + 5, checksum_at, img.image_len - 1] {
        assert!(EspImage::parse(&bin[..cut]).is_err(), "{cut}-byte prefix was accepted");
    }
    // Not an ESP image.
    assert_eq!(EspImage::parse(&elf).unwrap_err().code(), "esp_bad_magic");
}

#[test]
fn check_target_refuses_another_chip_and_a_smaller_flash_and_revisions_follow_esptool() {
    let dir = tempfile::tempdir().unwrap();
    let (elf, _) = app_elf(EspChip::Esp32C3);
    let bin = elf2image(
        dir.path(),
        "esp32c3",
        &elf,
        "c3.bin",
        &["--min-rev-full", "3", "--max-rev-full", "199"],
    );
    let img = EspImage::parse(&bin).unwrap();
    let mib = 1u64 << 20;
    img.check_target(&EspTarget { chip: EspChip::Esp32C3, flash_size_bytes: 4 * mib }).unwrap();
    img.check_target(&EspTarget { chip: EspChip::Esp32C3, flash_size_bytes: 16 * mib }).unwrap();
    let e = img
        .check_target(&EspTarget { chip: EspChip::Esp32, flash_size_bytes: 4 * mib })
        .unwrap_err();
    assert_eq!(e.code(), "esp_wrong_chip");
    assert!(e.to_string().contains("ESP32-C3") && e.to_string().contains("device is ESP32"), "{e}");
    let e = img
        .check_target(&EspTarget { chip: EspChip::Esp32C3, flash_size_bytes: 2 * mib })
        .unwrap_err();
    assert_eq!(e.code(), "esp_flash_too_large", "{e}");

    assert_eq!((img.min_chip_rev, img.max_chip_rev), (3, 199));
    img.check_chip_revision(3).unwrap();
    img.check_chip_revision(104).unwrap();
    assert_eq!(img.check_chip_revision(2).unwrap_err().code(), "esp_chip_revision");
    let e = img.check_chip_revision(200).unwrap_err();
    assert!(e.to_string().contains("v2.0") && e.to_string().contains("v1.99"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Partition tables

/// `gen_esp32part.py` (ESP-IDF) output for
/// nvs 0x9000 0x4000 / otadata 0xd000 0x2000 / phy_init 0xf000 0x1000 / ota_0 0x10000 0x180000 /
/// ota_1 0x190000 0x180000 / storage (spiffs, readonly) 0x310000 0xf0000, up to its end marker;
/// the tool pads the rest of the 0xC00 bytes with 0xFF.
const GEN_TWO_OTA: &str = concat!(
    "aa50010200900000004000006e76730000000000000000000000000000000000",
    "aa50010000d00000002000006f74616461746100000000000000000000000000",
    "aa50010100f00000001000007068795f696e6974000000000000000000000000",
    "aa50001000000100000018006f74615f30000000000000000000000000000000",
    "aa50001100001900000018006f74615f31000000000000000000000000000000",
    "aa5001820000310000000f0073746f7261676500000000000000000002000000",
    "ebebffffffffffffffffffffffffffffff7b3b95603fd70647e72f515e411cb1",
);

/// `gen_esp32part.py` output for nvs 0x9000 0x6000 / phy_init 0xf000 0x1000 / factory 0x10000 1M.
const GEN_FACTORY: &str = concat!(
    "aa50010200900000006000006e76730000000000000000000000000000000000",
    "aa50010100f00000001000007068795f696e6974000000000000000000000000",
    "aa5000000000010000001000666163746f727900000000000000000000000000",
    "ebebfffffffffffffffffffffffffffff4ad4f4538564b5d7435b62c75b69524",
);

fn gen_table(hex_entries: &str) -> Vec<u8> {
    let mut t = hex::decode(hex_entries).unwrap();
    t.resize(0xC00, 0xFF);
    t
}

/// A table per the documented format: entries, the MD5 entry, 0xFF to 0xC00 bytes.
fn table(entries: &[(&str, u8, u8, u32, u32)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (name, ty, sub, off, size) in entries {
        t.extend_from_slice(&[0xAA, 0x50, *ty, *sub]);
        t.extend_from_slice(&off.to_le_bytes());
        t.extend_from_slice(&size.to_le_bytes());
        let mut n = [0u8; 16];
        n[..name.len()].copy_from_slice(name.as_bytes());
        t.extend_from_slice(&n);
        t.extend_from_slice(&0u32.to_le_bytes());
    }
    let md5 = Md5::digest(&t);
    t.extend_from_slice(&[0xEB, 0xEB]);
    t.extend_from_slice(&[0xFF; 14]);
    t.extend_from_slice(&md5);
    t.resize(0xC00, 0xFF);
    t
}

#[test]
fn gen_esp32part_tables_parse_with_their_ota_slots() {
    let t = PartitionTable::parse(&gen_table(GEN_TWO_OTA)).unwrap();
    assert!(t.md5_checked);
    let names: Vec<_> = t.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["nvs", "otadata", "phy_init", "ota_0", "ota_1", "storage"]);
    let otadata = t.ota_data().unwrap();
    assert_eq!((otadata.offset, otadata.size), (0xd000, 0x2000));
    let slots: Vec<_> = t.ota_slots().iter().map(|p| (p.ota_slot(), p.offset, p.size)).collect();
    assert_eq!(slots, [(Some(0), 0x10000, 0x180000), (Some(1), 0x190000, 0x180000)]);
    assert!(t.has_ota() && t.factory().is_none());
    let storage = t.find("storage").unwrap();
    assert!(storage.is_data() && storage.subtype == 0x82 && storage.readonly());
    assert!(!storage.encrypted());

    let t = PartitionTable::parse(&gen_table(GEN_FACTORY)).unwrap();
    let f = t.factory().unwrap();
    assert_eq!((f.name.as_str(), f.offset, f.size), ("factory", 0x10000, 0x100000));
    assert!(!t.has_ota() && t.ota_data().is_none());

    // The documented format gives gen_esp32part's bytes exactly.
    let built = table(&[
        ("nvs", 1, 2, 0x9000, 0x6000),
        ("phy_init", 1, 1, 0xf000, 0x1000),
        ("factory", 0, 0, 0x10000, 0x100000),
    ]);
    assert_eq!(built, gen_table(GEN_FACTORY));
}

#[test]
fn damaged_or_inconsistent_partition_tables_are_refused() {
    let good = gen_table(GEN_TWO_OTA);
    // A name changed after the MD5 was computed (ota_0 becomes pta_0).
    let mut t = good.clone();
    t[0x6C] ^= 0x1F;
    assert_eq!(PartitionTable::parse(&t).unwrap_err().code(), "esp_partition_table_md5");
    // A broken entry magic.
    let mut t = good.clone();
    t[0x20] = 0xAB;
    assert_eq!(PartitionTable::parse(&t).unwrap_err().code(), "esp_partition_table_malformed");
    // No end marker.
    assert_eq!(PartitionTable::parse(&good[..0xC0]).unwrap_err().code(), "esp_image_truncated");
    let e = PartitionTable::parse(&vec![0xAAu8; 0x1000]).unwrap_err();
    assert_eq!(e.code(), "esp_partition_table_malformed", "{e}");
    // Overlapping, misaligned, duplicate names, a second OTA data partition.
    for (entries, what) in [
        (vec![("a", 1, 2, 0x9000, 0x4000), ("b", 1, 1, 0xc000, 0x1000)], "overlaps"),
        (vec![("app", 0, 0, 0x18000, 0x10000)], "aligned"),
        (vec![("a", 1, 2, 0x9000, 0x1000), ("a", 1, 1, 0xa000, 0x1000)], "twice"),
        (vec![("o1", 1, 0, 0xd000, 0x2000), ("o2", 1, 0, 0xf000, 0x2000)], "OTA data"),
        (vec![("o1", 1, 0, 0xd000, 0x1000)], "0x2000"),
    ] {
        let e = PartitionTable::parse(&table(&entries)).unwrap_err();
        assert_eq!(e.code(), "esp_partition_table_malformed");
        assert!(e.to_string().contains(what), "{e} should say {what}");
    }
}

/// An OTA data partition with the given `(sequence, state)` in each sector, CRCs as ESP-IDF writes
/// them.
fn otadata(entries: [Option<(u32, u32)>; 2]) -> Vec<u8> {
    let mut d = vec![0xFFu8; 0x2000];
    for (i, e) in entries.iter().enumerate() {
        if let Some((seq, state)) = e {
            let at = i * 0x1000;
            d[at..at + 4].copy_from_slice(&seq.to_le_bytes());
            d[at + 24..at + 28].copy_from_slice(&state.to_le_bytes());
            d[at + 28..at + 32].copy_from_slice(&ota_seq_crc(*seq).to_le_bytes());
        }
    }
    d
}

#[test]
fn ota_data_names_the_boot_slot_and_the_slot_an_update_goes_to() {
    // ESP-IDF's otatool computes the CRC as binascii.crc32(struct.pack('I', seq), 0xFFFFFFFF).
    let script = "import binascii,struct,sys\nfor s in (1,2,7,0x12345678):\n    \
                  print(binascii.crc32(struct.pack('<I', s), 0xFFFFFFFF) & 0xFFFFFFFF)";
    let out = Command::new("python3").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<u32> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let ours: Vec<u32> = [1, 2, 7, 0x1234_5678].into_iter().map(ota_seq_crc).collect();
    assert_eq!(ours, theirs);

    let t = PartitionTable::parse(&gen_table(GEN_TWO_OTA)).unwrap();
    let name = |p: Option<&fieldpatch_core::image::esp::Partition>| p.map(|p| p.name.clone());
    // Erased OTA data (ota_data_initial.bin): ota_0 boots, an update goes to ota_1.
    let erased = OtaData::parse(&otadata([None, None])).unwrap();
    assert!(erased.active().is_none());
    assert_eq!(name(t.boot_partition(Some(&erased))), Some("ota_0".into()));
    assert_eq!(name(t.next_update_slot(Some(&erased))), Some("ota_1".into()));
    // Sequence 2 in the second sector is newer than 1 in the first: ota_1 boots.
    let d = OtaData::parse(&otadata([Some((1, 2)), Some((2, 2))])).unwrap();
    assert_eq!(d.active().unwrap().seq, 2);
    assert_eq!(name(t.boot_partition(Some(&d))), Some("ota_1".into()));
    assert_eq!(name(t.next_update_slot(Some(&d))), Some("ota_0".into()));
    // An entry marked invalid (rolled back) or with a wrong CRC does not count.
    let d = OtaData::parse(&otadata([Some((3, 2)), Some((4, 3))])).unwrap();
    assert_eq!(name(t.boot_partition(Some(&d))), Some("ota_0".into()));
    let mut bytes = otadata([Some((3, 2)), Some((6, 2))]);
    bytes[0x1000 + 28] ^= 1;
    let d = OtaData::parse(&bytes).unwrap();
    assert_eq!(d.active().unwrap().seq, 3);
    // A table without OTA slots boots its factory app and has nowhere to write an update.
    let f = PartitionTable::parse(&gen_table(GEN_FACTORY)).unwrap();
    assert_eq!(name(f.boot_partition(None)), Some("factory".into()));
    assert!(f.next_update_slot(None).is_none());
    assert_eq!(OtaData::parse(&[0xFF; 0x1010]).unwrap_err().code(), "esp_ota_data_malformed");
}

// ---------------------------------------------------------------------------------------------
// Bundles

struct EspSet {
    bootloader: Vec<u8>,
    table: Vec<u8>,
    otadata: Vec<u8>,
    app: Vec<u8>,
}

fn esp32_set(dir: &Path) -> EspSet {
    let (elf, _) = app_elf(EspChip::Esp32);
    EspSet {
        bootloader: elf2image(dir, "esp32", &bootloader_elf(), "bootloader.bin", &[]),
        table: gen_table(GEN_TWO_OTA),
        otadata: vec![0xFF; 0x2000],
        app: elf2image(dir, "esp32", &elf, "app.bin", &[]),
    }
}

/// One ESP payload: name, bytes, flash offset.
type Payload<'a> = (&'a str, &'a [u8], Option<u32>);

/// A signed bundle of ESP payloads.
fn esp_bundle(kit: &BundleKit, file: &str, payloads: &[Payload<'_>]) -> PathBuf {
    let named: Vec<(&str, &[u8])> = payloads.iter().map(|(n, b, _)| (*n, *b)).collect();
    let mut m = kit.manifest(&named);
    for (entry, (_, _, offset)) in m.payloads.iter_mut().zip(payloads) {
        entry.format = PayloadFormat::Esp;
        entry.flash_offset = *offset;
    }
    let bytes: Vec<&[u8]> = payloads.iter().map(|(_, b, _)| *b).collect();
    kit.write(file, &kit.good(&m, &bytes))
}

#[test]
fn a_full_esp32_flash_set_in_a_bundle_verifies_with_its_layout() {
    let kit = BundleKit::new();
    let s = esp32_set(kit.dir.path());
    let payloads: [Payload<'_>; 4] = [
        ("bootloader.bin", &s.bootloader, Some(0x1000)),
        ("partition-table.bin", &s.table, Some(0x8000)),
        ("ota_data_initial.bin", &s.otadata, Some(0xd000)),
        ("app.bin", &s.app, Some(0x10000)),
    ];
    let path = esp_bundle(&kit, "esp.fpb", &payloads);
    let v = verify_file(&path, &kit.trust, &kit.policy()).unwrap();
    assert!(v.valid);
    let detail = |name: &str| {
        let c = v.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name}"));
        assert!(c.ok);
        c.detail.clone()
    };
    assert!(detail("image:bootloader.bin").starts_with("bootloader at 0x1000: ESP32 image"));
    let app = detail("image:app.bin");
    assert!(app.contains("application at 0x10000") && app.contains("SHA-256"), "{app}");
    assert!(app.contains("\"meter-fw\" version \"2.4.1\""), "{app}");
    assert!(detail("image:partition-table.bin").contains("2 OTA slot(s) with OTA data, MD5 ok"));
    let layout = detail("esp_layout");
    assert!(
        layout.contains("app.bin in ota_0") && layout.contains("ota_data_initial.bin in otadata")
    );

    // What the flash pipeline gets: the held bytes, their offsets and the layout against a device.
    let b = VerifiedBundle::open(&path, &kit.trust, &kit.policy()).unwrap();
    let l = layout_of(
        b.payloads().iter().map(|p| (p.entry().name.as_str(), p.bytes(), p.entry().flash_offset)),
    )
    .unwrap();
    assert_eq!(l.chip, EspChip::Esp32);
    assert!(matches!(l.payloads[0].kind, EspPayloadKind::Bootloader { .. }));
    assert!(matches!(l.payloads[3].kind, EspPayloadKind::App { .. }));
    assert!(l.partition_table().unwrap().has_ota());
    let mib = 1u64 << 20;
    l.check_target(&EspTarget { chip: EspChip::Esp32, flash_size_bytes: 4 * mib }).unwrap();
    let e = l
        .check_target(&EspTarget { chip: EspChip::Esp32S3, flash_size_bytes: 4 * mib })
        .unwrap_err();
    assert_eq!(e.code(), "esp_wrong_chip");
    let e =
        l.check_target(&EspTarget { chip: EspChip::Esp32, flash_size_bytes: 2 * mib }).unwrap_err();
    assert_eq!(e.code(), "esp_flash_too_large");
}

#[test]
fn esp_bundles_with_bad_images_or_offsets_are_refused_naming_the_payload() {
    let kit = BundleKit::new();
    let s = esp32_set(kit.dir.path());
    let img = EspImage::parse(&s.app).unwrap();
    let mut tampered = s.app.clone();
    tampered[img.segments[0].data_offset() + 300] ^= 0x08;
    let c3 = elf2image(kit.dir.path(), "esp32c3", &app_elf(EspChip::Esp32C3).0, "c3.bin", &[]);
    let small = vec![0x5Au8; 0x800];

    let cases: Vec<(&str, Vec<Payload<'_>>, &str, &str)> = vec![
        // The bundle's digest matches the tampered bytes; the image's own checksum does not.
        (
            "tampered",
            vec![("app.bin", &tampered, Some(0x10000))],
            "esp_checksum_mismatch",
            "image:app.bin",
        ),
        ("no offset", vec![("app.bin", &s.app, None)], "esp_missing_offset", "image:app.bin"),
        (
            "unaligned",
            vec![("app.bin", &s.app, Some(0x10800))],
            "esp_misaligned_offset",
            "image:app.bin",
        ),
        (
            "app off page",
            vec![("app.bin", &s.app, Some(0x11000))],
            "esp_app_placement",
            "image:app.bin",
        ),
        (
            "overlap",
            vec![("app.bin", &s.app, Some(0x10000)), ("blob.bin", &small, Some(0x11000))],
            "esp_overlap",
            "esp_layout",
        ),
        (
            "unplaced data",
            vec![("app.bin", &s.app, Some(0x10000)), ("blob.bin", &small, Some(0x200000))],
            "esp_data_placement",
            "esp_layout",
        ),
        (
            "app outside a slot",
            vec![("pt.bin", &s.table, Some(0x8000)), ("app.bin", &s.app, Some(0x200000))],
            "esp_app_placement",
            "esp_layout",
        ),
        (
            "app in a data partition",
            vec![("pt.bin", &s.table, Some(0x8000)), ("app.bin", &s.app, Some(0x310000))],
            "esp_app_placement",
            "esp_layout",
        ),
        (
            "two chips",
            vec![("app.bin", &s.app, Some(0x10000)), ("c3.bin", &c3, Some(0x190000))],
            "esp_mixed_chips",
            "esp_layout",
        ),
        ("no image", vec![("pt.bin", &s.table, Some(0x8000))], "esp_no_image", "esp_layout"),
        (
            "table in a partition",
            vec![("app.bin", &s.app, Some(0x10000)), ("pt.bin", &s.table, Some(0x9000))],
            "esp_partition_table_malformed",
            "esp_layout",
        ),
        (
            "two tables",
            vec![
                ("app.bin", &s.app, Some(0x10000)),
                ("pt.bin", &s.table, Some(0x8000)),
                ("pt2.bin", &s.table, Some(0x9000)),
            ],
            "esp_duplicate_payload",
            "esp_layout",
        ),
    ];
    for (i, (what, payloads, code, check)) in cases.into_iter().enumerate() {
        let path = esp_bundle(&kit, &format!("bad{i}.fpb"), &payloads);
        let r = verify_file(&path, &kit.trust, &kit.policy()).unwrap_err();
        assert_eq!(r.error.code(), code, "{what}: {}", r.error);
        assert!(matches!(r.error, BundleError::EspImage { .. }), "{what}");
        let failed = r.verdict.checks.last().unwrap();
        assert!(!failed.ok && failed.name == check, "{what}: {failed:?}");
    }
}

#[test]
fn esp_bundles_made_on_disk_keep_offsets_signed_and_other_manifests_unchanged() {
    let kit = BundleKit::new();
    let dir = kit.dir.path();
    let s = esp32_set(dir);
    std::fs::write(dir.join("app.bin"), &s.app).unwrap();
    let mut entry = payload_entry("app.bin", PayloadFormat::Esp, &dir.join("app.bin")).unwrap();
    entry.flash_offset = Some(0x10000);
    let mut m = kit.manifest(&[]);
    m.payloads = vec![entry];
    let out = dir.join("app.fpb");
    create_bundle(&m, &[dir.join("app.bin")], &out).unwrap();
    for k in &kit.release[..2] {
        sign_bundle_file(&out, k).unwrap();
    }
    let v = verify_file(&out, &kit.trust, &kit.policy()).unwrap();
    assert!(v.checks.iter().any(|c| c.name == "esp_layout" && c.ok), "{v:?}");
    let mb = String::from_utf8(m.canonical_bytes().unwrap()).unwrap();
    assert!(mb.contains(r#""flash_offset":65536"#), "{mb}");

    // A payload of another format writes no flash_offset key, so older manifests keep their
    // signed bytes; and none may carry one.
    let mut raw = kit.manifest(&[("fw.bin", b"abc")]);
    let bytes = String::from_utf8(raw.canonical_bytes().unwrap()).unwrap();
    assert!(!bytes.contains("flash_offset"), "{bytes}");
    raw.payloads[0].flash_offset = Some(0x10000);
    let e = raw.validate().unwrap_err();
    assert_eq!(e.code(), "invalid_manifest", "{e}");
    assert_eq!("esp".parse::<PayloadFormat>().unwrap(), PayloadFormat::Esp);
}
