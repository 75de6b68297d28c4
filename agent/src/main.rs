//! `virtagent`: a qemu-ga compatible guest agent.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use agent::commands::{self, freeze};
use agent::config::{Cli, Config};
use agent::transport::{self, Method};
use agent::{Agent, AgentConfig};

fn daemonize() -> std::io::Result<()> {
    // SAFETY: called before any thread is started; fork/setsid/dup2 are
    // used the classic way and the parent exits immediately.
    unsafe {
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        match libc::fork() {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::umask(0o022);
        let _ = libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(())
}

/// Writes and locks the pid file; the file stays open (locked) for life.
fn write_pidfile(path: &Path) -> Result<std::fs::File, String> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("failed to open pid file {}: {e}", path.display()))?;
    // SAFETY: lockf on an fd we own.
    if unsafe { libc::lockf(f.as_raw_fd(), libc::F_TLOCK, 0) } != 0 {
        return Err(format!(
            "cannot lock pid file {}: another instance is running?",
            path.display()
        ));
    }
    f.set_len(0).map_err(|e| e.to_string())?;
    writeln!(f, "{}", std::process::id()).map_err(|e| e.to_string())?;
    Ok(f)
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; called before threads start.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!(
            "virtagent {} (QEMU Guest Agent compatible)",
            commands::basic::VERSION
        );
        return ExitCode::SUCCESS;
    }
    if cli
        .block_rpcs
        .iter()
        .chain(&cli.allow_rpcs)
        .any(|b| b == "help" || b == "?")
    {
        for n in commands::names() {
            println!("{n}");
        }
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::build(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtagent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.dump_conf {
        print!("{}", cfg.dump());
        return ExitCode::SUCCESS;
    }
    for n in cfg.block_rpcs.iter().chain(&cfg.allow_rpcs) {
        if commands::find(n).is_none() {
            eprintln!("virtagent: warning: unknown RPC '{n}' in allow/block list");
        }
    }
    if !cfg.statedir.is_absolute() {
        eprintln!("virtagent: statedir must be an absolute path");
        return ExitCode::FAILURE;
    }
    let method: Method = match cfg.method.parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("virtagent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cfg.daemonize {
        if let Err(e) = daemonize() {
            eprintln!("virtagent: daemonize failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = agent::logging::init(cfg.logfile.as_deref(), cfg.verbose) {
        eprintln!("virtagent: cannot open log file: {e}");
        return ExitCode::FAILURE;
    }
    let _pid_lock = match &cfg.pidfile {
        Some(p) => match write_pidfile(p) {
            Ok(f) => Some(f),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Minimal guests may lack /var/run: create the state directory.
    if let Err(e) = std::fs::create_dir_all(&cfg.statedir) {
        log::warn!(
            "cannot create state directory {}: {e}",
            cfg.statedir.display()
        );
    }
    let sigset = block_signals();
    let mut agent = Agent::new(AgentConfig {
        statedir: cfg.statedir.clone(),
        fsfreeze_hook: cfg.fsfreeze_hook.clone(),
        timeout: cfg.timeout,
        blocked: cfg.block_rpcs.clone(),
        allowed: if cfg.allow_rpcs.is_empty() {
            None
        } else {
            Some(cfg.allow_rpcs.clone())
        },
    });
    let shared = agent.shared();
    freeze::restore_frozen(&shared);
    let pidfile: Option<PathBuf> = cfg.pidfile.clone();
    // Bound before the signal thread starts, so that it removes exactly the socket made here.
    let (listener, sock) = if method == Method::UnixListen {
        match transport::bind_unix(&cfg.path) {
            Ok((l, b)) => (Some(l), Some(b)),
            Err(e) => {
                log::error!("cannot serve {}: {e}", cfg.path);
                eprintln!("virtagent: cannot serve {}: {e}", cfg.path);
                return ExitCode::FAILURE;
            }
        }
    } else {
        (None, None)
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigset holds the blocked termination signals.
        unsafe { libc::sigwait(&sigset, &mut sig) };
        log::info!("received signal {sig}, exiting");
        if shared.frozen.load(std::sync::atomic::Ordering::SeqCst) {
            let n = freeze::thaw_all(&shared);
            log::info!("thawed {n} filesystems at exit");
        }
        if let Some(p) = pidfile {
            let _ = std::fs::remove_file(p);
        }
        if let Some(s) = sock {
            s.remove();
        }
        std::process::exit(0);
    });
    log::info!(
        "virtagent {} started ({} {})",
        commands::basic::VERSION,
        cfg.method,
        cfg.path
    );
    match transport::serve(&mut agent, method, &cfg.path, listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("cannot serve {}: {e}", cfg.path);
            eprintln!("virtagent: cannot serve {}: {e}", cfg.path);
            ExitCode::FAILURE
        }
    }
}
