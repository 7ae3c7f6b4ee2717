//! Which peers may speak for a client: the `--trusted-proxy CIDR` list.
//!
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are claims any client can
//! make. The router keeps them only from a peer inside one of [`RouterConfig::trusted_proxies`]
//! (a load balancer or CDN in front of it), and appends that peer to `X-Forwarded-For`; from
//! anyone else it replaces them with what it saw itself. Default: nobody is trusted.
//!
//! [`RouterConfig::trusted_proxies`]: crate::RouterConfig::trusted_proxies

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network, `ADDR/BITS` (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.7`,
/// meaning `/32` or `/128`).
///
/// IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`, what a dual-stack listener reports) match IPv4
/// networks, so one list works on either kind of listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, with the host bits cleared.
    network: IpAddr,
    /// The prefix length.
    bits: u8,
}

/// Why a `--trusted-proxy` value is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("{0:?} is not an IP address; expected a network like 10.0.0.0/8 or fd00::/8")]
    Address(String),
    /// The prefix length is not a number within the address's size.
    #[error("{given:?} is not a prefix length for this address; expected 0 to {max}")]
    Bits {
        /// What was given after `/`.
        given: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

impl Cidr {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(self.bits) & u32::from(ip) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(self.bits) & u128::from(ip) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, bits) = match s.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        // A mapped address is an IPv4 one: `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
        let (ip, offset) = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => (ip.to_canonical(), 96),
            _ => (ip, 0),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(given) => given
                .parse::<u8>()
                .ok()
                .and_then(|b| b.checked_sub(offset))
                .filter(|b| *b <= max)
                .ok_or_else(|| CidrError::Bits {
                    given: given.to_owned(),
                    max: max + offset,
                })?,
        };
        let network = match ip {
            IpAddr::V4(v4) => IpAddr::from((u32::from(v4) & mask32(bits)).to_be_bytes()),
            IpAddr::V6(v6) => IpAddr::from((u128::from(v6) & mask128(bits)).to_be_bytes()),
        };
        Ok(Cidr { network, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.bits)
    }
}

/// Whether `ip` is inside any of `networks`.
pub(crate) fn trusted(networks: &[Cidr], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.1.0.0/16".parse().expect("v4");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            net.contains(ip("::ffff:10.1.0.9")),
            "mapped peers match v4 networks"
        );
        let host: Cidr = "192.0.2.7".parse().expect("single address");
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().expect("everything");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let loose: Cidr = "10.1.2.3/8".parse().expect("host bits are cleared");
        assert_eq!(loose.to_string(), "10.0.0.0/8");
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().expect("mapped network");
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_networks_say_what_is_wrong() {
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Bits { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Bits { max: 128, .. })
        ));
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("".parse::<Cidr>().is_err());
    }
}
