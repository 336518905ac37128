//! User attributes (age, gender, occupation) for ingested users.
//!
//! Two sources, in the shape of the course's user API
//! (`{"user_id":65365,"age":29,"occupation":"college/grad student","gender":"M"}`):
//! a JSON-lines file, or the API itself (`GET <base>/<user id>`), asked once
//! per user not already known and cached for the rest of the run. Users the
//! previous dataset already describes seed the cache, so a scheduled ingest
//! asks the API only about users it has never met.
//!
//! A user the source does not know stays without attributes: that is a
//! quality figure (`unknown_users`), not an error. An unreachable API is a
//! warning too; after [`MAX_CONSECUTIVE_FAILURES`] failed requests in a row
//! the rest of the users are not asked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;

use crate::dataset::UserInfo;

/// Stop asking the user API after this many failures in a row.
pub(crate) const MAX_CONSECUTIVE_FAILURES: usize = 10;
/// Parallel requests to the user API.
const API_WORKERS: usize = 8;
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Where user attributes come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UserSource {
    #[default]
    None,
    /// A JSON-lines file of user-API records.
    File(PathBuf),
    /// A base URL such as `http://host:8080/user/`; the user id is appended.
    Api(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Io(#[from] crate::fs_error::FsError),
    #[error("{path}:{line}: not a user record: {reason}")]
    BadRecord {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("user API URL {0:?} must start with http://")]
    BadUrl(String),
}

/// One record of the course's user API. Age may come as a number or a
/// string of digits.
#[derive(Debug, Deserialize)]
struct ApiUser {
    user_id: u64,
    #[serde(default)]
    age: Option<serde_json::Value>,
    #[serde(default)]
    occupation: Option<String>,
    #[serde(default)]
    gender: Option<String>,
}

impl ApiUser {
    fn into_info(self) -> UserInfo {
        let age = match self.age {
            Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|a| u32::try_from(a).ok()),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let text = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        UserInfo {
            user: self.user_id,
            age,
            gender: text(self.gender),
            occupation: text(self.occupation),
        }
    }
}

/// Parse a JSON-lines user file. Blank lines are skipped; any other line
/// that is not a user record is an error naming its line (the file is the
/// operator's input, not the stream's, so it should be fixed, not guessed).
pub(crate) fn parse_user_file(
    path: &Path,
    text: &str,
) -> Result<HashMap<u64, UserInfo>, UserError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let u: ApiUser = serde_json::from_str(line).map_err(|e| UserError::BadRecord {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        let info = u.into_info();
        out.insert(info.user, info);
    }
    Ok(out)
}

pub(crate) fn read_user_file(path: &Path) -> Result<HashMap<u64, UserInfo>, UserError> {
    let text =
        std::fs::read_to_string(path).map_err(crate::fs_error::io("read user file", path))?;
    parse_user_file(path, &text)
}

/// What asking the API gave.
#[derive(Debug, Default)]
pub struct Fetched {
    pub found: HashMap<u64, UserInfo>,
    /// Requests that were made.
    pub requests: u64,
    /// Requests that failed (transport error or a status other than 200/404).
    pub failures: u64,
    /// The last failure, for the warning.
    pub last_error: Option<String>,
    /// Users not asked because the API kept failing.
    pub skipped: u64,
}

/// `base` + user id, with exactly one `/` between.
pub(crate) fn user_url(base: &str, user: u64) -> String {
    if base.ends_with('/') {
        format!("{base}{user}")
    } else {
        format!("{base}/{user}")
    }
}

pub(crate) fn check_url(base: &str) -> Result<(), UserError> {
    if base.starts_with("http://") && base.len() > "http://".len() {
        Ok(())
    } else {
        Err(UserError::BadUrl(base.to_string()))
    }
}

/// Ask the API about each of `users` (each once), a few at a time.
pub(crate) fn fetch_users(base: &str, users: &[u64]) -> Fetched {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(API_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let consecutive = AtomicUsize::new(0);
    let out = Mutex::new(Fetched::default());
    std::thread::scope(|s| {
        for _ in 0..API_WORKERS.min(users.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&user) = users.get(i) else { break };
                    if consecutive.load(Ordering::Relaxed) >= MAX_CONSECUTIVE_FAILURES {
                        if let Ok(mut o) = out.lock() {
                            o.skipped += 1;
                        }
                        continue;
                    }
                    let res = ask(&agent, &user_url(base, user), user);
                    match &res {
                        Err(_) => consecutive.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => consecutive.swap(0, Ordering::Relaxed),
                    };
                    if let Ok(mut o) = out.lock() {
                        o.requests += 1;
                        match res {
                            Ok(Some(info)) => {
                                o.found.insert(user, info);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                o.failures += 1;
                                o.last_error = Some(e);
                            }
                        }
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// `Ok(None)`: the API does not know the user (404, or a body without a
/// matching `user_id`, which is how the course API answers unknown ids).
fn ask(agent: &ureq::Agent, url: &str, user: u64) -> Result<Option<UserInfo>, String> {
    let mut resp = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    if status == 404 {
        return Ok(None);
    }
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    match serde_json::from_str::<ApiUser>(&body) {
        Ok(u) if u.user_id == user => Ok(Some(u.into_info())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_course_records() {
        let text = r#"{"user_id":65365,"age":29,"occupation":"college/grad student","gender":"M"}

{"user_id":7,"age":"41","occupation":"","gender":"F"}
{"user_id":8}
"#;
        let m = parse_user_file(Path::new("u.jsonl"), text).expect("parse");
        assert_eq!(m.len(), 3);
        let u = &m[&65365];
        assert_eq!(u.age, Some(29));
        assert_eq!(u.gender.as_deref(), Some("M"));
        assert_eq!(u.occupation.as_deref(), Some("college/grad student"));
        assert_eq!(m[&7].age, Some(41));
        assert_eq!(m[&7].occupation, None);
        assert_eq!(m[&8].gender, None);
    }

    #[test]
    fn bad_record_names_its_line() {
        let err = parse_user_file(Path::new("u.jsonl"), "{\"user_id\":1}\n{\"age\":3}\n")
            .expect_err("missing user_id");
        assert!(err.to_string().starts_with("u.jsonl:2:"), "{err}");
    }

    #[test]
    fn urls() {
        assert_eq!(user_url("http://h:8080/user/", 5), "http://h:8080/user/5");
        assert_eq!(user_url("http://h:8080/user", 5), "http://h:8080/user/5");
        assert!(check_url("http://h/user/").is_ok());
        assert!(check_url("https://h/user/").is_err());
        assert!(check_url("h:8080").is_err());
    }

    #[test]
    fn unreachable_api_gives_up() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let users: Vec<u64> = (0..100).collect();
        let f = fetch_users(&format!("http://127.0.0.1:{port}/user/"), &users);
        assert!(f.found.is_empty());
        assert!(f.failures >= MAX_CONSECUTIVE_FAILURES as u64);
        assert!(f.skipped > 0, "{f:?}");
        assert_eq!(f.requests + f.skipped, 100);
        assert!(f.last_error.is_some());
    }
}
