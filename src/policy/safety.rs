//! Safety: never bless another attempt of a request the application may
//! have processed, unless doing it twice is harmless.

use crate::classify::{Cause, Reached};
use crate::labels::labels;

/// What the decision needs to know about the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts {
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 §9.2.2).
    pub idempotent_method: bool,
    /// The request carries an `Idempotency-Key`.
    pub idempotency_key: bool,
}

labels! {
    /// The verdict on one failed attempt.
    pub enum Decision {
        /// Another attempt (at once, or once a hold finds an endpoint).
        Retry => "retry",
        /// Not a failure retrying can help (overload, timeout, other 5xx), or a
        /// plain app 503 with `retry_plain_503` off.
        NotRetriable => "not_retriable",
        /// The app may have processed it and it is not idempotent.
        Unsafe => "unsafe",
        /// `retry.enabled` is off.
        Disabled => "disabled",
        /// The retry budget is spent: a retry that may add load waits for it.
        BudgetSpent => "budget_spent",
    }
}

/// Whether a failed attempt with this cause may be tried again.
pub fn decide(cause: Cause, request: RequestFacts, retry_plain_503: bool) -> Decision {
    let retriable = match cause {
        Cause::NoHealthyUpstream
        | Cause::ConnectFailure
        | Cause::UpstreamRejected
        | Cause::UpstreamDraining
        | Cause::UpstreamNotReady
        | Cause::ResetAfterSend => true,
        Cause::App503 => retry_plain_503,
        Cause::Success | Cause::Timeout | Cause::Overload | Cause::OtherError => false,
    };
    if !retriable {
        return Decision::NotRetriable;
    }
    if !is_safe(cause.reached_app(), request) {
        return Decision::Unsafe;
    }
    Decision::Retry
}

/// Sending again is safe when the app never saw the request, or when doing
/// it twice has the effect of doing it once.
pub(crate) fn is_safe(reached: Reached, request: RequestFacts) -> bool {
    reached == Reached::Never || request.idempotent_method || request.idempotency_key
}

/// RFC 9110 §9.2.2 idempotent methods.
pub(crate) fn idempotent_method(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const POST: RequestFacts = RequestFacts {
        idempotent_method: false,
        idempotency_key: false,
    };
    const GET: RequestFacts = RequestFacts {
        idempotent_method: true,
        idempotency_key: false,
    };

    #[test]
    fn post_is_retried_only_when_it_never_reached_the_app() {
        for cause in [
            Cause::ConnectFailure,
            Cause::NoHealthyUpstream,
            Cause::UpstreamRejected,
        ] {
            assert_eq!(decide(cause, POST, false), Decision::Retry, "{cause:?}");
        }
        for cause in [
            Cause::UpstreamDraining,
            Cause::UpstreamNotReady,
            Cause::ResetAfterSend,
        ] {
            assert_eq!(decide(cause, POST, false), Decision::Unsafe, "{cause:?}");
        }
    }

    #[test]
    fn idempotency_key_makes_a_post_safe() {
        let keyed = RequestFacts {
            idempotency_key: true,
            ..POST
        };
        assert_eq!(decide(Cause::ResetAfterSend, keyed, false), Decision::Retry);
    }

    #[test]
    fn overload_timeouts_and_plain_503s() {
        assert_eq!(decide(Cause::Overload, GET, true), Decision::NotRetriable);
        assert_eq!(decide(Cause::Timeout, GET, true), Decision::NotRetriable);
        assert_eq!(decide(Cause::OtherError, GET, true), Decision::NotRetriable);
        assert_eq!(decide(Cause::App503, GET, false), Decision::NotRetriable);
        assert_eq!(decide(Cause::App503, GET, true), Decision::Retry);
        assert_eq!(decide(Cause::App503, POST, true), Decision::Unsafe);
    }

    #[test]
    fn rfc_9110_idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent_method(m.as_bytes()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "get"] {
            assert!(!idempotent_method(m.as_bytes()), "{m}");
        }
    }
}
