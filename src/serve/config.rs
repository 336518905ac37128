//! `config.json`: which model version answers which user.
//!
//! ```json
//! {
//!   "salt": "ab-2026-01",
//!   "default": "model_v1",
//!   "rules": [
//!     {"name": "students", "when": {"occupation": ["student"], "age": {"max": 25}},
//!      "model": "model_v3"},
//!     {"name": "canary", "canary": {"model": "model_v4", "percent": 5}},
//!     {"name": "ab", "when": {"buckets": {"from": 0, "to": 50}},
//!      "split": [{"model": "model_v1", "weight": 1}, {"model": "model_v2", "weight": 1}]}
//!   ]
//! }
//! ```
//!
//! Rules are tried in order; the first whose conditions hold routes the
//! user (a canary rule only takes its percentage and lets the rest fall
//! through). Users no rule takes get `default`. Conditions on attributes
//! (gender, inclusive age range, occupation) read the users table of the
//! models' training datasets; a user without a known attribute never
//! matches a condition on it. Buckets, splits and canaries hash the user id
//! with the salt (and the rule name, so two rules' groups are independent):
//! a user stays in the same group across restarts and machines until the
//! salt or the rule name changes.
//!
//! [`parse`] reports every problem at once, each with its JSON path.

use std::collections::BTreeSet;
use std::fmt;

use crate::user_filter::MAX_AGE;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Hash positions are in `0..SCALE` (basis points).
const SCALE: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Salt of every hash; change it to reshuffle all groups.
    #[serde(default = "default_salt")]
    pub salt: String,
    /// The model for users no rule routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

