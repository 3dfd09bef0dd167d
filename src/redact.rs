//! Secrets out of logs and messages: what may be printed of a URL, and of
//! an error with its causes.
//!
//! Backend URLs may carry credentials (`https://user:token@host/...`) or
//! tokens in the query (`?api_key=...`), and the Redis URL its password. Logs
//! and error messages show only `scheme://host:port/path`.

/// `raw` without userinfo, query or fragment; works on text that is not a
/// valid URL too (a config error must not echo a secret either).
pub fn url(raw: &str) -> String {
    let cut = raw.find(['?', '#']).unwrap_or(raw.len());
    let head = &raw[..cut];
    let (scheme, rest) = match head.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, head),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

/// An error with its causes, `a: b: c` (a client error's own message is often
/// only its kind). For errors that do not carry a URL, such as hyper-util's.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // An error that already shows its source (`"{0}"` and `#[source]`)
        // would otherwise say it twice.
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{error_chain, url};

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Shows(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect")]
    struct Hides(#[source] std::io::Error);

    #[test]
    fn a_chain_says_each_cause_once() {
        let cause = || std::io::Error::other("connection closed before message completed");
        assert_eq!(
            error_chain(&Shows(cause())),
            "connection closed before message completed"
        );
        assert_eq!(
            error_chain(&Hides(cause())),
            "cannot connect: connection closed before message completed"
        );
    }

    #[test]
    fn credentials_query_and_fragment_are_dropped() {
        assert_eq!(
            url("https://user:pw@example.com:8443/mcp/v1?api_key=k#frag"),
            "https://example.com:8443/mcp/v1"
        );
        assert_eq!(url("redis://:secret@10.0.0.1:6379/0"), "redis://10.0.0.1:6379/0");
        assert_eq!(url("http://127.0.0.1:9001/mcp"), "http://127.0.0.1:9001/mcp");
        assert_eq!(url("http://host?token=t"), "http://host");
        assert_eq!(url("user:pw@host/x"), "host/x");
        assert_eq!(url("not a url"), "not a url");
        // `@` in the path is not userinfo.
        assert_eq!(url("http://h/a@b"), "http://h/a@b");
    }
}
