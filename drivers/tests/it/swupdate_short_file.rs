//! An image file that ends before the length it had when the upload started (rewritten or
//! truncated meanwhile) breaks the upload off as an unreadable image, not as a dropped link,
//! against the real `swupdate` daemon.

use fieldpatch_drivers::progress::NoProgress;
use fieldpatch_drivers::swupdate::{DigestCredentials, SwupdateClient, SwupdateError, Timeouts};
use fieldpatch_testkit::swupdate::{Daemon, DaemonAuth, Vendor};
use std::path::Path;
use std::time::Duration;

#[tokio::test]
async fn swupdate_a_file_that_ends_early_is_an_image_error() {
    // A sysfs attribute says it has 4096 bytes and reads as a few: a file that came up short.
    let short = Path::new("/sys/devices/system/cpu/online");
    let claimed = std::fs::metadata(short).unwrap().len();
    assert!(std::fs::read(short).unwrap().len() < claimed as usize);

    let dir = tempfile::tempdir().unwrap();
    let vendor = Vendor::new(&dir.path().join("vendor"), "Gateway Vendor");
    let auth =
        DaemonAuth { user: "admin".into(), realm: "gw-site-a".into(), password: "pw-31".into() };
    let daemon = Daemon::start(&dir.path().join("daemon"), "gw100:1.0", &vendor.cert, Some(&auth));
    let timeouts = Timeouts { request: Duration::from_secs(5), install: Duration::from_secs(20) };
    let client = SwupdateClient::new(&daemon.url(), timeouts).unwrap();
    let creds = DigestCredentials::new("admin", "pw-31");
    let e = client.install(short, Some(&creds), &NoProgress).await.unwrap_err();
    assert_eq!(e.code(), "swupdate_image_unreadable", "{e}");
    let SwupdateError::Image { path, reason } = &e else { unreachable!() };
    assert_eq!(path, &short.display().to_string());
    assert!(reason.contains("bytes short"), "{reason}");
    assert!(!e.to_string().contains("pw-31"));
}
