//! The wall clock every validity decision reads (rule windows, tokens, sessions, licenses),
//! failing closed: a clock before the epoch, or one that is plainly unset, is an error — never
//! "time 0", which would make every `not_after > now` check pass.

use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z. No csap installation predates it, so an earlier reading means the
/// clock was reset (a dead RTC battery, a VM restored without time sync). Trusting it would
/// revive every expired token and license.
pub const EARLIEST_PLAUSIBLE: i64 = 1_704_067_200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the system clock is before 1970-01-01 (the Unix epoch); nothing can be judged valid until it is set")]
    BeforeEpoch,
    #[error("the system clock reads {0} (before 2024-01-01), so it is unset or wrong; nothing can be judged valid until it is set")]
    Implausible(i64),
    #[error("the system clock is too far in the future to represent")]
    Overflow,
    #[error("the clock was made unusable: {0}")]
    Unusable(&'static str),
}

/// Unix seconds of `t`, or why `t` cannot be trusted.
pub fn unix_seconds(t: SystemTime) -> Result<i64, ClockError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ClockError::BeforeEpoch)?;
    let secs = i64::try_from(d.as_secs()).map_err(|_| ClockError::Overflow)?;
    if secs < EARLIEST_PLAUSIBLE {
        return Err(ClockError::Implausible(secs));
    }
    Ok(secs)
}

/// The current wall-clock time in unix seconds, or why the clock cannot be trusted.
pub fn unix_now() -> Result<i64, ClockError> {
    unix_seconds(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_clock_before_the_epoch_or_unset_is_an_error_not_zero() {
        assert_eq!(
            unix_seconds(UNIX_EPOCH - Duration::from_secs(1)),
            Err(ClockError::BeforeEpoch)
        );
        assert_eq!(unix_seconds(UNIX_EPOCH), Err(ClockError::Implausible(0)));
        assert_eq!(
            unix_seconds(UNIX_EPOCH + Duration::from_secs(EARLIEST_PLAUSIBLE as u64)),
            Ok(EARLIEST_PLAUSIBLE)
        );
        assert!(unix_now().is_ok());
    }
}
