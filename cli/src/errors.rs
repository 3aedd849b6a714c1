//! How `csap` prints a failed command: one sentence, each cause once, and a hint where the fix
//! is known.
//!
//! Many error types in the workspace put their source in their own message (`"{path}:
//! {source}"`) *and* report it as `source()`, so walking the chain naively prints the root cause
//! twice (`No such file or directory (os error 2): No such file or directory (os error 2)`). The
//! chain is the one place every error passes through on its way to the user, so that is where a
//! cause that its wrapper already stated is dropped.

use keyserver::wire::Reason;
use keyserver::ClientError;

/// Joins an error chain into one line, "outer: cause: root cause", leaving out every cause
/// whose text the message before it already ends with.
pub fn sentence(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() {
            continue;
        }
        if parts.last().is_some_and(|outer| outer.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// `csap login` refused because the identity it used is not a device (typically the admin
/// identity, which has no device row): say what to log in with instead.
pub fn login_hint(err: anyhow::Error) -> anyhow::Error {
    let unknown_device = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::Denied(Reason::UnknownDevice))
        )
    });
    if !unknown_device {
        return err;
    }
    err.context(
        "that --identity is not an enrolled device (the admin identity cannot log users in): \
         use the directory `csap device enroll NAME --out DIR` wrote, or log in through the \
         mount without --identity",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    /// Like the workspace's thiserror types: the source in the message and in `source()`.
    #[derive(Debug)]
    struct Wrapped {
        source: std::io::Error,
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "backing directory /x: {}", self.source)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_its_wrapper_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let root = io.to_string();
        let err = anyhow::Error::from(Wrapped { source: io }).context("mounting");
        let line = sentence(&err);
        assert_eq!(line, format!("mounting: backing directory /x: {root}"));
        assert_eq!(line.matches(&root).count(), 1);
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let err = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing the token")
            .unwrap_err();
        assert_eq!(sentence(&err), "writing the token: disk full");
    }
}
