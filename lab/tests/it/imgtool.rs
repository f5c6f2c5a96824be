//! The lab's MCUboot image builder and parser agree with `imgtool` (PyPI, MCUboot's own tool).

use fieldpatch_lab::smp::mcuboot::{Version, build_image, parse, test_payload};
use std::path::PathBuf;
use std::process::Command;

fn imgtool() -> PathBuf {
    let mut c: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("imgtool")).collect())
        .unwrap_or_default();
    if let Some(v) = std::env::var_os("FIELDPATCH_TOOLS_VENV") {
        c.push(PathBuf::from(v).join("bin/imgtool"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        c.push(PathBuf::from(h).join(".cache/fieldpatch/venv/bin/imgtool"));
    }
    c.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("imgtool is not installed: run scripts/setup (scripts/python-requirements.txt)")
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn imgtool_validates_lab_images_and_the_lab_reads_imgtool_images() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.bin");
    let img =
        build_image(Version { major: 1, minor: 2, revision: 3, build: 0 }, &test_payload(3000, 1));
    std::fs::write(&ours, &img).unwrap();
    let out = Command::new(imgtool()).arg("verify").arg(&ours).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && text.contains("correctly validated"), "{text}");
    assert!(text.contains(&hex(&parse(&img).unwrap().hash)), "{text}");

    let raw = dir.path().join("raw.bin");
    std::fs::write(&raw, test_payload(5000, 2)).unwrap();
    let theirs = dir.path().join("theirs.bin");
    let out = Command::new(imgtool())
        .args(["sign", "--header-size", "0x200", "--pad-header", "--align", "4"])
        .args(["--version", "1.2.3+7", "--slot-size", "0x100000"])
        .arg(&raw)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = parse(&std::fs::read(&theirs).unwrap()).unwrap();
    assert_eq!(info.version.to_string(), "1.2.3.7");
    assert!(info.valid);
    let out = Command::new(imgtool()).arg("verify").arg(&theirs).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&hex(&info.hash)));
}
