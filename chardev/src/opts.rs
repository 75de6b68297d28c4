//! QEMU-style option strings (`kind,key=value,flag,...`, `,,` escapes a comma) and the
//! chardev specifications built from them.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// A bad option string; the message names the option.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct OptsError(pub String);

/// A parsed option string: an optional leading bare word, then `key=value` pairs in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opts {
    pub head: Option<String>,
    pub pairs: Vec<(String, Option<String>)>,
}

impl Opts {
    /// Splits `s`. When `head_key` is given, a first element without `=` is the head value.
    pub fn parse(s: &str, head_key: bool) -> Result<Opts, OptsError> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    parts.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        let mut o = Opts::default();
        for (i, p) in parts.into_iter().enumerate() {
            if p.is_empty() {
                if i == 0 {
                    return Err(OptsError(format!("empty option string '{s}'")));
                }
                continue;
            }
            match p.split_once('=') {
                Some((k, v)) => o.pairs.push((k.to_string(), Some(v.to_string()))),
                None if i == 0 && head_key => o.head = Some(p),
                None => o.pairs.push((p, None)),
            }
        }
        Ok(o)
    }

    /// Removes and returns option `key`'s value (`Some(None)` for a bare flag).
    pub fn take(&mut self, key: &str) -> Option<Option<String>> {
        let i = self.pairs.iter().position(|(k, _)| k == key)?;
        Some(self.pairs.remove(i).1)
    }

    /// Removes `key` and requires a value.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, OptsError> {
        match self.take(key) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(OptsError(format!("option '{key}' needs a value"))),
        }
    }

    /// Removes `key` as an on/off switch (bare `key` means on).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, OptsError> {
        match self.take(key) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => match v.as_str() {
                "on" | "yes" | "true" | "y" => Ok(Some(true)),
                "off" | "no" | "false" | "n" => Ok(Some(false)),
                _ => Err(OptsError(format!(
                    "option '{key}' takes on or off, not '{v}'"
                ))),
            },
        }
    }

    /// Removes `key` as a number of seconds (fractions allowed).
    pub fn take_secs(&mut self, key: &str) -> Result<Option<Duration>, OptsError> {
        match self.take_str(key)? {
            None => Ok(None),
            Some(v) => match v.parse::<f64>() {
                Ok(f) if f.is_finite() && (0.0..=86400.0 * 365.0).contains(&f) => {
                    Ok(Some(Duration::from_secs_f64(f)))
                }
                _ => Err(OptsError(format!(
                    "option '{key}' takes a number of seconds, not '{v}'"
                ))),
            },
        }
    }

    /// Fails naming the first option nobody took.
    pub fn finish(self, what: &str) -> Result<(), OptsError> {
        match self.pairs.first() {
            Some((k, _)) => Err(OptsError(format!("{what}: unknown option '{k}'"))),
            None => Ok(()),
        }
    }
}

pub use qmp::SocketAddr;

/// A socket chardev's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSpec {
    pub addr: SocketAddr,
    pub server: bool,
    /// Server: block start-up until a client connects.
    pub wait: bool,
    /// Client: retry the connection this often after it fails or closes.
    pub reconnect: Option<Duration>,
}

/// What a `-chardev` option asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Null,
    Socket(SocketSpec),
    File {
        path: PathBuf,
        append: bool,
    },
    Stdio,
    Pty,
    Ringbuf {
        size: usize,
    },
    /// The QMP proxy; with `path`, it talks to a host-side agent on that unix socket.
    QmpProxy {
        path: Option<PathBuf>,
        timeout: Duration,
        reconnect: Duration,
    },
}

/// A parsed `-chardev` option.
#[derive(Debug, Clone, PartialEq)]
pub struct ChardevSpec {
    pub id: String,
    pub backend: Backend,
}

/// Default host-side timeout of a `qmp_proxy` chardev.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default reconnect interval of a `qmp_proxy` chardev with `path=`.
pub const DEFAULT_PROXY_RECONNECT: Duration = Duration::from_millis(250);

