//! guest-network-get-interfaces.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

use crate::args::Args;
use crate::dispatch::Ctx;
use crate::error::{QgaError, QgaResult};

fn stats(text: &str, name: &str) -> Option<Value> {
    for line in text.lines().skip(2) {
        let (n, rest) = line.split_once(':')?;
        if n.trim() != name {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 12 {
            return None;
        }
        return Some(json!({
            "rx-bytes": f[0], "rx-packets": f[1], "rx-errs": f[2], "rx-dropped": f[3],
            "tx-bytes": f[8], "tx-packets": f[9], "tx-errs": f[10], "tx-dropped": f[11],
        }));
    }
    None
}

fn prefix_len(bytes: &[u8]) -> u32 {
    bytes.iter().map(|b| b.count_ones()).sum()
}

/// guest-network-get-interfaces.
pub fn get_interfaces(_: &Ctx, a: Args) -> QgaResult<Value> {
    a.finish()?;
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: ifap receives a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(QgaError::io(
            "getifaddrs failed",
            &std::io::Error::last_os_error(),
        ));
    }
    let netdev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    let mut ifs: std::collections::HashMap<String, Map<String, Value>> = Default::default();
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let info = ifs.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            if let Ok(hw) = std::fs::read_to_string(format!("/sys/class/net/{name}/address")) {
                let hw = hw.trim();
                if !hw.is_empty() {
                    m.insert("hardware-address".into(), json!(hw));
                }
            }
            m
        });
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it names.
        let fam = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let (addr, kind, prefix) = match fam {
            libc::AF_INET => {
                // SAFETY: family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    0
                } else {
                    // SAFETY: the netmask has the address's family.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    prefix_len(&m.sin_addr.s_addr.to_ne_bytes())
                };
                (ip.to_string(), "ipv4", prefix)
            }
            libc::AF_INET6 => {
                // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                let prefix = if ifa.ifa_netmask.is_null() {
                    0
                } else {
                    // SAFETY: the netmask has the address's family.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    prefix_len(&m.sin6_addr.s6_addr)
                };
                (ip.to_string(), "ipv6", prefix)
            }
            _ => continue,
        };
        let list = info.entry("ip-addresses").or_insert_with(|| json!([]));
        if let Value::Array(l) = list {
            l.push(json!({"ip-address": addr, "ip-address-type": kind, "prefix": prefix}));
        }
        if !info.contains_key("statistics") {
            if let Some(s) = stats(&netdev, &name) {
                info.insert("statistics".into(), s);
            }
        }
    }
    // SAFETY: ifap came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    let v: Vec<Value> = order
        .into_iter()
        .filter_map(|n| ifs.remove(&n))
        .map(Value::Object)
        .collect();
    Ok(json!(v))
}
