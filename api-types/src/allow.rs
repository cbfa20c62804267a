//! Allow rules: what an isolated resource may reach through the node's proxy.
//!
//! A rule is `TARGET:PORT`, where TARGET is a host name (`artifacts.corp`), a suffix
//! (`*.debian.org`, any name strictly under it), an address (`10.1.2.3`, `[::1]`) or a
//! network (`10.1.0.0/16`), and PORT a number or `*` (any port). A name rule matches
//! the name the resource asked for; an address or network rule matches the address
//! connected to (the one asked for, or the ones the proxy resolved a name to).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;

/// One parsed allow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    target: Target,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Exact name, lower case.
    Host(String),
    /// `*.suffix`: stored as `.suffix`, lower case.
    Suffix(String),
    /// An address and its prefix length (32/128 for a single address).
    Net(IpAddr, u8),
}

/// Why a rule does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{rule:?} is not an allow rule ({reason}); expected host:port, *.suffix:port, CIDR:port or *:port forms")]
pub struct AllowRuleError {
    rule: String,
    reason: &'static str,
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AllowRuleError { rule: s.to_owned(), reason };
        let (target, port) = s.rsplit_once(':').ok_or_else(|| err("no :port"))?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| err("port must be 1-65535 or *"))?),
        };
        let target = parse_target(target).ok_or_else(|| err("bad host, suffix or network"))?;
        Ok(AllowRule { target, port })
    }
}

fn parse_target(t: &str) -> Option<Target> {
    let bare = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(t);
    let (addr, prefix) = match bare.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (bare, None),
    };
    if let Ok(ip) = addr.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|l| *l <= max)?,
            None => max,
        };
        return Some(Target::Net(ip, len));
    }
    if prefix.is_some() || t.starts_with('[') {
        return None;
    }
    if let Some(suffix) = t.strip_prefix("*.") {
        return valid_name(suffix).then(|| Target::Suffix(format!(".{}", suffix.to_ascii_lowercase())));
    }
    valid_name(t).then(|| Target::Host(t.to_ascii_lowercase()))
}

/// Letters, digits, `-`, `_` in dot-separated labels of 1..63 bytes.
pub fn valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl AllowRule {
    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Whether the rule lets a resource ask for `name` on `port` by name.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.port_ok(port)
            && match &self.target {
                Target::Host(h) => *h == name,
                Target::Suffix(s) => name.ends_with(s.as_str()) && name.len() > s.len(),
                Target::Net(..) => false,
            }
    }

    /// Whether the rule names addresses (an address or a network), not names.
    pub fn is_address_rule(&self) -> bool {
        matches!(self.target, Target::Net(..))
    }

    /// Whether the rule lets a resource connect to `addr` on `port`.
    pub fn allows_addr(&self, addr: IpAddr, port: u16) -> bool {
        let Target::Net(net, len) = self.target else { return false };
        self.port_ok(port) && in_net(addr.to_canonical(), net.to_canonical(), len)
    }
}

fn in_net(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Host(h) => write!(f, "{h}")?,
            Target::Suffix(s) => write!(f, "*{s}")?,
            Target::Net(IpAddr::V6(a), 128) => write!(f, "[{a}]")?,
            Target::Net(a, l) if (a.is_ipv4() && *l == 32) => write!(f, "{a}")?,
            Target::Net(a, l) => write!(f, "{a}/{l}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => write!(f, ":*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_suffixes_and_ports() {
        assert!(rule("artifacts.corp:443").allows_name("Artifacts.Corp", 443));
        assert!(!rule("artifacts.corp:443").allows_name("artifacts.corp", 80));
        assert!(rule("*.debian.org:443").allows_name("deb.debian.org", 443));
        assert!(!rule("*.debian.org:443").allows_name("debian.org", 443));
        assert!(!rule("*.debian.org:443").allows_name("evildebian.org", 443));
        assert!(rule("localhost:*").allows_name("localhost", 9));
        assert!(!rule("localhost:*").allows_addr("127.0.0.1".parse().unwrap(), 9));
    }

    #[test]
    fn networks_and_addresses() {
        let r = rule("10.1.0.0/16:22");
        assert!(r.allows_addr("10.1.200.3".parse().unwrap(), 22));
        assert!(!r.allows_addr("10.2.0.1".parse().unwrap(), 22));
        assert!(!r.allows_name("10.1.0.1", 22));
        assert!(rule("127.0.0.1:*").allows_addr("::ffff:127.0.0.1".parse().unwrap(), 1));
        assert!(rule("[::1]:80").allows_addr("::1".parse().unwrap(), 80));
        assert!(rule("0.0.0.0/0:*").allows_addr("8.8.8.8".parse().unwrap(), 53));
    }

    #[test]
    fn bad_rules_say_why() {
        for bad in ["", "host", "host:0", "host:99999", "*.:80", "a..b:1", "10.0.0.0/33:1", "[name]:1", "x/8:1", "*:80"]
        {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad} parsed");
        }
        assert_eq!(rule("*.Debian.org:*").to_string(), "*.debian.org:*");
        assert_eq!(rule("10.1.0.0/16:22").to_string(), "10.1.0.0/16:22");
    }
}