fn socket_spec(
    o: &mut Opts,
    addr: SocketAddr,
    server_default: bool,
    wait_default: bool,
) -> Result<SocketSpec, OptsError> {
    let server = o.take_bool("server")?.unwrap_or(server_default);
    let mut wait = o.take_bool("wait")?.unwrap_or(wait_default);
    if o.take_bool("nowait")? == Some(true) {
        wait = false;
    }
    let reconnect = o.take_secs("reconnect")?;
    if server && reconnect.is_some() {
        return Err(OptsError(
            "option 'reconnect' is for client sockets (server=off)".into(),
        ));
    }
    Ok(SocketSpec {
        addr,
        server,
        wait: server && wait,
        reconnect: reconnect.filter(|d| !d.is_zero()),
    })
}

fn check_id(id: &str) -> Result<(), OptsError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(OptsError(format!(
            "invalid chardev id '{id}': use letters, digits, '-', '_', '.', starting with a letter"
        )))
    }
}

impl ChardevSpec {
    /// Parses a `-chardev` argument such as `socket,id=c0,path=/tmp/s,server=on,wait=off`.
    pub fn parse(s: &str) -> Result<ChardevSpec, OptsError> {
        let mut o = Opts::parse(s, true)?;
        let kind = o
            .head
            .clone()
            .ok_or_else(|| OptsError(format!("-chardev '{s}': the backend name comes first")))?;
        let id = o
            .take_str("id")?
            .ok_or_else(|| OptsError(format!("-chardev {kind}: option 'id' is required")))?;
        check_id(&id)?;
        let backend = match kind.as_str() {
            "null" => Backend::Null,
            "socket" => {
                let path = o.take_str("path")?;
                let host = o.take_str("host")?;
                let port = o.take_str("port")?;
                let addr = match (path, host, port) {
                    (Some(p), None, None) => SocketAddr::Unix(PathBuf::from(p)),
                    (None, h, Some(p)) => {
                        p.parse::<u16>().map_err(|_| {
                            OptsError(format!("-chardev socket: option 'port' is not a port: '{p}'"))
                        })?;
                        SocketAddr::Tcp(format!("{}:{p}", h.unwrap_or_else(|| "127.0.0.1".into())))
                    }
                    _ => {
                        return Err(OptsError(
                            "-chardev socket: give either 'path' (unix) or 'port' (tcp, with optional 'host')"
                                .into(),
                        ))
                    }
                };
                Backend::Socket(socket_spec(&mut o, addr, false, true)?)
            }
            "file" => {
                let path = o
                    .take_str("path")?
                    .ok_or_else(|| OptsError("-chardev file: option 'path' is required".into()))?;
                let append = o.take_bool("append")?.unwrap_or(false);
                Backend::File {
                    path: PathBuf::from(path),
                    append,
                }
            }
            "stdio" => {
                // QEMU's `signal=` (ctrl-c handling) has no effect here; accept it for compatibility.
                let _ = o.take_bool("signal")?;
                Backend::Stdio
            }
            "pty" => Backend::Pty,
            "ringbuf" | "memory" => {
                let size = match o.take_str("size")? {
                    None => 65536,
                    Some(v) => parse_size(&v).ok_or_else(|| {
                        OptsError(format!("-chardev ringbuf: option 'size' is not a size: '{v}'"))
                    })?,
                };
                if !size.is_power_of_two() || size > (1 << 30) {
                    return Err(OptsError(
                        "-chardev ringbuf: option 'size' must be a power of two up to 1G".into(),
                    ));
                }
                Backend::Ringbuf { size }
            }
            "qmp_proxy" => Backend::QmpProxy {
                path: o.take_str("path")?.map(PathBuf::from),
                timeout: o.take_secs("timeout")?.unwrap_or(DEFAULT_PROXY_TIMEOUT),
                reconnect: o.take_secs("reconnect")?.unwrap_or(DEFAULT_PROXY_RECONNECT),
            },
            other => {
                return Err(OptsError(format!(
                    "-chardev: unknown backend '{other}' (known: null, socket, file, stdio, pty, ringbuf, qmp_proxy)"
                )))
            }
        };
        if let Backend::QmpProxy { timeout, .. } = &backend {
            if timeout.is_zero() {
                return Err(OptsError(
                    "-chardev qmp_proxy: option 'timeout' must be more than 0".into(),
                ));
            }
        }
        o.finish(&format!("-chardev {kind}"))?;
        Ok(ChardevSpec { id, backend })
    }
}

