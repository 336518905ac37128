//! `--users-where`: a group of users picked by the attributes a dataset
//! carries (`users.csv`: age, gender, occupation).
//!
//! Written as `attribute=value` conditions, all of which must hold
//! (`gender=F`, `age=25-34`, `occupation=student|writer`); one attribute
//! takes several values joined by `|`, any of which may match. Gender and
//! occupation compare without regard to ASCII case, as the router's rules
//! do for occupation; age is an inclusive range (`25`, `18-24`, `50+` or
//! `50-`, `-17`, `<18`, `<=17`, `>49`, `>=50`). A user without the
//! attribute never matches a condition on it.
//!
//! The parsed filter is canonical (values deduplicated and sorted, ranges
//! merged in order), so the same group always serializes the same way: it
//! is part of a train run's parameters and `reproduce` reads it back.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::dataset::UserInfo;

/// Oldest age a range may name (here and in the router's rules).
pub(crate) const MAX_AGE: u32 = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "--users-where {0:?} is not attribute=value (e.g. gender=F, age=25-34, occupation=student)"
    )]
    NotKeyValue(String),
    #[error(
        "--users-where {condition:?}: unknown user attribute {attribute:?} \
         (datasets carry gender, age and occupation)"
    )]
    UnknownAttribute {
        condition: String,
        attribute: String,
    },
    #[error("--users-where {0:?}: an empty value")]
    EmptyValue(String),
    #[error("--users-where: {0} is given twice; list its values with | instead (e.g. {0}=a|b)")]
    Repeated(&'static str),
    #[error(
        "--users-where {condition:?}: bad age {value:?} (expected N, N-M, N+, <N, <=N, >N or >=N \
         with ages 0-{MAX_AGE}, lower bound first)"
    )]
    BadAge { condition: String, value: String },
    #[error("--users-where: no condition given")]
    Nothing,
    #[error("--users-where {filter}: {what} {value:?} matches none of {dataset}'s users ({known})")]
    UnknownValue {
        filter: String,
        dataset: String,
        what: &'static str,
        value: String,
        known: String,
    },
    #[error("--users-where {filter} matches none of {dataset}'s {users} users{why}")]
    NoUsers {
        filter: String,
        dataset: String,
        users: usize,
        why: String,
    },
    #[error(
        "--users-where {filter} matches {users} of {dataset}'s users, but none of them has an event to train on"
    )]
    NoEvents {
        filter: String,
        dataset: String,
        users: usize,
    },
}

/// An inclusive age range; either bound may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl AgeRange {
    pub(crate) fn contains(&self, age: u32) -> bool {
        self.min.is_none_or(|lo| age >= lo) && self.max.is_none_or(|hi| age <= hi)
    }
}

impl fmt::Display for AgeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (Some(a), Some(b)) => write!(f, "{a}-{b}"),
            (Some(a), None) => write!(f, "{a}+"),
            (None, Some(b)) => write!(f, "<={b}"),
            (None, None) => write!(f, "0+"),
        }
    }
}

/// Every condition must hold; within one attribute, any value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gender: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub age: Vec<AgeRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub occupation: Vec<String>,
}

fn parse_age(condition: &str, value: &str) -> Result<AgeRange, FilterError> {
    let bad = || FilterError::BadAge {
        condition: condition.to_string(),
        value: value.to_string(),
    };
    let num = |s: &str| -> Result<u32, FilterError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_AGE)
            .ok_or_else(bad)
    };
    let v = value.trim();
    let r = if let Some(rest) = v.strip_prefix("<=") {
        AgeRange {
            min: None,
            max: Some(num(rest)?),
        }
    } else if let Some(rest) = v.strip_prefix(">=") {
        AgeRange {
            min: Some(num(rest)?),
            max: None,
        }
    } else if let Some(rest) = v.strip_prefix('<') {
        let n = num(rest)?;
        AgeRange {
            min: None,
            max: Some(n.checked_sub(1).ok_or_else(bad)?),
        }
    } else if let Some(rest) = v.strip_prefix('>') {
        AgeRange {
            min: Some(num(rest)? + 1),
            max: None,
        }
    } else if let Some(rest) = v.strip_suffix('+') {
        AgeRange {
            min: Some(num(rest)?),
            max: None,
        }
    } else if let Some(rest) = v.strip_prefix('-') {
        AgeRange {
            min: None,
            max: Some(num(rest)?),
        }
    } else if let Some((a, b)) = v.split_once('-') {
        let lo = num(a)?;
        if b.trim().is_empty() {
            AgeRange {
                min: Some(lo),
                max: None,
            }
        } else {
            let hi = num(b)?;
            if hi < lo {
                return Err(bad());
            }
            AgeRange {
                min: Some(lo),
                max: Some(hi),
            }
        }
    } else {
        let n = num(v)?;
        AgeRange {
            min: Some(n),
            max: Some(n),
        }
    };
    Ok(r)
}

/// Values deduplicated without regard to ASCII case (the first spelling
/// kept), sorted.
fn canonical(values: Vec<String>) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for v in values {
        seen.entry(v.to_ascii_lowercase()).or_insert(v);
    }
    seen.into_values().collect()
}

