//! `human-monitor-command`: QEMU's human monitor (HMP) for the commands this VMM has, so that
//! `qmp-shell -H` and scripts that send HMP lines through QMP work.
//!
//! Each HMP command runs the QMP command it stands for and prints the result the way QEMU 7.2
//! prints it (texts observed against `qemu-system-x86_64 -M none`). Output lines end in `\r\n`
//! as QEMU's monitor writes them. Failures are part of the text, as in QEMU: a QMP error prints
//! `Error: <desc>`, a bad line prints what was wrong and `Try "help <cmd>" ...`; the QMP reply
//! itself is a success either way. An HMP command whose QMP command the machine lacks is
//! unknown here.

use crate::protocol::QmpError;
use serde_json::{json, Map, Value};

/// Runs one QMP command (name, arguments) on the machine.
pub type RunQmp<'a> = dyn FnMut(&str, Map<String, Value>) -> Result<Value, QmpError> + 'a;

/// The machine HMP runs on: which QMP commands it has, and running one.
pub struct Target<'a> {
    pub has: &'a dyn Fn(&str) -> bool,
    pub exec: &'a mut RunQmp<'a>,
}

#[derive(Clone, Copy)]
enum Arg {
    /// `s`: a word, or a double-quoted string with `\n \r \t \\ \" \'` escapes.
    Str,
    /// `i`: a 32-bit integer, decimal or `0x` hexadecimal.
    Int,
}

struct Cmd {
    /// Name and aliases as QEMU's help shows them, e.g. `stop|s`.
    names: &'static str,
    /// Argument names for the help line.
    params: &'static str,
    help: &'static str,
    args: &'static [(&'static str, Arg)],
    /// The QMP command this one runs.
    qmp: &'static str,
}

const COMMANDS: &[Cmd] = &[
    Cmd {
        names: "cont|c",
        params: "",
        help: "resume emulation",
        args: &[],
        qmp: "cont",
    },
    Cmd {
        names: "quit|q",
        params: "",
        help: "quit the emulator",
        args: &[],
        qmp: "quit",
    },
    Cmd {
        names: "ringbuf_read",
        params: "device size",
        help: "Read from a ring buffer character device",
        args: &[("device", Arg::Str), ("size", Arg::Int)],
        qmp: "ringbuf-read",
    },
    Cmd {
        names: "ringbuf_write",
        params: "device data",
        help: "Write to a ring buffer character device",
        args: &[("device", Arg::Str), ("data", Arg::Str)],
        qmp: "ringbuf-write",
    },
    Cmd {
        names: "stop|s",
        params: "",
        help: "stop emulation",
        args: &[],
        qmp: "stop",
    },
    Cmd {
        names: "system_powerdown",
        params: "",
        help: "send system power down event",
        args: &[],
        qmp: "system_powerdown",
    },
    Cmd {
        names: "system_reset",
        params: "",
        help: "reset the system",
        args: &[],
        qmp: "system_reset",
    },
];

const INFO: &[Cmd] = &[
    Cmd {
        names: "chardev",
        params: "",
        help: "show the character devices",
        args: &[],
        qmp: "query-chardev",
    },
    Cmd {
        names: "kvm",
        params: "",
        help: "show KVM information",
        args: &[],
        qmp: "query-kvm",
    },
    Cmd {
        names: "name",
        params: "",
        help: "show the current VM name",
        args: &[],
        qmp: "query-name",
    },
    Cmd {
        names: "status",
        params: "",
        help: "show the current VM status (running|paused)",
        args: &[],
        qmp: "query-status",
    },
    Cmd {
        names: "version",
        params: "",
        help: "show the version of QEMU",
        args: &[],
        qmp: "query-version",
    },
];

const HELP_LINE: &str = "help|? [cmd] -- show the help\n";
const INFO_LINE: &str = "info [subcommand] -- show various information about the system state\n";

impl Cmd {
    fn is(&self, word: &str) -> bool {
        self.names.split('|').any(|n| n == word)
    }

    fn help_line(&self, prefix: &str) -> String {
        format!("{prefix}{} {} -- {}\n", self.names, self.params, self.help)
    }
}

/// Runs the HMP command line `line` on `t` and returns its output.
pub fn run(line: &str, t: &mut Target<'_>) -> String {
    let mut out = String::new();
    run_line(line, t, &mut out);
    out.replace('\n', "\r\n")
}

