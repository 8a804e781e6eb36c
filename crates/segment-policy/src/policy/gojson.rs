//! A view of a JSON request body as dockerd's Go `encoding/json` decodes it.
//!
//! Go matches object keys to struct fields case-insensitively (and folds the
//! Unicode long s `ſ` and Kelvin sign `K` onto `s` and `k`), lets a later
//! duplicate key overwrite or *merge into* an earlier one, and ignores unknown
//! keys. A policy that reads the body with different rules can be bypassed,
//! e.g. with `{"hostconfig":{"privileged":true}}`. So this module keeps every
//! key in document order, looks fields up the way Go does, and reports a key
//! that matches a looked-up field more than once as [`Malformed`] instead of
//! guessing which one dockerd would use.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep duplicate keys in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// A number, as a float (the policy reads only signs and zeroes).
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// Why a body cannot be read the way dockerd would read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a whole body; trailing garbage is an error (Go would ignore it,
/// refusing it is the safe side).
pub(crate) fn parse(body: &[u8]) -> Result<Json, Malformed> {
    serde_json::from_slice(body).map_err(|e| Malformed(format!("invalid JSON: {e}")))
}

/// Folds a key the way Go's `encoding/json` compares it with a field name.
///
/// Over-folding is harmless (a stricter match), under-folding is a bypass,
/// so every non-ASCII character is mapped through upper- then lower-case
/// and kept only when that lands on ASCII (`ſ`→`s`, `K`→`k`, `ı`→`i`, `İ`→`i`).
pub(crate) fn go_fold(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii() {
                return c.to_ascii_lowercase();
            }
            let upper = c.to_uppercase().next().unwrap_or(c);
            match upper.to_lowercase().next() {
                Some(l) if l.is_ascii() => l,
                _ => c,
            }
        })
        .collect()
}

impl Json {
    /// The value of struct field `name`, or `None` when absent.
    ///
    /// `null` reads as an absent struct (Go leaves a nil pointer). A value
    /// that is not an object, or two keys that both match `name`, are errors.
    pub(crate) fn field(&self, name: &str) -> Result<Option<&Json>, Malformed> {
        let entries = match self {
            Json::Null => return Ok(None),
            Json::Object(entries) => entries,
            other => {
                return Err(Malformed(format!(
                    "expected an object, found {}",
                    other.kind()
                )));
            }
        };
        let wanted = go_fold(name);
        let mut found = entries.iter().filter(|(k, _)| go_fold(k) == wanted);
        let first = found.next().map(|(_, v)| v);
        if found.next().is_some() {
            return Err(Malformed(format!("field {name:?} is given more than once")));
        }
        Ok(first)
    }

    /// Follows a path of struct fields; any missing or null step gives `None`.
    pub(crate) fn path(&self, names: &[&str]) -> Result<Option<&Json>, Malformed> {
        let mut current = self;
        for name in names {
            match current.field(name)? {
                Some(v) => current = v,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Short type name for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Reads an optional boolean field: absent or null is `false`.
pub(crate) fn bool_of(v: Option<&Json>, name: &str) -> Result<bool, Malformed> {
    match v {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(type_error(name, "a boolean", other)),
    }
}

/// Reads an optional string field: absent or null is `None`.
pub(crate) fn str_of<'a>(v: Option<&'a Json>, name: &str) -> Result<Option<&'a str>, Malformed> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(type_error(name, "a string", other)),
    }
}

/// Reads an optional number field: absent or null is 0.
pub(crate) fn number_of(v: Option<&Json>, name: &str) -> Result<f64, Malformed> {
    match v {
        None | Some(Json::Null) => Ok(0.0),
        Some(Json::Number(n)) => Ok(*n),
        Some(other) => Err(type_error(name, "a number", other)),
    }
}

/// The entries of an optional object field (a Go map): absent or null is
/// empty. Keys of a map are data, not field names: they are not folded.
pub(crate) fn entries_of<'a>(
    v: Option<&'a Json>,
    name: &str,
) -> Result<&'a [(String, Json)], Malformed> {
    match v {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Object(entries)) => Ok(entries),
        Some(other) => Err(type_error(name, "an object", other)),
    }
}

