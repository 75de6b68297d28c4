//! Typed access to command arguments with QAPI-visitor error messages.
//!
//! Handlers read arguments in schema order and call [`Args::finish`], which
//! reports the first unexpected member, like QEMU's input visitor.

use serde_json::{Map, Value};

use crate::error::{QgaError, QgaResult};

/// The `arguments` object of one request (or a nested struct in it).
#[derive(Debug)]
pub struct Args {
    map: Map<String, Value>,
    prefix: String,
}

fn type_error(name: &str, expected: &str) -> QgaError {
    QgaError::generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}

impl Args {
    /// Wraps an arguments object (None: no arguments given).
    pub fn new(map: Option<Map<String, Value>>) -> Self {
        Args {
            map: map.unwrap_or_default(),
            prefix: String::new(),
        }
    }

    fn nested(map: Map<String, Value>, prefix: String) -> Self {
        Args { map, prefix }
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    fn missing(&self, name: &str) -> QgaError {
        QgaError::generic(format!("Parameter '{}' is missing", self.full(name)))
    }

    /// Fails on the first member that no accessor consumed.
    pub fn finish(self) -> QgaResult<()> {
        match self.map.keys().next() {
            Some(k) => Err(QgaError::generic(format!(
                "Parameter '{}{k}' is unexpected",
                self.prefix
            ))),
            None => Ok(()),
        }
    }

    /// Optional signed 64-bit integer.
    pub fn opt_int(&mut self, name: &str) -> QgaResult<Option<i64>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| type_error(&self.full(name), "integer")),
        }
    }

    /// Required signed 64-bit integer.
    pub fn int(&mut self, name: &str) -> QgaResult<i64> {
        self.opt_int(name)?.ok_or_else(|| self.missing(name))
    }

    /// Required unsigned 64-bit integer (negative values wrap, as QEMU
    /// accepts them for compatibility).
    pub fn uint(&mut self, name: &str) -> QgaResult<u64> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| {
                    QgaError::generic(format!("Parameter '{}' expects uint64", self.full(name)))
                }),
        }
    }

    /// Optional string.
    pub fn opt_str(&mut self, name: &str) -> QgaResult<Option<String>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(&self.full(name), "string")),
        }
    }

    /// Required string.
    pub fn str(&mut self, name: &str) -> QgaResult<String> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// Optional boolean.
    pub fn opt_bool(&mut self, name: &str) -> QgaResult<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(type_error(&self.full(name), "boolean")),
        }
    }

    /// Required boolean.
    pub fn bool(&mut self, name: &str) -> QgaResult<bool> {
        self.opt_bool(name)?.ok_or_else(|| self.missing(name))
    }

    /// Optional raw value (for alternates), present as-is.
    pub fn opt_raw(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    /// Required raw value.
    pub fn raw(&mut self, name: &str) -> QgaResult<Value> {
        self.take(name).ok_or_else(|| self.missing(name))
    }

    /// The full (prefixed) name of a member, for error messages.
    pub fn name_of(&self, name: &str) -> String {
        self.full(name)
    }

    /// Optional list of strings.
    pub fn opt_str_list(&mut self, name: &str) -> QgaResult<Option<Vec<String>>> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(type_error(&self.full(name), "array"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.into_iter().enumerate() {
            match it {
                Value::String(s) => out.push(s),
                _ => return Err(type_error(&format!("{}[{i}]", self.full(name)), "string")),
            }
        }
        Ok(Some(out))
    }

    /// Required list of strings.
    pub fn str_list(&mut self, name: &str) -> QgaResult<Vec<String>> {
        self.opt_str_list(name)?.ok_or_else(|| self.missing(name))
    }

    /// Required list of structs; each element is returned as nested [`Args`].
    pub fn struct_list(&mut self, name: &str) -> QgaResult<Vec<Args>> {
        let Some(v) = self.take(name) else {
            return Err(self.missing(name));
        };
        let Value::Array(items) = v else {
            return Err(type_error(&self.full(name), "array"));
        };
        let base = self.full(name);
        items
            .into_iter()
            .enumerate()
            .map(|(i, it)| match it {
                Value::Object(m) => Ok(Args::nested(m, format!("{base}[{i}]."))),
                _ => Err(type_error(&format!("{base}[{i}]"), "object")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        Args::new(v.as_object().cloned())
    }

    #[test]
    fn qapi_messages() {
        let mut a = args(json!({"id": "x"}));
        assert_eq!(
            a.int("id").unwrap_err().desc,
            "Invalid parameter type for 'id', expected: integer"
        );
        let mut a = args(json!({}));
        assert_eq!(a.int("id").unwrap_err().desc, "Parameter 'id' is missing");
        let mut a = args(json!({"id": 1, "zz": 2}));
        assert_eq!(a.int("id").unwrap(), 1);
        assert_eq!(a.finish().unwrap_err().desc, "Parameter 'zz' is unexpected");
        let mut a = args(json!({"id": 18446744073709551615u64}));
        assert!(a.int("id").is_err());
        let mut a = args(json!({"vcpus": [{"online": true}]}));
        let mut l = a.struct_list("vcpus").unwrap();
        assert_eq!(
            l[0].int("logical-id").unwrap_err().desc,
            "Parameter 'vcpus[0].logical-id' is missing"
        );
        let mut a = args(json!({"arg": [1]}));
        assert_eq!(
            a.opt_str_list("arg").unwrap_err().desc,
            "Invalid parameter type for 'arg[0]', expected: string"
        );
    }
}