fn run_line(line: &str, t: &mut Target<'_>, out: &mut String) {
    let mut rest = line.trim_start();
    let word = take_word(&mut rest);
    if word.is_empty() {
        return;
    }
    if word == "help" || word == "?" {
        help(rest.trim(), t, out);
        return;
    }
    if word == "info" {
        let sub = take_word(&mut rest);
        if sub.is_empty() {
            list(INFO, "info ", t, out);
            return;
        }
        match find(INFO, sub, t) {
            Some(c) => call(c, sub, &format!("info {sub}"), rest, t, out),
            None => out.push_str(&format!("unknown command: 'info {sub}'\n")),
        }
        return;
    }
    match find(COMMANDS, word, t) {
        Some(c) => call(c, c.names, word, rest, t, out),
        None => out.push_str(&format!("unknown command: '{word}'\n")),
    }
}

/// Parses `rest` as `c`'s arguments and runs it. `label` starts argument errors (QEMU uses the
/// names with aliases), `typed` is what `help` would take. Nothing runs on a bad line.
fn call(c: &Cmd, label: &str, typed: &str, mut rest: &str, t: &mut Target<'_>, out: &mut String) {
    let mut args = Map::new();
    for (name, kind) in c.args {
        rest = rest.trim_start();
        let v = match kind {
            Arg::Str => match take_str(&mut rest) {
                Some(s) => Value::String(s),
                None => return syntax(&format!("{label}: string expected"), typed, out),
            },
            Arg::Int => match take_int(&mut rest) {
                Ok(n) if (0..=i64::from(u32::MAX)).contains(&n) => json!(n),
                Ok(_) => {
                    let e = format!("'{typed}' has failed: integer is for 32-bit values");
                    return syntax(&e, typed, out);
                }
                Err(e) => return syntax(&e, typed, out),
            },
        };
        args.insert((*name).into(), v);
    }
    if !rest.trim().is_empty() {
        let e = format!("{label}: extraneous characters at the end of line");
        return syntax(&e, typed, out);
    }
    match (t.exec)(c.qmp, args) {
        Ok(v) => print_result(c.qmp, &v, out),
        Err(e) => out.push_str(&format!("Error: {}\n", e.desc)),
    }
}

fn syntax(msg: &str, typed: &str, out: &mut String) {
    out.push_str(&format!(
        "{msg}\nTry \"help {typed}\" for more information\n"
    ));
}

fn help(topic: &str, t: &mut Target<'_>, out: &mut String) {
    let mut words = topic.split_whitespace();
    match (words.next(), words.next()) {
        (None, _) => {
            let mut lines: Vec<String> = COMMANDS
                .iter()
                .filter(|c| (t.has)(c.qmp))
                .map(|c| c.help_line(""))
                .collect();
            lines.push(HELP_LINE.into());
            lines.push(INFO_LINE.into());
            lines.sort();
            lines.iter().for_each(|l| out.push_str(l));
        }
        (Some("help" | "?"), _) => out.push_str(HELP_LINE),
        (Some("info"), None) => list(INFO, "info ", t, out),
        (Some("info"), Some(sub)) => match find(INFO, sub, t) {
            Some(c) => out.push_str(&c.help_line("info ")),
            None => out.push_str(&format!("unknown command: 'info {sub}'\n")),
        },
        (Some(w), _) => match find(COMMANDS, w, t) {
            Some(c) => out.push_str(&c.help_line("")),
            None => out.push_str(&format!("unknown command: '{w}'\n")),
        },
    }
}

/// The command of `cmds` called `word`, if the machine has its QMP command.
fn find<'c>(cmds: &'c [Cmd], word: &str, t: &Target<'_>) -> Option<&'c Cmd> {
    cmds.iter().find(|c| c.is(word) && (t.has)(c.qmp))
}

fn list(cmds: &[Cmd], prefix: &str, t: &mut Target<'_>, out: &mut String) {
    for c in cmds.iter().filter(|c| (t.has)(c.qmp)) {
        out.push_str(&c.help_line(prefix));
    }
}

