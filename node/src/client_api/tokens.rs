//! The tokens clients carry between requests: `next_batch` and `prev_batch` from `/sync`,
//! `start` and `end` from `/messages` and `/context`, `from` and `to` of `/keys/changes`.
//!
//! Every one is a position in the store's stream, `s<position>`. A `/sync` token adds the
//! serials of the streams kept apart from it, `_t<typing serial>_p<presence serial>`. The spec lets any of them be
//! passed where another is taken (a `/messages` page may start from a sync's `next_batch`), so
//! there is one parser for all of them, and each endpoint reads the parts it needs.

use super::error::MatrixError;

/// A token as a client hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    /// The stream position: events at or before it were given out.
    pub(crate) position: i64,
    /// The typing serial, in `/sync` tokens only.
    pub(crate) typing: Option<u64>,
    /// The presence serial, in `/sync` tokens only.
    pub(crate) presence: Option<u64>,
}

impl Token {
    /// Reads `s<position>` optionally followed by `_t<typing serial>` and `_p<presence serial>`. Positions below zero
    /// (history fetched from other servers sits before everything seen live) come only in
    /// pagination tokens; [`Token::parse_stream`] refuses them.
    pub(crate) fn parse(token: &str) -> Result<Token, MatrixError> {
        let unknown = || MatrixError::invalid_param(format!("Unknown token {token:?}"));
        let rest = token.strip_prefix('s').ok_or_else(unknown)?;
        let mut parts = rest.split('_');
        let position = parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(unknown)?;
        let (mut typing, mut presence) = (None, None);
        for part in parts {
            let (slot, serial) = match part.split_at_checked(1) {
                Some(("t", serial)) => (&mut typing, serial),
                Some(("p", serial)) => (&mut presence, serial),
                _ => return Err(unknown()),
            };
            if slot.is_some() {
                return Err(unknown());
            }
            *slot = Some(serial.parse().map_err(|_| unknown())?);
        }
        Ok(Token {
            position,
            typing,
            presence,
        })
    }

    /// A token from `/sync` or `/keys/changes`, which only ever name live positions.
    pub(crate) fn parse_stream(token: &str) -> Result<Token, MatrixError> {
        let parsed = Token::parse(token)?;
        if parsed.position < 0 {
            return Err(MatrixError::invalid_param(format!(
                "Unknown stream token {token:?}"
            )));
        }
        Ok(parsed)
    }

    /// A `/sync` `next_batch`.
    pub(crate) fn sync(position: i64, typing: u64, presence: u64) -> String {
        format!("s{position}_t{typing}_p{presence}")
    }
}

/// The position a pagination token (`/messages`, `/relations`, `/threads`) names: any token
/// this node gave out, history fetched from other servers (at negative positions) included.
pub(crate) fn parse_page_token(token: &str) -> Result<i64, MatrixError> {
    Token::parse(token).map(|token| token.position)
}

/// A position as a pagination or stream token (`prev_batch`, `start`, `end`).
pub(crate) fn stream_token(position: i64) -> String {
    format!("s{position}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_a_client_is_given_is_read_back() {
        assert_eq!(
            Token::parse("s34_t0").unwrap(),
            Token {
                position: 34,
                typing: Some(0),
                presence: None,
            }
        );
        let full = Token::parse(&Token::sync(5, 6, 7)).unwrap();
        assert_eq!(
            (full.position, full.typing, full.presence),
            (5, Some(6), Some(7))
        );
        assert_eq!(Token::parse("s34").unwrap().position, 34);
        assert_eq!(Token::parse(&stream_token(-12)).unwrap().position, -12);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "s",
            "34",
            "t34",
            "s34_",
            "s34_t",
            "s34_tx",
            "s34_t1_t2",
            "s34_q1",
            "sx_t1",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Token::parse_stream("s-1").is_err());
        assert!(Token::parse_stream("s-1_t0").is_err());
    }
}
