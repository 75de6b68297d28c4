//! QMP message shapes: requests, replies, errors, events, and their wire encoding.

use serde_json::{json, Map, Value};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// QMP error classes (QEMU's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
    DeviceNotActive,
    DeviceNotFound,
    KVMMissingCap,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::KVMMissingCap => "KVMMissingCap",
        }
    }
}

/// An error reply: class and human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: ErrorClass::CommandNotFound,
            desc: desc.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"class": self.class.as_str(), "desc": self.desc})
    }
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.desc)
    }
}

impl std::error::Error for QmpError {}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
    /// Sent as `exec-oob`.
    pub oob: bool,
}

/// Checks the top-level shape of a request as QEMU's dispatcher does. On error, returns the
/// error together with the request's `id` when it could be found.
pub fn parse_request(v: Value) -> Result<Request, (QmpError, Option<Value>)> {
    let mut obj = match v {
        Value::Object(o) => o,
        _ => return Err((QmpError::generic("QMP input must be a JSON object"), None)),
    };
    let id = obj.remove("id");
    let mut execute = None;
    let mut oob = false;
    let mut arguments = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "execute" | "exec-oob" => {
                if execute.is_some() {
                    return Err((
                        QmpError::generic("QMP input member 'exec-oob' is unexpected"),
                        id,
                    ));
                }
                oob = k == "exec-oob";
                match v {
                    Value::String(s) => execute = Some(s),
                    _ => {
                        return Err((
                            QmpError::generic(format!("QMP input member '{k}' must be a string")),
                            id,
                        ))
                    }
                }
            }
            "arguments" => match v {
                Value::Object(a) => arguments = a,
                _ => {
                    return Err((
                        QmpError::generic("QMP input member 'arguments' must be an object"),
                        id,
                    ))
                }
            },
            other => {
                return Err((
                    QmpError::generic(format!("QMP input member '{other}' is unexpected")),
                    id,
                ))
            }
        }
    }
    match execute {
        Some(execute) => Ok(Request {
            execute,
            arguments,
            id,
            oob,
        }),
        None => Err((QmpError::generic("QMP input lacks member 'execute'"), id)),
    }
}

/// Builds a success reply, echoing `id` when present.
pub fn reply_ok(ret: Value, id: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), ret);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// Builds an error reply, echoing `id` when present.
pub fn reply_err(err: &QmpError, id: Option<Value>) -> Value {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("error".into(), err.to_json());
    Value::Object(m)
}

/// The host wall-clock timestamp QMP events carry.
pub fn timestamp() -> Value {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => json!({"seconds": d.as_secs(), "microseconds": d.subsec_micros()}),
        Err(_) => json!({"seconds": -1, "microseconds": -1}),
    }
}

/// Builds an event message.
pub fn event(name: &str, data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("timestamp".into(), timestamp());
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    Value::Object(m)
}

/// The QEMU release whose QMP dialect the monitor speaks (clients such as `qmp-shell` read it).
pub const QEMU_COMPAT_VERSION: (u32, u32, u32) = (7, 2, 0);

/// The `query-version` return value (also embedded in the greeting).
pub fn version_info() -> Value {
    let (major, minor, micro) = QEMU_COMPAT_VERSION;
    json!({
        "qemu": {"major": major, "minor": minor, "micro": micro},
        "package": concat!("virtagent-vmm ", env!("CARGO_PKG_VERSION")),
    })
}

/// The greeting sent when a client connects.
pub fn greeting() -> Value {
    json!({"QMP": {"version": version_info(), "capabilities": []}})
}

/// Serializes a message as one line plus `terminator`, byte for byte as QEMU writes it
/// (`qobject_to_json`: `": "` and `", "` separators, everything outside printable ASCII escaped
/// as `\uXXXX`), so that scripts matching QEMU's text match ours.
pub fn encode_line(v: &Value, terminator: &[u8], out: &mut Vec<u8>) {
    qjson::write_value(out, v);
    out.extend_from_slice(terminator);
}