/// Prints what QEMU's HMP prints for the result `v` of QMP command `qmp`.
fn print_result(qmp: &str, v: &Value, out: &mut String) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match qmp {
        "query-status" => {
            let running = v["running"].as_bool().unwrap_or(false);
            let status = s("status");
            out.push_str(if running {
                "VM status: running"
            } else {
                "VM status: paused"
            });
            if !running && status != "paused" {
                out.push_str(&format!(" ({status})"));
            }
            out.push('\n');
        }
        "query-name" => {
            if let Some(n) = v["name"].as_str() {
                out.push_str(&format!("{n}\n"));
            }
        }
        "query-version" => {
            let q = &v["qemu"];
            let n = |k: &str| q[k].as_i64().unwrap_or(0);
            out.push_str(&format!(
                "{}.{}.{} ({})\n",
                n("major"),
                n("minor"),
                n("micro"),
                s("package")
            ));
        }
        "query-chardev" => {
            for c in v.as_array().into_iter().flatten() {
                let label = c["label"].as_str().unwrap_or_default();
                let file = c["filename"].as_str().unwrap_or_default();
                out.push_str(&format!("{label}: filename={file}\n"));
            }
        }
        "query-kvm" => {
            let state = if v["enabled"].as_bool() == Some(true) {
                "enabled"
            } else if v["present"].as_bool() == Some(true) {
                "disabled"
            } else {
                "not compiled"
            };
            out.push_str(&format!("kvm support: {state}\n"));
        }
        "ringbuf-read" => {
            // QEMU's escaping: backslash doubled, control characters as \uXXXX; stops at NUL.
            for ch in v.as_str().unwrap_or_default().chars() {
                match ch {
                    '\0' => break,
                    '\\' => out.push_str("\\\\"),
                    '\n' | '\t' => out.push(ch),
                    c if (c as u32) < 0x20 || c == '\u{7f}' => {
                        out.push_str(&format!("\\u{:04X}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push('\n');
        }
        _ => {}
    }
}

/// Takes the next whitespace-delimited word.
fn take_word<'a>(rest: &mut &'a str) -> &'a str {
    let s = rest.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    let (w, r) = s.split_at(end);
    *rest = r;
    w
}

/// Takes a string argument: a double-quoted string with escapes, or a bare word.
fn take_str(rest: &mut &str) -> Option<String> {
    let s = rest.trim_start();
    let Some(quoted) = s.strip_prefix('"') else {
        let w = take_word(rest);
        return (!w.is_empty()).then(|| w.to_string());
    };
    let mut v = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                *rest = &quoted[i + 1..];
                return Some(v);
            }
            '\\' => match chars.next()?.1 {
                'n' => v.push('\n'),
                'r' => v.push('\r'),
                't' => v.push('\t'),
                e @ ('\\' | '"' | '\'') => v.push(e),
                _ => return None,
            },
            c => v.push(c),
        }
    }
    None
}

