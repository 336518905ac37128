//! S3 credentials from the environment, as the AWS tools find them:
//! `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
//! else the profile `AWS_PROFILE` (default `default`) in
//! `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`).

use crate::store::s3::S3Credentials;

pub fn credentials() -> Option<S3Credentials> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        return Some(S3Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    let file = var("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(file).ok()?;
    profile(
        &text,
        &var("AWS_PROFILE").unwrap_or_else(|| "default".into()),
    )
}

/// The keys of `[name]` in an INI credentials file.
fn profile(text: &str, name: &str) -> Option<S3Credentials> {
    let mut inside = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(S3Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles() {
        let t = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n[team]\n# c\naws_access_key_id=C\naws_secret_access_key = D\naws_session_token = T\n";
        let d = profile(t, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("A", "B")
        );
        let t2 = profile(t, "team").unwrap();
        assert_eq!(t2.session_token.as_deref(), Some("T"));
        assert!(profile(t, "none").is_none());
    }
}