/// A parameter of a command, for QEMU-style argument checking.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
}

/// The JSON type a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Str,
    Int,
    Bool,
    StrList,
    Any,
}

impl ParamKind {
    fn name(self) -> &'static str {
        match self {
            ParamKind::Str => "string",
            ParamKind::Int => "integer",
            ParamKind::Bool => "boolean",
            ParamKind::StrList => "array",
            ParamKind::Any => "any",
        }
    }

    fn matches(self, v: &Value) -> bool {
        match self {
            // An infinite double (`1e400`) is a number, not a string, whatever stands for it.
            ParamKind::Str => v.is_string() && !qjson::is_non_finite(v),
            ParamKind::Int => v.is_i64() || v.is_u64(),
            ParamKind::Bool => v.is_boolean(),
            ParamKind::StrList => v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.is_string() && !qjson::is_non_finite(x))),
            ParamKind::Any => true,
        }
    }
}

/// Checks `args` against `params` with QEMU's messages (missing, unexpected, wrong type).
pub fn check_args(params: &[Param], args: &Map<String, Value>) -> Result<(), QmpError> {
    for k in args.keys() {
        if !params.iter().any(|p| p.name == k) {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        }
    }
    for p in params {
        match args.get(p.name) {
            None if p.required => {
                return Err(QmpError::generic(format!(
                    "Parameter '{}' is missing",
                    p.name
                )))
            }
            Some(v) if !p.kind.matches(v) => {
                return Err(QmpError::generic(format!(
                    "Invalid parameter type for '{}', expected: {}",
                    p.name,
                    p.kind.name()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shapes() {
        let r = parse_request(json!({"execute":"x","id":{"a":1}})).unwrap();
        assert_eq!(r.execute, "x");
        assert_eq!(r.id, Some(json!({"a":1})));
        let (e, id) = parse_request(json!({"execute":"x","arguments":null,"id":5})).unwrap_err();
        assert_eq!(e.desc, "QMP input member 'arguments' must be an object");
        assert_eq!(id, Some(json!(5)));
        let (e, id) = parse_request(json!([1])).unwrap_err();
        assert_eq!(e.desc, "QMP input must be a JSON object");
        assert_eq!(id, None);
        let (e, _) = parse_request(json!({"execute":"x","control":1})).unwrap_err();
        assert_eq!(e.desc, "QMP input member 'control' is unexpected");
        let (e, _) = parse_request(json!({"id":1})).unwrap_err();
        assert_eq!(e.desc, "QMP input lacks member 'execute'");
        let (e, _) = parse_request(json!({"execute":3})).unwrap_err();
        assert_eq!(e.class, ErrorClass::GenericError);
    }

    #[test]
    fn ascii_encoding() {
        let mut out = Vec::new();
        encode_line(
            &json!({"return": {}, "id": ["a/b\u{e9}\u{1}\u{7f}\u{1f600}\t", 1.5, 1]}),
            b"\r\n",
            &mut out,
        );
        // As qemu-system-x86_64 7.2 answered the same id.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\": [\"a/b\\u00E9\\u0001\\u007F\\uD83D\\uDE00\\t\", 1.5, 1], \"return\": {}}\r\n"
        );
    }

    #[test]
    fn argument_checks() {
        let ps = [Param {
            name: "n",
            kind: ParamKind::Int,
            required: true,
        }];
        assert!(check_args(&ps, json!({"n":1}).as_object().unwrap()).is_ok());
        assert_eq!(
            check_args(&ps, json!({}).as_object().unwrap())
                .unwrap_err()
                .desc,
            "Parameter 'n' is missing"
        );
        assert_eq!(
            check_args(&ps, json!({"n":"x"}).as_object().unwrap())
                .unwrap_err()
                .desc,
            "Invalid parameter type for 'n', expected: integer"
        );
        assert_eq!(
            check_args(&ps, json!({"n":1,"m":2}).as_object().unwrap())
                .unwrap_err()
                .desc,
            "Parameter 'm' is unexpected"
        );
    }
}
