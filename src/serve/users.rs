//! The users table of a dataset (`users.csv`: `user,age,gender,occupation`,
//! an empty field meaning unknown), read for routing on user attributes.
//!
//! Kept to this one function so that `crate::dataset`'s reader can replace
//! it without touching the router.

use std::collections::HashMap;

use super::config::UserAttrs;

/// Parse `users.csv`. Rows that do not parse are skipped and counted: a bad
/// row must not take a model out of service, it only loses that user's
/// attributes. Returns (users, skipped rows).
pub fn parse_users_csv(bytes: &[u8]) -> Result<(HashMap<u64, UserAttrs>, usize), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("users.csv is not UTF-8: {e}"))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if split_csv(header.trim_end_matches('\r')) != ["user", "age", "gender", "occupation"] {
        return Err(format!(
            "users.csv header is {header:?}, expected \"user,age,gender,occupation\""
        ));
    }
    let mut out = HashMap::new();
    let mut skipped = 0;
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let f = split_csv(line);
        let (Some(user), Some(age), Some(gender), Some(occ)) =
            (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            skipped += 1;
            continue;
        };
        let Ok(user) = user.parse::<u64>() else {
            skipped += 1;
            continue;
        };
        let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
        out.insert(
            user,
            UserAttrs {
                age: age.parse().ok(),
                gender: opt(gender),
                occupation: opt(occ),
            },
        );
    }
    Ok((out, skipped))
}

/// Split one CSV line (RFC 4180 quoting, no embedded newlines).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_users_and_skips_bad_rows() {
        let (u, skipped) = parse_users_csv(
            b"user,age,gender,occupation\n1,24,M,technician\n2,,F,\"writer, poet\"\nx,1,M,a\n3\n",
        )
        .expect("parses");
        assert_eq!(skipped, 2);
        assert_eq!(u[&1].age, Some(24));
        assert_eq!(u[&2].age, None);
        assert_eq!(u[&2].occupation.as_deref(), Some("writer, poet"));
        assert!(parse_users_csv(b"id,age\n").is_err());
    }
}
