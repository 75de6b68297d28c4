//! Command line and configuration file (qemu-ga's options and keys).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Default virtio-serial port of the guest agent.
pub const DEFAULT_VIRTIO_PATH: &str = "/dev/virtio-ports/org.qemu.guest_agent.0";
/// Default serial port for isa-serial.
pub const DEFAULT_ISA_PATH: &str = "/dev/ttyS0";
/// Default pid file (used when daemonizing).
pub const DEFAULT_PIDFILE: &str = "/var/run/qemu-ga.pid";
/// Default state directory.
pub const DEFAULT_STATEDIR: &str = "/var/run";
/// Default fsfreeze hook when `-F` has no argument.
pub const DEFAULT_FSFREEZE_HOOK: &str = "/etc/qemu/fsfreeze-hook";
/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/qemu/qemu-ga.conf";

/// virtagent command line (qemu-ga compatible).
#[derive(Debug, Parser, Default)]
#[command(
    name = "virtagent",
    about = "QEMU Guest Agent compatible guest agent",
    disable_version_flag = true
)]
pub struct Cli {
    /// Transport method: virtio-serial (default), isa-serial, unix-listen.
    #[arg(short = 'm', long = "method")]
    pub method: Option<String>,
    /// Device or socket path.
    #[arg(short = 'p', long = "path")]
    pub path: Option<String>,
    /// Log file (default: stderr).
    #[arg(short = 'l', long = "logfile")]
    pub logfile: Option<PathBuf>,
    /// Pid file (written when daemonizing or when given).
    #[arg(short = 'f', long = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// Enable fsfreeze hook; default script /etc/qemu/fsfreeze-hook.
    #[arg(short = 'F', long = "fsfreeze-hook", num_args = 0..=1, default_missing_value = DEFAULT_FSFREEZE_HOOK)]
    pub fsfreeze_hook: Option<PathBuf>,
    /// State directory (holds qga.state).
    #[arg(short = 't', long = "statedir")]
    pub statedir: Option<PathBuf>,
    /// Log extra debugging information.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Print the version and exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    /// Become a daemon.
    #[arg(short = 'd', long = "daemonize")]
    pub daemonize: bool,
    /// Comma-separated RPCs to disable ("-b help" lists them).
    #[arg(
        short = 'b',
        long = "block-rpcs",
        alias = "blacklist",
        value_delimiter = ','
    )]
    pub block_rpcs: Vec<String>,
    /// Comma-separated RPCs to enable (all others disabled).
    #[arg(short = 'a', long = "allow-rpcs", value_delimiter = ',')]
    pub allow_rpcs: Vec<String>,
    /// Keep reopening the path when it goes away (always on; accepted).
    #[arg(short = 'r', long = "retry-path")]
    pub retry_path: bool,
    /// Print the effective configuration and exit.
    #[arg(short = 'D', long = "dump-conf")]
    pub dump_conf: bool,
    /// Configuration file (default /etc/qemu/qemu-ga.conf or $QGA_CONF).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Server-side timeout of one command, in seconds.
    #[arg(short = 'T', long = "timeout", value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transport method name.
    pub method: String,
    /// Channel path.
    pub path: String,
    /// Log file.
    pub logfile: Option<PathBuf>,
    /// Pid file.
    pub pidfile: Option<PathBuf>,
    /// fsfreeze hook.
    pub fsfreeze_hook: Option<PathBuf>,
    /// State directory.
    pub statedir: PathBuf,
    /// Debug logging.
    pub verbose: bool,
    /// Daemonize.
    pub daemonize: bool,
    /// Retry path (always effective here).
    pub retry_path: bool,
    /// Blocked RPCs.
    pub block_rpcs: Vec<String>,
    /// Allowed RPCs (empty: all).
    pub allow_rpcs: Vec<String>,
    /// Command timeout.
    pub timeout: Duration,
}

/// `[general]` keys of a GKeyFile-style configuration file.
pub fn parse_keyfile(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut group = String::new();
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            group = g.to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected key=value", n + 1));
        };
        if group == "general" {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(out)
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid boolean for {k}: '{v}'")),
    }
}

