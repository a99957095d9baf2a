//! The gateway's database as a section names it (`database` or `database_env`):
//! `[audit]` and `[governance]` both do.

use super::validate::Problems;
use super::{Env, Secret};
use crate::db::Database;

/// Where the audit trail (and with it the key table) goes without a setting.
pub const DEFAULT_DATABASE: &str = "sqlite://data/audit.db";

/// The database `[section]` names by `database` or `database_env` (`None` when
/// neither is set, or what is set is wrong: the problem is recorded).
pub(super) fn database(
    section: &str,
    url: Option<&str>,
    url_env: Option<&str>,
    env: &Env,
    problems: &mut Problems,
) -> Option<Database> {
    let url = match (url, url_env) {
        (Some(_), Some(_)) => {
            problems.add(
                format!("{section}.database"),
                "set database or database_env, not both",
            );
            return None;
        }
        (None, Some(var)) => problems
            .secret(&format!("{section}.database_env"), var, env)?
            .expose()
            .to_owned(),
        (Some(url), None) => {
            if has_password(url) {
                problems.add(
                    format!("{section}.database"),
                    "a URL with a password belongs in database_env, not in the file",
                );
            }
            url.to_owned()
        }
        (None, None) => return None,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Err(error) = crate::db::check_url(&url) {
            let key = match url_env.is_some() {
                true => "database_env",
                false => "database",
            };
            problems.add(format!("{section}.{key}"), error);
        }
        return Some(Database::Postgres(Secret::new(url)));
    }
    if url.starts_with("sqlite:") {
        return Some(Database::Sqlite(url));
    }
    problems.add(
        format!("{section}.database"),
        "must be a postgres:// or sqlite:// URL",
    );
    None
}

/// `postgres://user:secret@host/db` holds a password.
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_noticed() {
        assert!(has_password("postgres://u:p@db/audit"));
        assert!(!has_password("postgres://u@db/audit"));
        assert!(!has_password("postgres://db:5432/audit?user=u"));
        assert!(!has_password("sqlite://data/audit.db"));
    }
}
