//! `fieldpatch credentials set|get|delete|list` against the real Secret Service (the session bus
//! scripts/test provides) and the kernel keyring, and a full CLI visit after which no secret is
//! found in the data directory or in anything the commands printed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn require_session_bus() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "this test needs the real Secret Service but DBUS_SESSION_BUS_ADDRESS is not set: run it \
         through scripts/test, or inside `dbus-run-session` with `gnome-keyring-daemon --unlock \
         --components=secrets` (see the team brief)"
    );
}

struct Env {
    dir: tempfile::TempDir,
    service: String,
    backend: &'static str,
    /// Everything every command printed, to search for secrets.
    transcript: std::cell::RefCell<Vec<u8>>,
}

impl Env {
    fn new(backend: &'static str) -> Env {
        if backend == "secret-service" {
            require_session_bus();
        }
        Env {
            dir: tempfile::tempdir().unwrap(),
            service: format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple()),
            backend,
            transcript: Default::default(),
        }
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
            .args(args)
            .env("FIELDPATCH_DATA_DIR", self.dir.path())
            .env("FIELDPATCH_KEYRING", self.backend)
            .env("FIELDPATCH_KEYRING_SERVICE", &self.service)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            // A command that fails early (bad arguments) may exit before reading: a broken pipe.
            let _ = input.write_all(s.as_bytes());
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        let mut t = self.transcript.borrow_mut();
        t.extend_from_slice(&out.stdout);
        t.extend_from_slice(&out.stderr);
        out
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run_with_stdin(args, stdin);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `get --reveal`, kept out of the transcript (printing the value is its job).
    fn reveal(&self, name: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
            .args(["credentials", "get", name, "--reveal"])
            .env("FIELDPATCH_DATA_DIR", self.dir.path())
            .env("FIELDPATCH_KEYRING", self.backend)
            .env("FIELDPATCH_KEYRING_SERVICE", &self.service)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim_end().to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for name in ["technician-key", "sync-token", "device/dev-1/password", "site/s1/m1/psk"] {
            let _ = self.run_with_stdin(&["credentials", "delete", name], None);
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && contains(&std::fs::read(&path).unwrap(), needle) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

fn round_trip(backend: &'static str) {
    let env = Env::new(backend);
    let secret = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let out =
        env.ok(&["credentials", "set", "device/dev-1/password"], Some(&format!("{secret}\n")));
    assert!(out.contains(&format!("in the {backend} keyring")), "{out}");

    let shown = env.ok(&["credentials", "get", "device/dev-1/password"], None);
    assert!(shown.contains("is set") && shown.contains("--reveal"), "{shown}");
    assert!(!shown.contains(&secret), "get without --reveal printed the secret");
    assert_eq!(env.reveal("device/dev-1/password"), secret, "the trailing newline is not stored");

    let list = env.ok(&["credentials", "list"], None);
    assert!(list.contains("device/dev-1/password") && list.contains(backend), "{list}");
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["credentials", "list", "--json"], None)).unwrap();
    assert_eq!(v["backend"], backend);
    assert_eq!(v["credentials"][0]["name"], "device/dev-1/password");

    assert!(env.ok(&["credentials", "delete", "device/dev-1/password"], None).contains("deleted"));
    let out = env.run_with_stdin(&["credentials", "get", "device/dev-1/password"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no credential device/dev-1/password"), "{err}");
    assert!(!env.ok(&["credentials", "list"], None).contains("device/dev-1/password"));
    // The visit log says the device credential was kept and removed, by name only.
    let log = env.ok(&["--json", "log", "show"], None);
    assert!(log.contains("credential device/dev-1/password kept in the OS keyring"), "{log}");
    assert!(log.contains("credential device/dev-1/password removed from the OS keyring"), "{log}");
    assert!(env.ok(&["log", "verify"], None).contains("verif"), "the log verifies");
    assert!(!contains(&env.transcript.borrow(), &secret));
}

#[test]
fn credentials_round_trip_through_the_secret_service() {
    round_trip("secret-service");
}

#[test]
fn credentials_round_trip_through_the_kernel_keyring() {
    round_trip("keyutils");
}

#[test]
fn secrets_are_never_taken_from_arguments_and_empty_ones_are_refused() {
    let env = Env::new("keyutils");
    let out = env.run_with_stdin(&["credentials", "set", "sync-token", "tok-on-argv"], Some("x"));
    assert!(!out.status.success(), "a secret on the command line must be refused");
    let out = env.run_with_stdin(&["credentials", "set", "sync-token"], Some(""));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret given"));
    let out = env.run_with_stdin(&["credentials", "set", "device/x/pin"], Some("v"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a credential name"));
}

#[test]
fn without_a_session_bus_the_secret_service_error_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["credentials", "list"])
        .env("FIELDPATCH_DATA_DIR", dir.path())
        .env("FIELDPATCH_KEYRING", "secret-service")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt install gnome-keyring"), "{err}");
    // Automatic choice falls back to the kernel keyring instead.
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["credentials", "list", "--json"])
        .env("FIELDPATCH_DATA_DIR", dir.path())
        .env_remove("FIELDPATCH_KEYRING")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "keyutils");
}

#[test]
fn a_full_cli_visit_leaves_no_secret_on_disk_or_in_output() {
    let env = Env::new("secret-service");
    let password = format!("dev-pw-{}", uuid::Uuid::new_v4().simple());
    let psk = format!("psk-{}", uuid::Uuid::new_v4().simple());
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    env.ok(&["credentials", "set", "device/dev-1/password"], Some(&password));
    env.ok(&["credentials", "set", "site/s1/m1/psk"], Some(&psk));
    env.ok(&["credentials", "set", "sync-token"], Some(&token));
    for i in 0..5 {
        env.ok(&["log", "note", &format!("flashed device {i}")], None);
    }
    env.ok(&["credentials", "get", "device/dev-1/password"], None);
    env.ok(&["credentials", "list"], None);
    env.ok(&["credentials", "list", "--json"], None);
    env.ok(&["log", "show"], None);
    env.ok(&["log", "show", "--json"], None);
    env.ok(&["log", "verify"], None);
    env.ok(&["info"], None);
    assert_eq!(env.reveal("device/dev-1/password"), password);
    let key_hex = env.reveal("technician-key");
    assert_eq!(key_hex.len(), 64, "the technician key was generated on first use");

    let transcript = env.transcript.borrow();
    assert!(contains(&transcript, "flashed device 3"), "the transcript is what was printed");
    for s in [&password, &psk, &token, &key_hex] {
        assert!(!contains(&transcript, s), "a secret was printed: {s:.6}...");
        assert_eq!(files_containing(env.dir.path(), s), Vec::<String>::new(), "{s:.6}...");
    }
    assert!(!files_containing(env.dir.path(), "site/s1/m1/psk").is_empty(), "names are indexed");
}

#[test]
fn the_keyring_in_use_is_remembered_and_never_silently_switched() {
    require_session_bus();
    let dir = tempfile::tempdir().unwrap();
    let service = format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple());
    let run = |args: &[&str], bus: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fieldpatch"));
        c.args(args)
            .env("FIELDPATCH_DATA_DIR", dir.path())
            .env("FIELDPATCH_KEYRING_SERVICE", &service)
            .env_remove("FIELDPATCH_KEYRING");
        if !bus {
            c.env_remove("DBUS_SESSION_BUS_ADDRESS");
        }
        c.output().unwrap()
    };
    // First use with a session bus: the Secret Service is chosen (and remembered).
    let out = run(&["log", "note", "first"], true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without the bus the automatic choice does not fall back to another keyring (that would
    // mint a new technician key and split the visit log): it says what is wrong.
    let out = run(&["log", "note", "second"], false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keeps its credentials in the secret-service keyring"), "{err}");
    let out = run(&["log", "note", "third"], true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let show = String::from_utf8(run(&["log", "show"], true).stdout).unwrap();
    assert!(show.contains("first") && show.contains("third") && !show.contains("second"));
    // The two notes after the log's log_started.
    assert!(String::from_utf8(run(&["log", "verify"], true).stdout).unwrap().contains("3 events"));
    let out = run(&["credentials", "delete", "technician-key"], true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[cfg(unix)]
#[test]
fn set_prompts_on_a_terminal_without_echoing_the_secret() {
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;
    let env = Env::new("keyutils");
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldpatch"));
    cmd.args(["credentials", "set", "device/dev-1/password"])
        .env("FIELDPATCH_DATA_DIR", env.dir.path())
        .env("FIELDPATCH_KEYRING", env.backend)
        .env("FIELDPATCH_KEYRING_SERVICE", &env.service)
        .stdin(Stdio::from(std::fs::File::from(pty.slave)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the terminal's slave side
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let _ = tx.send(seen.clone());
        }
    });
    loop {
        let seen = rx.recv_timeout(Duration::from_secs(30)).expect("a prompt on stderr");
        if contains(&seen, "secret for device/dev-1/password") {
            break;
        }
    }
    let mut master = std::fs::File::from(pty.master);
    master.write_all(b"typed-secret\n").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    // Everything the terminal showed (its echo) is readable from the master until it reports EIO.
    let mut shown = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    assert!(!contains(&shown, "typed-secret"), "the secret was echoed: {shown:?}");
    let attrs = nix::sys::termios::tcgetattr(&master).unwrap();
    assert!(
        attrs.local_flags.contains(nix::sys::termios::LocalFlags::ECHO),
        "echo is restored after the prompt"
    );
    assert_eq!(env.reveal("device/dev-1/password"), "typed-secret");
}