fn split_list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl Config {
    /// Merges the configuration file (if any) and the command line; the
    /// command line wins for scalars, lists accumulate.
    pub fn build(cli: &Cli) -> Result<Config, String> {
        let mut keys = Vec::new();
        let (path, explicit) = match (&cli.config, std::env::var_os("QGA_CONF")) {
            (Some(p), _) => (p.clone(), true),
            (None, Some(p)) => (PathBuf::from(p), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(t) => keys = parse_keyfile(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if explicit => return Err(format!("failed to read {}: {e}", path.display())),
            Err(_) => {}
        }
        let mut c = Config {
            method: "virtio-serial".into(),
            path: String::new(),
            logfile: None,
            pidfile: None,
            fsfreeze_hook: None,
            statedir: DEFAULT_STATEDIR.into(),
            verbose: false,
            daemonize: false,
            retry_path: false,
            block_rpcs: Vec::new(),
            allow_rpcs: Vec::new(),
            timeout: Duration::from_secs(30),
        };
        for (k, v) in &keys {
            match k.as_str() {
                "method" => c.method = v.clone(),
                "path" => c.path = v.clone(),
                "logfile" => c.logfile = Some(v.into()),
                "pidfile" => c.pidfile = Some(v.into()),
                "fsfreeze-hook" => c.fsfreeze_hook = Some(v.into()),
                "statedir" => c.statedir = v.into(),
                "verbose" => c.verbose = parse_bool(k, v)?,
                "daemon" | "daemonize" => c.daemonize = parse_bool(k, v)?,
                "retry-path" => c.retry_path = parse_bool(k, v)?,
                "block-rpcs" | "blacklist" => c.block_rpcs.extend(split_list(v)),
                "allow-rpcs" => c.allow_rpcs.extend(split_list(v)),
                "timeout" => {
                    c.timeout =
                        parse_timeout(v.parse().map_err(|_| format!("invalid timeout '{v}'"))?)?
                }
                other => log::warn!("unknown configuration key '{other}'"),
            }
        }
        if let Some(m) = &cli.method {
            c.method = m.clone();
        }
        if let Some(p) = &cli.path {
            c.path = p.clone();
        }
        if cli.logfile.is_some() {
            c.logfile = cli.logfile.clone();
        }
        if cli.pidfile.is_some() {
            c.pidfile = cli.pidfile.clone();
        }
        if cli.fsfreeze_hook.is_some() {
            c.fsfreeze_hook = cli.fsfreeze_hook.clone();
        }
        if let Some(s) = &cli.statedir {
            c.statedir = s.clone();
        }
        c.verbose |= cli.verbose;
        c.daemonize |= cli.daemonize;
        c.retry_path |= cli.retry_path;
        c.block_rpcs.extend(cli.block_rpcs.iter().cloned());
        c.allow_rpcs.extend(cli.allow_rpcs.iter().cloned());
        if let Some(t) = cli.timeout {
            c.timeout = parse_timeout(t)?;
        }
        if !matches!(
            c.method.as_str(),
            "virtio-serial" | "isa-serial" | "unix-listen"
        ) {
            return Err(format!(
                "invalid method '{}' (virtio-serial, isa-serial or unix-listen)",
                c.method
            ));
        }
        if c.path.is_empty() {
            c.path = if c.method == "isa-serial" {
                DEFAULT_ISA_PATH
            } else {
                DEFAULT_VIRTIO_PATH
            }
            .into();
            if c.method == "unix-listen" {
                return Err("unix-listen needs --path".into());
            }
        }
        if c.daemonize && c.pidfile.is_none() {
            c.pidfile = Some(DEFAULT_PIDFILE.into());
        }
        Ok(c)
    }

    /// The configuration in `-D` format.
    pub fn dump(&self) -> String {
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let mut s = String::from("[general]\n");
        s += &format!("daemon={}\n", self.daemonize);
        s += &format!("method={}\n", self.method);
        s += &format!("path={}\n", self.path);
        if self.logfile.is_some() {
            s += &format!("logfile={}\n", opt(&self.logfile));
        }
        s += &format!(
            "pidfile={}\n",
            self.pidfile
                .as_ref()
                .map_or(DEFAULT_PIDFILE.into(), |p| p.display().to_string())
        );
        if self.fsfreeze_hook.is_some() {
            s += &format!("fsfreeze-hook={}\n", opt(&self.fsfreeze_hook));
        }
        s += &format!("statedir={}\n", self.statedir.display());
        s += &format!("verbose={}\n", self.verbose);
        s += &format!("retry-path={}\n", self.retry_path);
        s += &format!(
            "block-rpcs={}\n",
            self.block_rpcs
                .iter()
                .map(|x| format!("{x};"))
                .collect::<String>()
        );
        if !self.allow_rpcs.is_empty() {
            s += &format!(
                "allow-rpcs={}\n",
                self.allow_rpcs
                    .iter()
                    .map(|x| format!("{x};"))
                    .collect::<String>()
            );
        }
        s += &format!("timeout={}\n", self.timeout.as_secs_f64());
        s
    }
}

fn parse_timeout(t: f64) -> Result<Duration, String> {
    if !(t.is_finite() && t > 0.0 && t <= 86400.0) {
        return Err(format!(
            "invalid timeout {t}: must be in (0, 86400] seconds"
        ));
    }
    Ok(Duration::from_secs_f64(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyfile_and_merge() {
        let dir = std::env::temp_dir().join(format!("virtagent-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("qga.conf");
        std::fs::write(&f, "# c\n[general]\nmethod=unix-listen\npath=/tmp/x.sock\nverbose=true\nblock-rpcs=guest-ping;guest-info\ntimeout=2.5\n[other]\npath=/nope\n").unwrap();
        let cli = Cli::parse_from([
            "virtagent",
            "-c",
            f.to_str().unwrap(),
            "-b",
            "guest-exec",
            "-p",
            "/tmp/y.sock",
        ]);
        let c = Config::build(&cli).unwrap();
        assert_eq!(c.method, "unix-listen");
        assert_eq!(c.path, "/tmp/y.sock");
        assert!(c.verbose);
        assert_eq!(c.block_rpcs, vec!["guest-ping", "guest-info", "guest-exec"]);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c
            .dump()
            .contains("block-rpcs=guest-ping;guest-info;guest-exec;"));
        let cli = Cli::parse_from(["virtagent", "-c", f.to_str().unwrap(), "-m", "bogus"]);
        assert!(Config::build(&cli).is_err());
        let cli = Cli::parse_from(["virtagent", "-F"]);
        assert_eq!(
            cli.fsfreeze_hook.unwrap(),
            PathBuf::from(DEFAULT_FSFREEZE_HOOK)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