impl UserFilter {
    /// Parse `--users-where` arguments: each is one or more conditions
    /// joined by `,` (`gender=F,age=25-34`); the flag may be repeated.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<UserFilter, FilterError> {
        let mut f = UserFilter::default();
        let mut given: HashSet<&'static str> = HashSet::new();
        for arg in args {
            for cond in arg.as_ref().split(',') {
                let cond = cond.trim();
                if cond.is_empty() {
                    continue;
                }
                let (k, v) = cond
                    .split_once('=')
                    .ok_or_else(|| FilterError::NotKeyValue(cond.to_string()))?;
                let key: &'static str = match k.trim().to_ascii_lowercase().as_str() {
                    "gender" => "gender",
                    "age" => "age",
                    "occupation" => "occupation",
                    _ => {
                        return Err(FilterError::UnknownAttribute {
                            condition: cond.to_string(),
                            attribute: k.trim().to_string(),
                        });
                    }
                };
                if !given.insert(key) {
                    return Err(FilterError::Repeated(key));
                }
                let values: Vec<&str> = v.split('|').map(str::trim).collect();
                if values.iter().any(|v| v.is_empty()) {
                    return Err(FilterError::EmptyValue(cond.to_string()));
                }
                match key {
                    "gender" => f.gender = values.iter().map(|s| s.to_string()).collect(),
                    "occupation" => f.occupation = values.iter().map(|s| s.to_string()).collect(),
                    _ => {
                        f.age = values
                            .iter()
                            .map(|v| parse_age(cond, v))
                            .collect::<Result<_, _>>()?;
                    }
                }
            }
        }
        if f.is_empty() {
            return Err(FilterError::Nothing);
        }
        f.gender = canonical(f.gender);
        f.occupation = canonical(f.occupation);
        f.age.sort();
        f.age.dedup();
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.gender.is_empty() && self.age.is_empty() && self.occupation.is_empty()
    }

    /// Whether `u` belongs to the group.
    pub fn matches(&self, u: &UserInfo) -> bool {
        let any = |want: &[String], have: &Option<String>| {
            want.is_empty()
                || have
                    .as_deref()
                    .is_some_and(|h| want.iter().any(|w| w.eq_ignore_ascii_case(h.trim())))
        };
        any(&self.gender, &u.gender)
            && any(&self.occupation, &u.occupation)
            && (self.age.is_empty()
                || u.age
                    .is_some_and(|a| self.age.iter().any(|r| r.contains(a))))
    }

    /// The ids of the users of `users` in the group. Every gender and
    /// occupation value must be some user's (a typo is an error, not a
    /// smaller group), and the group must not be empty. `dataset` names
    /// the users' dataset in messages.
    pub fn select(&self, users: &[UserInfo], dataset: &str) -> Result<HashSet<u64>, FilterError> {
        // Lower-cased value -> its first spelling in the table.
        let known = |get: fn(&UserInfo) -> Option<&String>| -> BTreeMap<String, String> {
            let mut m = BTreeMap::new();
            for s in users.iter().filter_map(get) {
                m.entry(s.trim().to_ascii_lowercase())
                    .or_insert_with(|| s.trim().to_string());
            }
            m
        };
        let checks: [(&'static str, &Vec<String>, BTreeMap<String, String>); 2] = [
            ("gender", &self.gender, known(|u| u.gender.as_ref())),
            (
                "occupation",
                &self.occupation,
                known(|u| u.occupation.as_ref()),
            ),
        ];
        for (what, want, have) in checks {
            for v in want {
                if !have.contains_key(&v.to_ascii_lowercase()) {
                    let mut list: Vec<String> = have.values().take(30).cloned().collect();
                    if have.len() > 30 {
                        list.push(format!("and {} more", have.len() - 30));
                    }
                    return Err(FilterError::UnknownValue {
                        filter: self.to_string(),
                        dataset: dataset.to_string(),
                        what,
                        value: v.clone(),
                        known: if list.is_empty() {
                            format!("none of them has a {what}")
                        } else {
                            format!("{what} values there: {}", list.join(", "))
                        },
                    });
                }
            }
        }
        let out: HashSet<u64> = users
            .iter()
            .filter(|u| self.matches(u))
            .map(|u| u.user)
            .collect();
        if out.is_empty() {
            let why = if users.is_empty() {
                " (it has no users table rows: nothing says who is who)".to_string()
            } else if !self.age.is_empty() {
                let ages: Vec<u32> = users.iter().filter_map(|u| u.age).collect();
                match (ages.iter().min(), ages.iter().max()) {
                    (Some(lo), Some(hi)) => format!(" (ages there: {lo}-{hi})"),
                    _ => " (none of them has an age)".to_string(),
                }
            } else {
                String::new()
            };
            return Err(FilterError::NoUsers {
                filter: self.to_string(),
                dataset: dataset.to_string(),
                users: users.len(),
                why,
            });
        }
        Ok(out)
    }
}