/// Parses a QEMU socket address as `-qmp`/`-monitor` take it: `unix:PATH[,opts]`,
/// `tcp:[HOST]:PORT[,opts]`, or a bare path. Listening without waiting is the default there
/// (QEMU wants `server` spelled out and then waits; a monitor should neither be unreachable nor
/// hold up start-up unless asked with `wait=on`).
pub fn parse_socket_uri(s: &str) -> Result<SocketSpec, OptsError> {
    let mut o = Opts::parse(s, true)?;
    let head = o
        .head
        .take()
        .ok_or_else(|| OptsError(format!("'{s}': expected unix:PATH or tcp:HOST:PORT")))?;
    let addr = if let Some(p) = head.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(OptsError(format!("'{s}': empty unix socket path")));
        }
        SocketAddr::Unix(PathBuf::from(p))
    } else if let Some(a) = head.strip_prefix("tcp:") {
        let (h, p) = a
            .rsplit_once(':')
            .ok_or_else(|| OptsError(format!("'{s}': expected tcp:HOST:PORT")))?;
        p.parse::<u16>()
            .map_err(|_| OptsError(format!("'{s}': '{p}' is not a port")))?;
        let h = if h.is_empty() { "127.0.0.1" } else { h };
        SocketAddr::Tcp(format!("{h}:{p}"))
    } else if head.starts_with('/') || head.starts_with('.') {
        SocketAddr::Unix(PathBuf::from(head))
    } else {
        return Err(OptsError(format!(
            "'{s}': expected unix:PATH or tcp:HOST:PORT"
        )));
    };
    let spec = socket_spec(&mut o, addr, true, false)?;
    o.finish(s)?;
    Ok(spec)
}

/// `65536`, `64K`, `1M`, `1G`.
pub fn parse_size(v: &str) -> Option<usize> {
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1usize << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_escapes() {
        let o = Opts::parse("socket,id=a,path=/tmp/x,,y,server", true).unwrap();
        assert_eq!(o.head.as_deref(), Some("socket"));
        assert_eq!(
            o.pairs,
            vec![
                ("id".into(), Some("a".into())),
                ("path".into(), Some("/tmp/x,y".into())),
                ("server".into(), None)
            ]
        );
    }

    #[test]
    fn chardev_specs() {
        let s = ChardevSpec::parse("socket,id=c0,path=/tmp/s,server=on,wait=off").unwrap();
        assert_eq!(
            s.backend,
            Backend::Socket(SocketSpec {
                addr: SocketAddr::Unix("/tmp/s".into()),
                server: true,
                wait: false,
                reconnect: None
            })
        );
        let s = ChardevSpec::parse("qmp_proxy,id=qga0,path=/tmp/a.sock,timeout=2.5").unwrap();
        assert_eq!(
            s.backend,
            Backend::QmpProxy {
                path: Some("/tmp/a.sock".into()),
                timeout: Duration::from_millis(2500),
                reconnect: DEFAULT_PROXY_RECONNECT
            }
        );
        assert_eq!(
            ChardevSpec::parse("socket,id=x,path=/a,bogus=1")
                .unwrap_err()
                .0,
            "-chardev socket: unknown option 'bogus'"
        );
        assert!(ChardevSpec::parse("socket,path=/a")
            .unwrap_err()
            .0
            .contains("'id'"));
        assert!(ChardevSpec::parse("qmp_proxy,id=q,timeout=x")
            .unwrap_err()
            .0
            .contains("timeout"));
        assert!(ChardevSpec::parse("ringbuf,id=r,size=1000").is_err());
        assert_eq!(
            ChardevSpec::parse("ringbuf,id=r,size=4K").unwrap().backend,
            Backend::Ringbuf { size: 4096 }
        );
        assert!(ChardevSpec::parse("bogus,id=r")
            .unwrap_err()
            .0
            .contains("unknown backend"));
    }

    #[test]
    fn socket_uris() {
        let s = parse_socket_uri("unix:/tmp/q.sock,server=on,wait=off").unwrap();
        assert_eq!(s.addr, SocketAddr::Unix("/tmp/q.sock".into()));
        assert!(s.server && !s.wait);
        let s = parse_socket_uri("tcp::4444,server,nowait").unwrap();
        assert_eq!(s.addr, SocketAddr::Tcp("127.0.0.1:4444".into()));
        assert!(s.server && !s.wait);
        assert!(parse_socket_uri("unix:/x,wat=1")
            .unwrap_err()
            .0
            .contains("'wat'"));
        assert!(parse_socket_uri("tcp:host").is_err());
    }
}
