//! Names of workflows being registered: a second registration of a name while the first is
//! still starting its nodes is refused at once, as a registered name is.

use std::collections::HashSet;
use std::sync::Mutex;

/// The workflow names registrations are working on.
#[derive(Default)]
pub struct Claims(Mutex<HashSet<String>>);

/// A claimed name, given back when dropped.
pub struct Claim<'a> {
    claims: &'a Claims,
    name: String,
}

impl Claims {
    /// Claims `name` for one registration; `None` while another holds it.
    pub fn claim(&self, name: &str) -> Option<Claim<'_>> {
        let fresh = self
            .0
            .lock()
            .expect("workflow claims lock")
            .insert(name.to_string());
        fresh.then(|| Claim {
            claims: self,
            name: name.to_string(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .expect("workflow claims lock")
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_once_until_given_back() {
        let claims = Claims::default();
        let first = claims.claim("w").expect("free");
        assert!(claims.claim("w").is_none());
        assert!(claims.claim("other").is_some());
        drop(first);
        assert!(claims.claim("w").is_some());
    }
}