/// Reads an optional array field: absent or null is empty.
pub(crate) fn array_of<'a>(v: Option<&'a Json>, name: &str) -> Result<&'a [Json], Malformed> {
    match v {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(items)) => Ok(items),
        Some(other) => Err(type_error(name, "an array", other)),
    }
}

/// Reads an optional list of strings. A bare string counts as a one-element
/// list, as Docker's `strslice.StrSlice` (`CapAdd`, `CapDrop`) accepts it.
pub(crate) fn strings_of<'a>(v: Option<&'a Json>, name: &str) -> Result<Vec<&'a str>, Malformed> {
    if let Some(Json::String(s)) = v {
        return Ok(vec![s.as_str()]);
    }
    array_of(v, name)?
        .iter()
        .map(|item| match item {
            Json::String(s) => Ok(s.as_str()),
            other => Err(type_error(name, "a list of strings", other)),
        })
        .collect()
}

/// True when an optional field holds anything but absent, null, `""`, `[]` or `{}`.
pub(crate) fn is_set(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(items)) => !items.is_empty(),
        Some(Json::Object(entries)) => !entries.is_empty(),
        Some(Json::Bool(_) | Json::Number(_)) => true,
    }
}

fn type_error(name: &str, expected: &str, found: &Json) -> Malformed {
    Malformed(format!(
        "field {name:?} must be {expected}, found {}",
        found.kind()
    ))
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v as f64))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Json>()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_like_go() {
        assert_eq!(go_fold("HostConfig"), "hostconfig");
        assert_eq!(go_fold("Bind\u{17f}"), "binds"); // long s
        assert_eq!(go_fold("\u{212a}ernelMemory"), "kernelmemory"); // Kelvin sign
        assert_eq!(go_fold("pr\u{131}vileged"), "privileged"); // dotless i
        assert_eq!(go_fold("caf\u{e9}"), "caf\u{e9}");
    }

    #[test]
    fn field_lookup_is_case_insensitive_and_rejects_duplicates() {
        let v = parse(br#"{"hostconfig":{"PRIVILEGED":true}}"#).unwrap();
        let hc = v.field("HostConfig").unwrap().unwrap();
        assert_eq!(hc.field("Privileged").unwrap(), Some(&Json::Bool(true)));

        let dup = parse(br#"{"Privileged":false,"privileged":true}"#).unwrap();
        assert!(dup.field("Privileged").is_err());
        let exact_dup = parse(br#"{"HostConfig":{},"HostConfig":{"Privileged":true}}"#).unwrap();
        assert!(exact_dup.field("HostConfig").is_err());
        // Duplicates of fields the policy never reads are not its business.
        let labels = parse(br#"{"Labels":{"a":"1","A":"2"}}"#).unwrap();
        assert!(labels.field("Labels").is_ok());
    }

    #[test]
    fn typed_readers() {
        let v = parse(br#"{"a":null,"b":"x","c":["y","z"],"d":1,"e":{}}"#).unwrap();
        assert!(!bool_of(v.field("a").unwrap(), "a").unwrap());
        assert!(bool_of(v.field("b").unwrap(), "b").is_err());
        assert_eq!(strings_of(v.field("b").unwrap(), "b").unwrap(), ["x"]);
        assert_eq!(strings_of(v.field("c").unwrap(), "c").unwrap(), ["y", "z"]);
        assert!(strings_of(v.field("d").unwrap(), "d").is_err());
        assert!(!is_set(v.field("e").unwrap()));
        assert!(v.path(&["a", "x"]).unwrap().is_none());
        assert!(parse(b"{} {}").is_err());
        assert!(Json::String("s".into()).field("x").is_err());
    }
}