/// Takes an integer argument (decimal, or hexadecimal with `0x`), with QEMU's messages.
fn take_int(rest: &mut &str) -> Result<i64, String> {
    let s = rest.trim_start();
    if s.is_empty() {
        return Err("unexpected end of expression".into());
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (radix, digits) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(h) => (16, h),
        None => (10, body),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    let after = &digits[end..];
    if let Some(c) = after.chars().next().filter(|c| !c.is_whitespace()) {
        return Err(format!("invalid char '{c}' in expression"));
    }
    if end == 0 {
        return Err("unexpected end of expression".into());
    }
    let n = i64::from_str_radix(&digits[..end], radix).unwrap_or(i64::MAX);
    *rest = after;
    Ok(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `line` on a machine with a ringbuf and no system_reset; returns the output and
    /// the QMP commands that ran.
    fn hmp(line: &str) -> (String, Vec<String>) {
        let mut ran = Vec::new();
        let has = |n: &str| {
            matches!(
                n,
                "cont"
                    | "stop"
                    | "quit"
                    | "ringbuf-read"
                    | "ringbuf-write"
                    | "query-status"
                    | "query-name"
                    | "query-version"
                    | "query-chardev"
                    | "query-kvm"
            )
        };
        let mut exec = |name: &str, args: Map<String, Value>| {
            ran.push(format!("{name} {}", Value::Object(args.clone())));
            match name {
                "query-status" => {
                    Ok(json!({"status":"prelaunch","running":false,"singlestep":false}))
                }
                "query-name" => Ok(json!({"name":"vm1"})),
                "query-version" => Ok(
                    json!({"qemu":{"major":7,"minor":2,"micro":0},"package":"virtagent-vmm 0.1.0"}),
                ),
                "query-chardev" => Ok(
                    json!([{"label":"rb","filename":"ringbuf"},{"label":"s","filename":"disconnected:unix:/p,server=on"}]),
                ),
                "query-kvm" => Ok(json!({"enabled":false,"present":true})),
                "ringbuf-read" if args["device"] == "nope" => {
                    Err(QmpError::generic("Device 'nope' not found"))
                }
                "ringbuf-read" => Ok(json!("a\nb\\c\u{1}")),
                _ => Ok(json!({})),
            }
        };
        let out = run(
            line,
            &mut Target {
                has: &has,
                exec: &mut exec,
            },
        );
        (out, ran)
    }

    #[test]
    fn info_commands_print_like_qemu() {
        assert_eq!(hmp("info status").0, "VM status: paused (prelaunch)\r\n");
        assert_eq!(hmp("  info   name  ").0, "vm1\r\n");
        assert_eq!(hmp("info version").0, "7.2.0 (virtagent-vmm 0.1.0)\r\n");
        assert_eq!(
            hmp("info chardev").0,
            "rb: filename=ringbuf\r\ns: filename=disconnected:unix:/p,server=on\r\n"
        );
        assert_eq!(hmp("info kvm").0, "kvm support: disabled\r\n");
        assert_eq!(hmp("info foo").0, "unknown command: 'info foo'\r\n");
        assert_eq!(
            hmp("info status extra").0,
            "status: extraneous characters at the end of line\r\nTry \"help info status\" for more information\r\n"
        );
    }

    #[test]
    fn commands_run_their_qmp_command() {
        assert_eq!(hmp("s"), (String::new(), vec!["stop {}".to_string()]));
        assert_eq!(hmp("info status").1, ["query-status {}"]);
        assert_eq!(hmp("cont").1, ["cont {}"]);
        assert_eq!(
            hmp("ringbuf_write rb \"x \\\"y\\\"\\n\"").1,
            [r#"ringbuf-write {"data":"x \"y\"\n","device":"rb"}"#]
        );
        assert_eq!(hmp("ringbuf_read rb 0x10").0, "a\r\nb\\\\c\\u0001\r\n");
        assert_eq!(
            hmp("ringbuf_read nope 3").0,
            "Error: Device 'nope' not found\r\n"
        );
        assert_eq!(hmp("").0, "");
        assert_eq!(hmp("system_reset").0, "unknown command: 'system_reset'\r\n");
        assert_eq!(hmp("foo bar").0, "unknown command: 'foo'\r\n");
    }

    #[test]
    fn bad_arguments_are_explained_and_nothing_runs() {
        let cases = [
            ("ringbuf_read", "ringbuf_read: string expected\r\nTry \"help ringbuf_read\" for more information\r\n"),
            ("ringbuf_read rb", "unexpected end of expression\r\nTry \"help ringbuf_read\" for more information\r\n"),
            ("ringbuf_read rb x", "invalid char 'x' in expression\r\nTry \"help ringbuf_read\" for more information\r\n"),
            ("ringbuf_read rb -1", "'ringbuf_read' has failed: integer is for 32-bit values\r\nTry \"help ringbuf_read\" for more information\r\n"),
            ("ringbuf_read rb 2 3", "ringbuf_read: extraneous characters at the end of line\r\nTry \"help ringbuf_read\" for more information\r\n"),
            ("ringbuf_write rb", "ringbuf_write: string expected\r\nTry \"help ringbuf_write\" for more information\r\n"),
            ("q extra", "quit|q: extraneous characters at the end of line\r\nTry \"help q\" for more information\r\n"),
        ];
        for (line, want) in cases {
            let (out, ran) = hmp(line);
            assert_eq!(out, want, "{line}");
            assert!(ran.is_empty(), "{line}: {ran:?}");
        }
    }

    #[test]
    fn help_lists_what_the_machine_has() {
        assert_eq!(hmp("help c").0, "cont|c  -- resume emulation\r\n");
        assert_eq!(
            hmp("help ringbuf_read").0,
            "ringbuf_read device size -- Read from a ring buffer character device\r\n"
        );
        assert_eq!(
            hmp("help info status").0,
            "info status  -- show the current VM status (running|paused)\r\n"
        );
        assert_eq!(hmp("help foo").0, "unknown command: 'foo'\r\n");
        let all = hmp("help").0;
        assert!(
            all.starts_with("cont|c  -- resume emulation\r\nhelp|? [cmd]"),
            "{all}"
        );
        assert!(!all.contains("system_reset"), "{all}");
        assert_eq!(hmp("info").0, hmp("help info").0);
        assert!(hmp("info")
            .0
            .contains("info version  -- show the version of QEMU\r\n"));
    }
}
