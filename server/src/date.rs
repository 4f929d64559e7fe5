//! The `date` header of responses in a simulation.
//!
//! hyper gives every response that has no `date` header one from the system clock. In a
//! simulation that would make the bytes a member sends depend on the real time of day — and,
//! through HPACK's header table, the sizes of later frames — so a replay could go differently.
//! There the server sets the header first, from the simulated clock; a real server leaves it to
//! hyper.

use ::http::{header::DATE, HeaderValue, Response};

/// Sets `date` from the simulated clock when this thread runs a simulation.
pub fn simulated<B>(mut resp: Response<B>) -> Response<B> {
    if raftlog::determinism::simulated() {
        let date = httpdate::fmt_http_date(raftlog::determinism::wall_clock());
        if let Ok(value) = HeaderValue::from_str(&date) {
            resp.headers_mut().insert(DATE, value);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_simulation_sets_the_date() {
        assert!(simulated(Response::new(())).headers().get(DATE).is_none());
        let sim = raftlog::determinism::enter(1, || std::time::Duration::from_secs(3));
        let resp = simulated(Response::new(()));
        drop(sim);
        assert_eq!(resp.headers()[DATE], "Tue, 14 Nov 2023 22:13:23 GMT");
    }
}
