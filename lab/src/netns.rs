//! Private networks for tests: Linux network namespaces joined by a veth pair, so multicast
//! (mDNS) and addresses other than loopback can be exercised without a packet reaching the
//! machine's real network.
//!
//! Design decisions:
//! - Namespaces are made with iproute2 (`ip netns add`), named `fpl<pid>x<n>`, so a namespace
//!   left behind by a killed test process can be recognised and removed by the next one (its
//!   pid is gone). They are deleted when the [`Netns`] is dropped, also when a test fails (the
//!   drop runs during unwinding); deleting a namespace deletes its end of a veth pair, and so
//!   the pair.
//! - Code runs inside a namespace on a dedicated thread that calls `setns(2)` first
//!   ([`Netns::run`], [`Netns::spawn`]): a thread's network namespace is its own, and threads it
//!   starts (an mDNS daemon, tokio's blocking pool of a runtime built there) inherit it.
//!   Programs run inside with `ip netns exec` ([`Netns::command`]).
//! - Addresses come from TEST-NET-1 (192.0.2.0/24, RFC 5737), which is never routed: even a
//!   mistake could not address a real host.
//! - Without root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`) or iproute2 this fails with
//!   [`NetnsError::Unavailable`], saying so: a test that needs a namespace fails loudly instead of
//!   passing without testing anything.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Errors making or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespaces are unavailable here: {0}. Tests that use them must run as root (CAP_SYS_ADMIN and CAP_NET_ADMIN) with iproute2 (`ip`) installed"
    )]
    Unavailable(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot enter network namespace {name}: {source}")]
    Enter { name: String, source: std::io::Error },
}

impl NetnsError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            NetnsError::Unavailable(_) => "netns_unavailable",
            NetnsError::Command { .. } => "netns_command_failed",
            NetnsError::Enter { .. } => "netns_enter_failed",
        }
    }
}

const PREFIX: &str = "fpl";
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetnsError::Unavailable(format!("cannot run `ip`: {e}")))?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Remove namespaces of this module whose process is gone.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('x').next()) else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

/// A network namespace of this process, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Make a new namespace with its loopback up (and multicast on, so mDNS can run on it).
    pub fn create() -> Result<Netns, NetnsError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(NetnsError::Unavailable("this process does not run as root".into()));
        }
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{n}", std::process::id());
        ip(&["netns", "add", &name]).map_err(|e| NetnsError::Unavailable(e.to_string()))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["link", "set", "lo", "multicast", "on"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run `ip -n NAME ARGS...`; its output.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which then becomes
    /// `program`: killing the child kills the program).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `f` on a new thread inside the namespace; a panic in `f` is resumed here.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        match self.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Start `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, NetnsError>> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let enter = |source: std::io::Error| NetnsError::Enter { name: name.clone(), source };
            let file = std::fs::File::open(format!("/run/netns/{name}")).map_err(enter)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| enter(e.into()))?;
            Ok(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// Two namespaces joined by a veth pair: `a` at 192.0.2.1/24 on `if_a`, `b` at 192.0.2.2/24 on
/// `if_b`, both up.
#[derive(Debug)]
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    pub if_a: String,
    pub if_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
}

impl VethPair {
    /// Make the two namespaces and the link between them; waits until both ends are up.
    pub fn create() -> Result<VethPair, NetnsError> {
        let a = Netns::create()?;
        let b = Netns::create()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names have at most 15 bytes: "fv" + pid (7) + "x" + n + "a".
        let if_a = format!("fv{}x{n}a", std::process::id());
        let if_b = format!("fv{}x{n}b", std::process::id());
        ip(&[
            "link",
            "add",
            &if_a,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &if_b,
            "netns",
            b.name(),
        ])?;
        let (addr_a, addr_b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        for (ns, ifname, addr) in [(&a, &if_a, addr_a), (&b, &if_b, addr_b)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
            ns.ip(&["link", "set", ifname, "multicast", "on", "up"])?;
        }
        let pair = VethPair { a, b, if_a, if_b, addr_a, addr_b };
        pair.wait_up(Duration::from_secs(5))?;
        Ok(pair)
    }

    fn wait_up(&self, within: Duration) -> Result<(), NetnsError> {
        let until = Instant::now() + within;
        loop {
            let up = |ns: &Netns, ifname: &str| {
                ns.ip(&["-o", "link", "show", ifname]).is_ok_and(|s| s.contains("state UP"))
            };
            if up(&self.a, &self.if_a) && up(&self.b, &self.if_b) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(NetnsError::Command {
                    command: format!("ip link set {} up", self.if_a),
                    stderr: format!("the veth pair did not come up within {within:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_namespaces_say_what_is_needed() {
        let e = NetnsError::Unavailable("this process does not run as root".into());
        assert!(e.to_string().contains("root"), "{e}");
        assert_eq!(e.code(), "netns_unavailable");
    }
}
