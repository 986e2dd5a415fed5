//! AWS account ids: twelve digits, checked once where the text enters.

use std::fmt;

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Reads an account id; the error is the rule it broke.
    pub fn parse(text: &str) -> Result<AccountId, &'static str> {
        if AccountId::is_valid(text) {
            Ok(AccountId(text.to_owned()))
        } else {
            Err("must be a 12-digit AWS account id")
        }
    }

    /// Whether `text` is an account id (without making one: ARNs are checked on every read).
    pub fn is_valid(text: &str) -> bool {
        text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits() {
        assert_eq!(AccountId::parse("123456789012").map(|a| a.to_string()), Ok("123456789012".to_owned()));
        for bad in ["", "12345678901", "1234567890123", "12345678901a", "１２３４５６７８９０１２"] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
