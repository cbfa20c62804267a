//! Error text for logs and one-line messages.

/// `e` and its sources, `: `-separated: the top-level messages of reqwest, hyper,
/// redb and rustls ("error sending request", "database error") say nothing of why
/// without them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