fn default_salt() -> String {
    "recsys".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<Arm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<AgeRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupation: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Buckets>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Inclusive bounds; either may be left out (the type `--users-where`
/// parses too).
pub use crate::user_filter::AgeRange;

/// Hash buckets `from..to` out of 100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    pub from: u32,
    pub to: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub model: String,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub model: String,
    /// Share of the users reaching this rule, 0 < percent <= 100.
    pub percent: f64,
}

/// One thing wrong with a config, at a JSON path (`$.rules[1].split[0].weight`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A config that could not be used: every problem found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

/// Deepest nesting a config may have. A real one is five levels deep
/// (`$.rules[0].when.age.min`); serde_json's own limit (128) would answer
/// deeper input with an opaque "recursion limit exceeded".
pub(crate) const MAX_DEPTH: usize = 32;

/// Longest salt or rule name, in bytes: both are hashed on every request.
pub(crate) const MAX_HASHED_LEN: usize = 256;

/// Parse and validate a config; every problem is reported, not just the first.
///
/// The JSON is read by [`read_json`], which, unlike `serde_json::Value`,
/// refuses duplicate keys (a `Value` silently keeps the last one, so a
/// reviewer reading the first would be misled about what serves) and says
/// what is wrong with input nested too deep or numbers out of range.
pub fn parse(bytes: &[u8]) -> Result<RouterConfig, ConfigErrors> {
    let v = read_json(bytes).map_err(ConfigErrors)?;
    let mut c = Checker::default();
    c.root(&v);
    if !c.problems.is_empty() {
        return Err(ConfigErrors(c.problems));
    }
    // The checker accepted exactly what the types describe; a failure here
    // would be a disagreement between the two, reported rather than hidden.
    serde_json::from_value(v).map_err(|e| {
        ConfigErrors(vec![ConfigProblem {
            path: "$".into(),
            message: e.to_string(),
        }])
    })
}

/// One step of a JSON path.
enum Seg {
    Key(String),
    Index(usize),
}

fn json_path(segs: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in segs {
        match seg {
            Seg::Key(k)
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                s.push('.');
                s.push_str(k);
            }
            Seg::Key(k) => {
                let shown: String = k.chars().take(40).collect();
                s.push_str(&format!("[{shown:?}]"));
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// What the reader knows while it descends: where it is (so an error
/// deep inside names its path) and the duplicate keys seen so far.
#[derive(Default)]
struct ReadState {
    path: Vec<Seg>,
    duplicates: Vec<String>,
    too_deep: bool,
}

struct ValueSeed<'a>(&'a std::cell::RefCell<ReadState>);

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn enter<E: serde::de::Error>(&self) -> Result<(), E> {
        let mut st = self.0.borrow_mut();
        if st.path.len() >= MAX_DEPTH {
            st.too_deep = true;
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never produces a non-finite float, but say so if it did.
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Vec::new();
        loop {
            self.0.borrow_mut().path.push(Seg::Index(out.len()));
            // On error the path is left as it is: it says where.
            let Some(v) = seq.next_element_seed(ValueSeed(self.0))? else {
                self.0.borrow_mut().path.pop();
                break;
            };
            self.0.borrow_mut().path.pop();
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.0.borrow_mut().path.push(Seg::Key(k.clone()));
            let v = map.next_value_seed(ValueSeed(self.0))?;
            let mut st = self.0.borrow_mut();
            if out.contains_key(&k) {
                let p = json_path(&st.path);
                st.duplicates.push(p);
            } else {
                out.insert(k, v);
            }
            st.path.pop();
        }
        Ok(Value::Object(out))
    }
}

/// Read JSON into a `Value`, refusing what `serde_json::from_slice` would
/// take silently (duplicate keys: every one is reported at its path) and
/// naming what it would report opaquely (nesting deeper than
/// [`MAX_DEPTH`], numbers out of range), with the JSON path where the
/// reader stopped.
pub(crate) fn read_json(bytes: &[u8]) -> Result<Value, Vec<ConfigProblem>> {
    let state = std::cell::RefCell::new(ReadState::default());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let res = serde::de::DeserializeSeed::deserialize(ValueSeed(&state), &mut de)
        .and_then(|v| de.end().map(|()| v));
    let st = state.into_inner();
    match res {
        Ok(v) if st.duplicates.is_empty() => Ok(v),
        Ok(_) => Err(st
            .duplicates
            .into_iter()
            .map(|path| ConfigProblem {
                path,
                message: "duplicate key (a JSON reader would silently keep only the last)".into(),
            })
            .collect()),
        Err(e) => {
            let at = format!("line {} column {}", e.line(), e.column());
            // serde_json's message ends with its own " at line L column C".
            let full = e.to_string();
            let what = full
                .strip_suffix(&format!(" at {at}"))
                .unwrap_or(&full)
                .to_string();
            let message = if st.too_deep {
                format!("{what} (at {at})")
            } else {
                match e.classify() {
                    serde_json::error::Category::Eof => {
                        format!("not valid JSON: unexpected end of file ({what}) at {at}")
                    }
                    _ => format!("not valid JSON: {what} at {at}"),
                }
            };
            let path = if st.too_deep {
                let mut p = json_path(&st.path);
                if p.len() > 80 {
                    p.truncate(80);
                    p.push('…');
                }
                p
            } else {
                json_path(&st.path)
            };
            let mut problems: Vec<ConfigProblem> = st
                .duplicates
                .into_iter()
                .map(|path| ConfigProblem {
                    path,
                    message: "duplicate key (a JSON reader would silently keep only the last)"
                        .into(),
                })
                .collect();
            problems.push(ConfigProblem { path, message });
            Err(problems)
        }
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
}

impl Checker {
    fn bad(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn object<'v>(
        &mut self,
        path: &str,
        v: &'v Value,
        known: &[&str],
    ) -> Option<&'v serde_json::Map<String, Value>> {
        let Some(m) = v.as_object() else {
            self.bad(path, format!("expected an object, found {}", type_name(v)));
            return None;
        };
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                self.bad(
                    &format!("{path}.{k}"),
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
        }
        Some(m)
    }

    fn model_name(&mut self, path: &str, v: &Value) {
        match v.as_str() {
            Some(s) if valid_model_name(s) => {}
            Some(s) => self.bad(
                path,
                format!("{s:?} is not a model version name (like model_v2)"),
            ),
            None => self.bad(
                path,
                format!("expected a model version name, found {}", type_name(v)),
            ),
        }
    }

    fn root(&mut self, v: &Value) {
        let Some(m) = self.object("$", v, &["salt", "default", "rules"]) else {
            return;
        };
        if let Some(s) = m.get("salt") {
            match s.as_str() {
                Some("") => self.bad("$.salt", "must not be empty"),
                Some(s) if s.len() > MAX_HASHED_LEN => self.bad(
                    "$.salt",
                    format!(
                        "is {} bytes; at most {MAX_HASHED_LEN} (it is hashed on every request)",
                        s.len()
                    ),
                ),
                Some(_) => {}
                None => self.bad(
                    "$.salt",
                    format!("expected a string, found {}", type_name(s)),
                ),
            }
        }
        if let Some(d) = m.get("default") {
            self.model_name("$.default", d);
        }
        let mut catch_all = false;
        match m.get("rules") {
            None => {}
            Some(Value::Array(rules)) => {
                let mut names = BTreeSet::new();
                for (i, r) in rules.iter().enumerate() {
                    let p = format!("$.rules[{i}]");
                    if self.rule(&p, r, &mut names) {
                        catch_all = true;
                    }
                }
            }
            Some(other) => self.bad(
                "$.rules",
                format!("expected an array, found {}", type_name(other)),
            ),
        }
        if m.get("default").is_none() && !catch_all {
            self.bad(
                "$.default",
                "missing: without a default, some rule must take every user \
                 (a rule with no `when` and a `model` or `split`)",
            );
        }
    }

    /// Returns whether the rule takes every user that reaches it.
    fn rule(&mut self, p: &str, v: &Value, names: &mut BTreeSet<String>) -> bool {
        let Some(m) = self.object(p, v, &["name", "when", "model", "split", "canary"]) else {
            return false;
        };
        match m.get("name").map(|n| n.as_str()) {
            None => self.bad(&format!("{p}.name"), "missing: every rule needs a name"),
            Some(None) => self.bad(&format!("{p}.name"), "expected a string"),
            Some(Some("")) => self.bad(&format!("{p}.name"), "must not be empty"),
            Some(Some(n)) if n.len() > MAX_HASHED_LEN => self.bad(
                &format!("{p}.name"),
                format!(
                    "is {} bytes; at most {MAX_HASHED_LEN} (it is hashed on every request)",
                    n.len()
                ),
            ),
            Some(Some(n)) => {
                if !names.insert(n.to_string()) {
                    self.bad(
                        &format!("{p}.name"),
                        format!("{n:?} is used by an earlier rule; names must be unique"),
                    );
                }
            }
        }
        if let Some(w) = m.get("when") {
            self.when(&format!("{p}.when"), w);
        }
        let actions: Vec<&str> = ["model", "split", "canary"]
            .into_iter()
            .filter(|k| m.contains_key(*k))
            .collect();
        if actions.len() != 1 {
            self.bad(
                p,
                format!(
                    "needs exactly one of `model`, `split` or `canary`{}",
                    if actions.is_empty() {
                        String::new()
                    } else {
                        format!(" (found {})", actions.join(", "))
                    }
                ),
            );
        }
        if let Some(v) = m.get("model") {
            self.model_name(&format!("{p}.model"), v);
        }
        if let Some(v) = m.get("split") {
            self.split(&format!("{p}.split"), v);
        }
        if let Some(v) = m.get("canary") {
            let cp = format!("{p}.canary");
            if let Some(c) = self.object(&cp, v, &["model", "percent"]) {
                match c.get("model") {
                    Some(mv) => self.model_name(&format!("{cp}.model"), mv),
                    None => self.bad(&format!("{cp}.model"), "missing"),
                }
                match c.get("percent").map(Value::as_f64) {
                    Some(Some(x)) if x > 0.0 && x <= 100.0 => {}
                    Some(Some(x)) => self.bad(
                        &format!("{cp}.percent"),
                        format!("{x} is outside 0 < percent <= 100"),
                    ),
                    Some(None) => self.bad(&format!("{cp}.percent"), "expected a number"),
                    None => self.bad(&format!("{cp}.percent"), "missing"),
                }
            }
        }
        !m.contains_key("when") && !m.contains_key("canary") && actions.len() == 1
    }

    fn split(&mut self, p: &str, v: &Value) {
        let Some(arms) = v.as_array() else {
            self.bad(p, format!("expected an array, found {}", type_name(v)));
            return;
        };
        if arms.is_empty() {
            self.bad(p, "must name at least one model");
        }
        // Each weight may be finite and the sum still overflow (two of
        // 1e308): every share would be 0 and all users go to the last arm.
        let mut total = 0.0f64;
        let mut all_good = true;
        for (j, a) in arms.iter().enumerate() {
            let ap = format!("{p}[{j}]");
            if let Some(am) = self.object(&ap, a, &["model", "weight"]) {
                match am.get("model") {
                    Some(mv) => self.model_name(&format!("{ap}.model"), mv),
                    None => self.bad(&format!("{ap}.model"), "missing"),
                }
                match am.get("weight").map(Value::as_f64) {
                    Some(Some(w)) if w > 0.0 && w.is_finite() => total += w,
                    Some(Some(w)) => {
                        all_good = false;
                        self.bad(&format!("{ap}.weight"), format!("{w} must be positive"))
                    }
                    Some(None) => {
                        all_good = false;
                        self.bad(&format!("{ap}.weight"), "expected a number")
                    }
                    None => {
                        all_good = false;
                        self.bad(&format!("{ap}.weight"), "missing")
                    }
                }
            } else {
                all_good = false;
            }
        }
        if all_good && !arms.is_empty() && !total.is_finite() {
            self.bad(
                p,
                "the weights sum to more than the largest number (overflow): \
                 use small relative weights such as 1 and 3",
            );
        }
    }

    fn when(&mut self, p: &str, v: &Value) {
        let Some(m) = self.object(p, v, &["gender", "age", "occupation", "buckets"]) else {
            return;
        };
        if m.is_empty() {
            self.bad(p, "has no condition (leave `when` out to match everyone)");
        }
        if let Some(g) = m.get("gender") {
            for (gp, s) in self.strings(&format!("{p}.gender"), g) {
                if s != "M" && s != "F" {
                    self.bad(&gp, format!("{s:?} is not a gender (M or F)"));
                }
            }
        }
        if let Some(o) = m.get("occupation") {
            for (op, s) in self.strings(&format!("{p}.occupation"), o) {
                if s.is_empty() {
                    self.bad(&op, "must not be empty");
                }
            }
        }
        if let Some(a) = m.get("age") {
            let ap = format!("{p}.age");
            if let Some(am) = self.object(&ap, a, &["min", "max"]) {
                let mut bound = |k: &str| -> Option<u64> {
                    let x = am.get(k)?;
                    match x.as_u64() {
                        Some(n) if n <= u64::from(MAX_AGE) => Some(n),
                        _ => {
                            self.bad(
                                &format!("{ap}.{k}"),
                                format!("expected an age 0-{MAX_AGE}, found {x}"),
                            );
                            None
                        }
                    }
                };
                let (lo, hi) = (bound("min"), bound("max"));
                if am.is_empty() {
                    self.bad(&ap, "needs `min`, `max` or both");
                }
                if let (Some(lo), Some(hi)) = (lo, hi)
                    && lo > hi
                {
                    self.bad(&ap, format!("min {lo} is greater than max {hi}"));
                }
            }
        }
        if let Some(b) = m.get("buckets") {
            let bp = format!("{p}.buckets");
            if let Some(bm) = self.object(&bp, b, &["from", "to"]) {
                let mut get = |k: &str| -> Option<u64> {
                    match bm.get(k) {
                        None => {
                            self.bad(&format!("{bp}.{k}"), "missing");
                            None
                        }
                        Some(x) => match x.as_u64() {
                            Some(n) if n <= 100 => Some(n),
                            _ => {
                                self.bad(
                                    &format!("{bp}.{k}"),
                                    format!("expected a bucket 0-100, found {x}"),
                                );
                                None
                            }
                        },
                    }
                };
                let (from, to) = (get("from"), get("to"));
                if let (Some(f), Some(t)) = (from, to)
                    && f >= t
                {
                    self.bad(&bp, format!("from {f} must be less than to {t}"));
                }
            }
        }
    }

    /// A string or a non-empty array of strings: each with its path.
    fn strings(&mut self, p: &str, v: &Value) -> Vec<(String, String)> {
        match v {
            Value::String(s) => vec![(p.to_string(), s.clone())],
            Value::Array(a) if a.is_empty() => {
                self.bad(p, "must list at least one value");
                Vec::new()
            }
            Value::Array(a) => {
                let mut out = Vec::new();
                for (i, x) in a.iter().enumerate() {
                    match x.as_str() {
                        Some(s) => out.push((format!("{p}[{i}]"), s.to_string())),
                        None => self.bad(
                            &format!("{p}[{i}]"),
                            format!("expected a string, found {}", type_name(x)),
                        ),
                    }
                }
                out
            }
            other => {
                self.bad(
                    p,
                    format!(
                        "expected a string or an array of strings, found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn valid_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl RouterConfig {
    /// Every model version the config names, in order of first mention
    /// (the default first).
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |m: &String| {
            if !out.contains(m) {
                out.push(m.clone());
            }
        };
        if let Some(d) = &self.default {
            push(d);
        }
        for r in &self.rules {
            if let Some(m) = &r.model {
                push(m);
            }
            for a in r.split.iter().flatten() {
                push(&a.model);
            }
            if let Some(c) = &r.canary {
                push(&c.model);
            }
        }
        out
    }

    /// Each model with the JSON paths that name it (for `config check`).
    pub(crate) fn model_paths(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(d) = &self.default {
            out.push(("$.default".to_string(), d.clone()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(m) = &r.model {
                out.push((format!("$.rules[{i}].model"), m.clone()));
            }
            for (j, a) in r.split.iter().flatten().enumerate() {
                out.push((format!("$.rules[{i}].split[{j}].model"), a.model.clone()));
            }
            if let Some(c) = &r.canary {
                out.push((format!("$.rules[{i}].canary.model"), c.model.clone()));
            }
        }
        out
    }
}

/// What the router knows about a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAttrs {
    pub age: Option<u32>,
    pub gender: Option<String>,
    pub occupation: Option<String>,
}

/// A user's stable position in `0..SCALE` for `salt` and `scope`.
pub fn position(salt: &str, scope: &str, user: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(salt.as_bytes());
    h.update(&[0]);
    h.update(scope.as_bytes());
    h.update(&[0]);
    h.update(user.to_string().as_bytes());
    let b = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(first) % SCALE
}

/// A config compiled for routing: model names replaced by indices into
/// the deployment's model list, route labels built once.
#[derive(Debug, Clone)]
pub struct Router {
    salt: String,
    rules: Vec<CompiledRule>,
    default: Option<(usize, std::sync::Arc<str>)>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    when: When,
    genders: Vec<String>,
    occupations: Vec<String>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Model(usize, std::sync::Arc<str>),
    /// (cumulative upper bound in 0..SCALE, model, label)
    Split(Vec<(u64, usize, std::sync::Arc<str>)>),
    Canary(u64, usize, std::sync::Arc<str>),
}

impl Router {
    /// `index` maps a model name to its position in the deployment; every
    /// name the config uses must be there.
    pub fn compile(cfg: &RouterConfig, index: impl Fn(&str) -> Option<usize>) -> Option<Router> {
        let mut rules = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let label = |extra: &str| -> std::sync::Arc<str> {
                format!("rules[{i}] {}{extra}", r.name).into()
            };
            let action = if let Some(m) = &r.model {
                Action::Model(index(m)?, label(""))
            } else if let Some(arms) = &r.split {
                let total: f64 = arms.iter().map(|a| a.weight).sum();
                // The checker refuses these; never route by a NaN share.
                if !total.is_finite() || total <= 0.0 {
                    return None;
                }
                let mut cum = 0.0;
                let mut out = Vec::new();
                for (j, a) in arms.iter().enumerate() {
                    cum += a.weight;
                    let bound = if j + 1 == arms.len() {
                        SCALE
                    } else {
                        ((cum / total) * SCALE as f64).round() as u64
                    };
                    out.push((bound, index(&a.model)?, label(&format!(" split[{j}]"))));
                }
                Action::Split(out)
            } else if let Some(c) = &r.canary {
                let cut = ((c.percent / 100.0) * SCALE as f64).round() as u64;
                Action::Canary(cut, index(&c.model)?, label(" canary"))
            } else {
                return None;
            };
            let when = r.when.clone().unwrap_or_default();
            rules.push(CompiledRule {
                name: r.name.clone(),
                genders: when.gender.as_ref().map(|g| g.values()).unwrap_or_default(),
                occupations: when
                    .occupation
                    .as_ref()
                    .map(|o| o.values())
                    .unwrap_or_default(),
                when,
                action,
            });
        }
        let default = match &cfg.default {
            Some(d) => Some((index(d)?, std::sync::Arc::from("default"))),
            None => None,
        };
        Some(Router {
            salt: cfg.salt.clone(),
            rules,
            default,
        })
    }

    /// The model (index) and route label for `user`; `None` when no rule
    /// takes the user and there is no default (the config checker refuses
    /// such configs, so this does not happen for a checked config).
    pub fn route(
        &self,
        user: u64,
        attrs: Option<&UserAttrs>,
    ) -> Option<(usize, &std::sync::Arc<str>)> {
        for r in &self.rules {
            if !self.matches(r, user, attrs) {
                continue;
            }
            match &r.action {
                Action::Model(m, l) => return Some((*m, l)),
                Action::Split(arms) => {
                    let pos = position(&self.salt, &r.name, user);
                    for (bound, m, l) in arms {
                        if pos < *bound {
                            return Some((*m, l));
                        }
                    }
                }
                Action::Canary(cut, m, l) => {
                    if position(&self.salt, &r.name, user) < *cut {
                        return Some((*m, l));
                    }
                }
            }
        }
        self.default.as_ref().map(|(m, l)| (*m, l))
    }

    fn matches(&self, r: &CompiledRule, user: u64, attrs: Option<&UserAttrs>) -> bool {
        let w = &r.when;
        if !r.genders.is_empty() {
            match attrs.and_then(|a| a.gender.as_ref()) {
                Some(g) if r.genders.iter().any(|x| x == g) => {}
                _ => return false,
            }
        }
        if !r.occupations.is_empty() {
            match attrs.and_then(|a| a.occupation.as_ref()) {
                Some(o) if r.occupations.iter().any(|x| x.eq_ignore_ascii_case(o)) => {}
                _ => return false,
            }
        }
        if let Some(range) = &w.age {
            match attrs.and_then(|a| a.age) {
                Some(age) if range.contains(age) => {}
                _ => return false,
            }
        }
        if let Some(b) = &w.buckets {
            let bucket = position(&self.salt, "buckets", user) / (SCALE / 100);
            if bucket < u64::from(b.from) || bucket >= u64::from(b.to) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(bytes: &str) -> Vec<String> {
        match parse(bytes.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|p| p.path).collect(),
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = paths(
            r#"{"salt": 3, "colour": 1, "rules": [
                {"name": "a", "when": {"gender": "X", "age": {"min": 40, "max": 20}}, "model": "m v1"},
                {"name": "a", "split": [{"model": "model_v1", "weight": -1}, {"weight": 1}]},
                {"name": "c", "canary": {"model": "model_v3", "percent": 150}, "model": "model_v1"}
            ]}"#,
        );
        for want in [
            "$.salt",
            "$.colour",
            "$.rules[0].when.gender",
            "$.rules[0].when.age",
            "$.rules[0].model",
            "$.rules[1].name",
            "$.rules[1].split[0].weight",
            "$.rules[1].split[1].model",
            "$.rules[2].canary.percent",
            "$.rules[2]",
        ] {
            assert!(p.contains(&want.to_string()), "{want} missing from {p:?}");
        }
    }

    fn problems(bytes: &str) -> Vec<ConfigProblem> {
        match parse(bytes.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn bad_json_is_one_problem_where_the_reader_stopped() {
        let p = problems("{\"default\": ");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "$.default");
        assert!(p[0].message.contains("unexpected end of file"), "{p:?}");
        assert_eq!(paths("[]"), vec!["$"]);
        let p = problems(r#"{"default": "model_v1"} x"#);
        assert!(p[0].message.contains("trailing characters"), "{p:?}");
    }

    #[test]
    fn duplicate_keys_are_refused_at_their_path() {
        let p = problems(
            r#"{"default": "model_v1", "rules": [{"name": "a", "model": "model_v2",
                "when": {"age": {"min": 1, "min": 90}}}], "default": "model_v9"}"#,
        );
        let at: Vec<&str> = p.iter().map(|x| x.path.as_str()).collect();
        assert_eq!(at, vec!["$.rules[0].when.age.min", "$.default"], "{p:?}");
        assert!(
            p.iter().all(|x| x.message.contains("duplicate key")),
            "{p:?}"
        );
        // A key that is not an identifier is quoted in the path.
        let p = problems(r#"{"default": "model_v1", "a b": 1, "a b": 2}"#);
        assert_eq!(p[0].path, "$[\"a b\"]", "{p:?}");
    }

    #[test]
    fn deep_nesting_says_so() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let p = problems(&deep);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message
                .starts_with(&format!("nested deeper than {MAX_DEPTH} levels")),
            "{p:?}"
        );
        assert!(p[0].path.starts_with("$[0][0]"), "{p:?}");
        let objects = format!(
            "{{\"default\": \"model_v1\", \"rules\": {}1{}}}",
            "{\"a\": ".repeat(200),
            "}".repeat(200)
        );
        let p = problems(&objects);
        assert!(p[0].message.contains("nested deeper than"), "{p:?}");
        assert!(p[0].path.starts_with("$.rules.a.a"), "{p:?}");
        // The deepest a real config goes is well inside the limit.
        assert!(
            parse(br#"{"rules": [{"name": "r", "when": {"age": {"min": 1}}, "model": "m"}], "default": "m"}"#)
                .is_ok()
        );
    }

    #[test]
    fn numbers_out_of_range_say_so() {
        let p =
            problems(r#"{"rules": [{"name": "ab", "split": [{"model": "a", "weight": 1e999}]}]}"#);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "$.rules[0].split[0].weight");
        assert!(p[0].message.contains("number out of range"), "{p:?}");
        assert!(!p[0].message.contains("syntax error"), "{p:?}");
    }

    #[test]
    fn weights_that_overflow_their_sum_are_refused() {
        let p = problems(
            r#"{"rules": [{"name": "ab", "split": [
                {"model": "model_v1", "weight": 1e308}, {"model": "model_v2", "weight": 1e308}]}]}"#,
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "$.rules[0].split");
        assert!(p[0].message.contains("overflow"), "{p:?}");
        // Large but summable weights are fine and split as their ratio.
        let c = parse(
            br#"{"rules": [{"name": "ab", "split": [
                {"model": "a", "weight": 1e307}, {"model": "b", "weight": 1e307}]}]}"#,
        )
        .expect("valid");
        let r = Router::compile(&c, |m| Some(usize::from(m == "b"))).expect("compiles");
        let to_a = (0..2000u64)
            .filter(|u| r.route(*u, None).map(|x| x.0) == Some(0))
            .count();
        assert!((800..1200).contains(&to_a), "{to_a} of 2000 to a");
    }

    #[test]
    fn hashed_strings_are_bounded() {
        let salt = "s".repeat(MAX_HASHED_LEN + 1);
        let p = problems(&format!(r#"{{"salt": "{salt}", "default": "model_v1"}}"#));
        assert_eq!(p[0].path, "$.salt", "{p:?}");
        let name = "n".repeat(MAX_HASHED_LEN + 1);
        let p = problems(&format!(
            r#"{{"default": "model_v1", "rules": [{{"name": "{name}", "model": "model_v1"}}]}}"#
        ));
        assert_eq!(p[0].path, "$.rules[0].name", "{p:?}");
    }

    #[test]
    fn a_good_config_parses_and_names_its_models() {
        let c = parse(
            br#"{"default": "model_v1", "rules": [
                {"name": "canary", "canary": {"model": "model_v3", "percent": 5}},
                {"name": "ab", "split": [{"model": "model_v1", "weight": 1}, {"model": "model_v2", "weight": 1}]}]}"#,
        )
        .expect("valid");
        assert_eq!(c.models(), vec!["model_v1", "model_v3", "model_v2"]);
        assert_eq!(c.salt, "recsys");
    }

    #[test]
    fn a_split_is_stable_and_close_to_its_weights() {
        let c = parse(
            br#"{"salt": "s", "rules": [{"name": "ab", "split": [
                {"model": "a", "weight": 1}, {"model": "b", "weight": 3}]}]}"#,
        )
        .expect("valid");
        let r = Router::compile(&c, |m| Some(if m == "a" { 0 } else { 1 })).expect("compiles");
        let mut counts = [0u32; 2];
        for u in 0..20_000u64 {
            let (m, _) = r.route(u, None).expect("routed");
            counts[m] += 1;
            assert_eq!(r.route(u, None).map(|x| x.0), Some(m), "stable");
        }
        let share = f64::from(counts[0]) / 20_000.0;
        assert!((share - 0.25).abs() < 0.02, "share of a: {share}");
    }

    #[test]
    fn conditions_and_canary_fall_through() {
        let c = parse(
            br#"{"default": "d", "rules": [
                {"name": "young women", "when": {"gender": "F", "age": {"max": 29}}, "model": "y"},
                {"name": "students", "when": {"occupation": ["student"]}, "model": "s"},
                {"name": "canary", "canary": {"model": "c", "percent": 10}}]}"#,
        )
        .expect("valid");
        let idx = |m: &str| ["d", "y", "s", "c"].iter().position(|x| *x == m);
        let r = Router::compile(&c, idx).expect("compiles");
        let woman = UserAttrs {
            age: Some(24),
            gender: Some("F".into()),
            occupation: Some("writer".into()),
        };
        assert_eq!(r.route(1, Some(&woman)).map(|x| x.0), Some(1));
        let student = UserAttrs {
            age: Some(40),
            gender: Some("F".into()),
            occupation: Some("student".into()),
        };
        assert_eq!(r.route(1, Some(&student)).map(|x| x.0), Some(2));
        let mut canary = 0;
        for u in 0..10_000u64 {
            match r.route(u, None).map(|x| x.0) {
                Some(3) => canary += 1,
                Some(0) => {}
                other => panic!("unexpected route {other:?}"),
            }
        }
        assert!((800..1200).contains(&canary), "canary users: {canary}");
    }
}
