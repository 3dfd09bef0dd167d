//! Session ids: 160 random bits from the OS CSPRNG, as 40 lowercase hex
//! characters (visible ASCII, as the transport spec requires).

/// Bytes of randomness in a session id.
const ID_BYTES: usize = 20;

#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct RandomError(String);

impl RandomError {
    pub(crate) fn new(reason: String) -> Self {
        Self(reason)
    }
}

/// A new unguessable session id.
pub fn new_session_id() -> Result<String, RandomError> {
    let mut bytes = [0u8; ID_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Whether `id` could be a session id at all (cheap check before any lookup).
pub fn is_well_formed(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_random_and_well_formed() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert_eq!(a.len(), 40);
        assert_ne!(a, b);
        assert!(is_well_formed(&a));
        assert!(!is_well_formed("has space"));
        assert!(!is_well_formed(""));
    }
}
