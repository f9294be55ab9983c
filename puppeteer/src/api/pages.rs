//! Page sizes and page tokens of the API's listings (how a listing is read
//! a page at a time is `store::pages`).
//!
//! A token is opaque to clients: the listing's name, a dot, and the store's
//! cursor in hex. A token of another listing, or one that was tampered
//! with, is refused (`InvalidArgument`) rather than read from somewhere
//! unexpected.

use crate::app::error::{ApiResult, invalid};
use crate::store::{Cursor, PageRequest};

/// A listing's page sizes and the name its tokens carry.
#[derive(Clone, Copy, Debug)]
pub struct Listing {
    name: &'static str,
    default_size: usize,
    max_size: usize,
}

pub const PUPPETS: Listing = Listing {
    name: "puppets",
    default_size: 1000,
    max_size: 1000,
};
/// Every unfinished run.
pub const RUNS: Listing = Listing {
    name: "runs",
    default_size: 1000,
    max_size: 1000,
};
/// A job's runs: the cursor is a position in the job.
pub const JOB_RUNS: Listing = Listing {
    name: "jobruns",
    default_size: 1000,
    max_size: 1000,
};
/// A puppet's runs: the cursor is a key under the puppet's name (a job's
/// runs: under the job's id).
pub const PUPPET_RUNS: Listing = Listing {
    name: "puppetruns",
    default_size: 1000,
    max_size: 1000,
};
pub const JOBS: Listing = Listing {
    name: "jobs",
    default_size: 100,
    max_size: 1000,
};
pub const AUDIT: Listing = Listing {
    name: "audit",
    default_size: 1000,
    max_size: 1000,
};

/// A filtered listing looks at up to this many records per page, at least.
const MIN_BUDGET: usize = 10_000;
/// The longest token accepted: a cursor is a store key (a name, an id and a
/// sequence number at most).
const MAX_TOKEN: usize = 1100;

impl Listing {
    /// The page a request asks for: `size` 0 means the default, a larger
    /// one than the maximum is lowered to it.
    pub fn request(&self, size: u32, token: &str) -> ApiResult<PageRequest> {
        let limit = match size as usize {
            0 => self.default_size,
            n => n.min(self.max_size),
        };
        Ok(PageRequest {
            after: self.cursor(token)?,
            limit,
            budget: (limit * 10).max(MIN_BUDGET),
        })
    }

    /// Refuses a token whose cursor `fits` does not accept: one made for
    /// another job or puppet, or tampered with.
    pub fn check(&self, page: &PageRequest, fits: impl Fn(&[u8]) -> bool) -> ApiResult<()> {
        match &page.after {
            Some(Cursor(key)) if !fits(key) => Err(self.refused()),
            _ => Ok(()),
        }
    }

    /// The token of the next page, empty after the last.
    pub fn token(&self, next: Option<Cursor>) -> String {
        match next {
            Some(Cursor(key)) => format!("{}.{}", self.name, hex::encode(key)),
            None => String::new(),
        }
    }

    fn cursor(&self, token: &str) -> ApiResult<Option<Cursor>> {
        if token.is_empty() {
            return Ok(None);
        }
        let refused = || self.refused();
        if token.len() > MAX_TOKEN {
            return Err(refused());
        }
        let hex = token
            .strip_prefix(self.name)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(refused)?;
        let key = hex::decode(hex).map_err(|_| refused())?;
        Ok(Some(Cursor(key)))
    }
}

impl Listing {
    fn refused(&self) -> crate::app::ApiError {
        invalid(format!(
            "invalid page_token: give the next_page_token of the previous page of this {} listing, unchanged",
            self.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_belongs_to_its_listing() {
        let token = PUPPETS.token(Some(Cursor(b"web-01".to_vec())));
        let request = PUPPETS.request(0, &token).unwrap();
        assert_eq!(request.after, Some(Cursor(b"web-01".to_vec())));
        assert_eq!((request.limit, request.budget), (1000, 10_000));
        assert_eq!(PUPPETS.token(None), "");
        for bad in [
            RUNS.token(Some(Cursor(b"web-01".to_vec()))),
            "puppets.zz".to_string(),
            "puppets".to_string(),
            format!("puppets.{}", "00".repeat(600)),
        ] {
            let e = PUPPETS.request(0, &bad).unwrap_err();
            assert!(e.to_string().contains("invalid page_token"), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_default_and_are_capped() {
        assert_eq!(JOBS.request(0, "").unwrap().limit, 100);
        assert_eq!(JOBS.request(7, "").unwrap().limit, 7);
        assert_eq!(JOBS.request(1_000_000, "").unwrap().limit, 1000);
        assert_eq!(RUNS.request(2000, "").unwrap().budget, 10_000);
    }

    #[test]
    fn a_cursor_must_fit_its_listing() {
        let token = JOB_RUNS.token(Some(Cursor(7u64.to_be_bytes().to_vec())));
        let page = JOB_RUNS.request(0, &token).unwrap();
        assert!(JOB_RUNS.check(&page, |key| key.len() == 8).is_ok());
        let tampered = JOB_RUNS.token(Some(Cursor(vec![1, 2, 3])));
        let page = JOB_RUNS.request(0, &tampered).unwrap();
        assert!(JOB_RUNS.check(&page, |key| key.len() == 8).is_err());
        // Another listing's token, even of runs, is refused.
        assert!(PUPPET_RUNS.request(0, &token).is_err());
    }
}