/// The canonical `--users-where` spelling: `gender=F,age=25-34,occupation=a|b`.
impl fmt::Display for UserFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.gender.is_empty() {
            parts.push(format!("gender={}", self.gender.join("|")));
        }
        if !self.age.is_empty() {
            let a: Vec<String> = self.age.iter().map(ToString::to_string).collect();
            parts.push(format!("age={}", a.join("|")));
        }
        if !self.occupation.is_empty() {
            parts.push(format!("occupation={}", self.occupation.join("|")));
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, age: Option<u32>, g: Option<&str>, o: Option<&str>) -> UserInfo {
        UserInfo {
            user: id,
            age,
            gender: g.map(str::to_string),
            occupation: o.map(str::to_string),
        }
    }

    fn users() -> Vec<UserInfo> {
        vec![
            user(1, Some(24), Some("M"), Some("technician")),
            user(2, Some(53), Some("F"), Some("other")),
            user(3, Some(23), Some("F"), Some("writer")),
            user(4, None, Some("F"), Some("Writer")),
            user(5, Some(33), None, None),
        ]
    }

    fn ids(f: &str) -> Vec<u64> {
        let f = UserFilter::parse(&[f]).expect(f);
        let mut v: Vec<u64> = f
            .select(&users(), "d")
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .into_iter()
            .collect();
        v.sort();
        v
    }

    #[test]
    fn conditions_combine_and_values_alternate() {
        assert_eq!(ids("gender=F"), vec![2, 3, 4]);
        assert_eq!(ids("gender=f"), vec![2, 3, 4], "case does not matter");
        assert_eq!(ids("gender=F,age=<30"), vec![3], "no age: no match");
        assert_eq!(ids("occupation=writer"), vec![3, 4]);
        assert_eq!(ids("occupation=writer|technician"), vec![1, 3, 4]);
        assert_eq!(ids("age=20-30|50+"), vec![1, 2, 3]);
        assert_eq!(ids("age=33"), vec![5]);
        assert_eq!(ids("age=>=53"), vec![2]);
        assert_eq!(ids("age=>52"), vec![2]);
        assert_eq!(ids("age=<=23"), vec![3]);
        assert_eq!(ids("age=-24"), vec![1, 3]);
        assert_eq!(ids("age=30-"), vec![2, 5]);
        let two = UserFilter::parse(&["gender=F", "age=50+"]).expect("two flags");
        assert_eq!(
            two,
            UserFilter::parse(&["age=50+,gender=F"]).expect("one flag")
        );
        assert_eq!(two.to_string(), "gender=F,age=50+");
    }

    #[test]
    fn the_parsed_filter_is_canonical_and_round_trips() {
        let f = UserFilter::parse(&["occupation=writer|Artist|WRITER, age=50+|18-24|18-24"])
            .expect("parse");
        assert_eq!(f.occupation, vec!["Artist", "writer"]);
        assert_eq!(f.to_string(), "age=18-24|50+,occupation=Artist|writer");
        let json = serde_json::to_string(&f).expect("json");
        assert_eq!(
            json,
            r#"{"age":[{"min":18,"max":24},{"min":50}],"occupation":["Artist","writer"]}"#
        );
        assert_eq!(serde_json::from_str::<UserFilter>(&json).expect("back"), f);
        let again = UserFilter::parse(&[f.to_string()]).expect("reparse");
        assert_eq!(again, f);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let err = |a: &str| UserFilter::parse(&[a]).expect_err(a).to_string();
        assert!(err("zip=01002").contains("unknown user attribute \"zip\""));
        assert!(err("genderF").contains("not attribute=value"));
        assert!(err("gender=").contains("empty value"));
        assert!(err("gender=F|").contains("empty value"));
        assert!(err("gender=F,gender=M").contains("gender is given twice"));
        for bad in ["abc", "30-20", "1000", "<0", "2.5", "--3", "+"] {
            assert!(err(&format!("age={bad}")).contains("bad age"), "{bad}");
        }
        assert!(err(" , ").contains("no condition"));
        let f = UserFilter::parse(&["occupation=wrtier"]).expect("parse");
        let e = f
            .select(&users(), "dataset_1")
            .expect_err("typo")
            .to_string();
        assert!(
            e.contains("occupation \"wrtier\" matches none of dataset_1's users")
                && e.contains("other, technician, writer"),
            "{e}"
        );
        let f = UserFilter::parse(&["gender=M,age=50+"]).expect("parse");
        let e = f
            .select(&users(), "dataset_1")
            .expect_err("empty")
            .to_string();
        assert_eq!(
            e,
            "--users-where gender=M,age=50+ matches none of dataset_1's 5 users (ages there: 23-53)"
        );
        let e = f
            .select(&[], "dataset_1")
            .expect_err("no users")
            .to_string();
        assert!(e.contains("gender \"M\" matches none"), "{e}");
        let f = UserFilter::parse(&["age=50+"]).expect("parse");
        let e = f
            .select(&[], "dataset_1")
            .expect_err("no users")
            .to_string();
        assert!(e.contains("no users table rows"), "{e}");
    }
}
