//! Network namespaces for isolated processes (`network: ""`, fishd as root).
//!
//! Each application gets the namespace `fish-<uid>` with one veth to the host
//! (`aqh<12 hex>` on the host side) and a single route: to the *process gateway*,
//! [`GATEWAY`], an address the host holds on an interface of its own (`fishgw0`) where
//! the runtime binds the metadata endpoint and the proxy. There is no default route, so
//! nothing else is reachable, and a firewall chain on the host-side veth
//! ([`crate::drivers::firewall`]) lets in only the gateway's metadata and proxy ports, in
//! case a process (run as root on purpose) adds routes of its own.
//!
//! Addresses come from [`POOL`] (link-local, never routed off the host): the namespace's
//! address is `/32`, reached from the host by a `/32` route through its veth.
//!
//! # Guarantees
//! - Names come from the uid, so a retried allocate finds (and reuses) what a crash
//!   left, and `remove` after a restart removes it.
//! - Deleting the namespace deletes its veth pair and so the host route.

use std::net::Ipv4Addr;
use std::process::Command;

use uuid::Uuid;

use crate::drivers::DriverError;

/// The host's address for isolated processes.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 64, 1);
/// The interface holding [`GATEWAY`] (one end of a veth pair whose other end idles, as
/// not every kernel has the dummy device).
pub const GATEWAY_IFACE: &str = "fishgw0";
const GATEWAY_PEER: &str = "fishgw1";
/// Addresses of namespaces: 169.254.64.2 – 169.254.127.254.
const POOL: (u32, u32) = (0xA9FE_4002, 0xA9FE_7FFE);

/// The namespace of an application.
pub fn namespace(uid: Uuid) -> String {
    format!("fish-{uid}")
}

/// The host-side veth of an application (15 bytes at most, as interface names must be).
pub fn host_iface(uid: Uuid) -> String {
    format!("aqh{}", &uid.simple().to_string()[20..])
}

fn child_iface(uid: Uuid) -> String {
    format!("aqc{}", &uid.simple().to_string()[20..])
}

/// Runs `ip` with `args`; the error has ip's own message.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Makes sure the host holds [`GATEWAY`]; the reason when it cannot (not root, no `ip`).
pub fn ensure_gateway() -> Result<Ipv4Addr, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("isolated processes need their own network namespace, which only a root fishd can make".into());
    }
    if ip(&["link", "show", GATEWAY_IFACE]).is_err() {
        match ip(&["link", "add", GATEWAY_IFACE, "type", "veth", "peer", "name", GATEWAY_PEER]) {
            Ok(_) => {}
            // Another fishd of this host made it meanwhile.
            Err(e) if e.contains("File exists") => {}
            Err(e) => return Err(format!("cannot create the process gateway interface: {e}")),
        }
    }
    let have = ip(&["-4", "-o", "addr", "show", "dev", GATEWAY_IFACE])?;
    if !have.contains(&format!("inet {GATEWAY}/32")) {
        match ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", GATEWAY_IFACE]) {
            Ok(_) => {}
            Err(e) if e.contains("File exists") => {}
            Err(e) => return Err(format!("cannot give the process gateway its address: {e}")),
        }
    }
    ip(&["link", "set", GATEWAY_IFACE, "up"])?;
    ip(&["link", "set", GATEWAY_PEER, "up"])?;
    Ok(GATEWAY)
}

/// The namespace of `uid`, made if missing; its address.
pub fn create(uid: Uuid) -> Result<Ipv4Addr, DriverError> {
    let ns = namespace(uid);
    let (host, child) = (host_iface(uid), child_iface(uid));
    if let Some(addr) = existing(uid) {
        return Ok(addr);
    }
    // Half-made by a crash: start over.
    remove(uid)?;
    let failed = |e: String| DriverError::failed(format!("cannot set up the network namespace {ns}: {e}"));
    let addr = free_address(uid).map_err(failed)?;
    let (cidr, gw) = (format!("{addr}/32"), format!("{GATEWAY}/32"));
    let steps: [&[&str]; 8] = [
        &["netns", "add", &ns],
        &["link", "add", &host, "type", "veth", "peer", "name", &child, "netns", &ns],
        &["link", "set", &host, "up"],
        &["-n", &ns, "link", "set", "lo", "up"],
        &["-n", &ns, "addr", "add", &cidr, "dev", &child],
        &["-n", &ns, "link", "set", &child, "up"],
        &["-n", &ns, "route", "add", &gw, "dev", &child],
        &["route", "add", &cidr, "dev", &host],
    ];
    for step in steps {
        if let Err(e) = ip(step) {
            let _ = remove(uid);
            return Err(failed(e));
        }
    }
    Ok(addr)
}

/// The address of a complete namespace of `uid`, if there is one.
fn existing(uid: Uuid) -> Option<Ipv4Addr> {
    ip(&["link", "show", &host_iface(uid)]).ok()?;
    let out = ip(&["-n", &namespace(uid), "-4", "-o", "addr", "show", "dev", &child_iface(uid)]).ok()?;
    out.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next()?.parse().ok()
}

/// An address of the pool no route uses yet, starting at one derived from the uid.
/// Callers serialize allocations, so two namespaces never pick the same one.
fn free_address(uid: Uuid) -> Result<Ipv4Addr, String> {
    let taken = ip(&["-4", "route", "show", "table", "main"])?;
    let size = POOL.1 - POOL.0 + 1;
    let start = (uid.as_u128() % u128::from(size)) as u32;
    (0..size)
        .map(|i| Ipv4Addr::from(POOL.0 + (start + i) % size))
        .find(|a| !taken.lines().any(|l| l.split_whitespace().next() == Some(&a.to_string())))
        .ok_or_else(|| "no free address left in 169.254.64.0/18".into())
}

/// Deletes the namespace of `uid` and its veth; fine when nothing is there.
pub fn remove(uid: Uuid) -> Result<(), DriverError> {
    let ns = namespace(uid);
    for args in [["netns", "del", ns.as_str()], ["link", "del", &host_iface(uid)]] {
        if let Err(e) = ip(&args)
            && !(e.contains("No such file") || e.contains("Cannot find device") || e.contains("does not exist"))
        {
            return Err(DriverError::failed(format!("cannot remove the network namespace {ns}: {e}")));
        }
    }
    Ok(())
}

/// The `nsenter` argument that runs a command in the namespace of `uid`.
pub fn nsenter_arg(uid: Uuid) -> String {
    format!("--net=/run/netns/{}", namespace(uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limits() {
        let uid = Uuid::now_v7();
        assert_eq!(host_iface(uid).len(), 15);
        assert_eq!(child_iface(uid).len(), 15);
        assert_ne!(host_iface(uid), child_iface(uid));
    }
}
