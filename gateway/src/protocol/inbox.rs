//! Inboxes: `user:<id>` is the room of user `<id>`'s direct messages. The id is written
//! into the name as it is where its bytes are room-name characters, and as `%XX` (its
//! UTF-8 bytes, uppercase hex) everywhere else, `%` included: so every user id has one
//! inbox name and no other (`zoë a` → `user:zo%C3%AB%20a`; `auth0|5f7c` → `user:auth0|5f7c`).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::borrow::Cow;

/// Prefix of the room name of a user's inbox.
pub const INBOX_PREFIX: &str = "user:";

/// Whether `b` may appear in a room name as it is. `|` and `+` because user ids carry
/// them (`auth0|5f7c…`, `ann+chat@example.com`). Never a space (an inbox's name is a
/// field of the Redis engine's space-separated inbox payloads) nor `{}` (Redis Cluster
/// hash tags).
pub(crate) const fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'|' | b'+')
}

/// The ASCII bytes of an id written as `%XX`: those [`is_room_byte`] refuses (a test
/// holds the two together); bytes past ASCII always are.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'-')
    .remove(b'.')
    .remove(b':')
    .remove(b'@')
    .remove(b'|')
    .remove(b'+');

/// The inbox room of a user.
pub fn inbox_of(user: &str) -> String {
    let mut name = String::with_capacity(INBOX_PREFIX.len() + user.len());
    name.push_str(INBOX_PREFIX);
    name.extend(utf8_percent_encode(user, ESCAPED));
    name
}

/// Whether a room name is an inbox (`user:<id>`).
pub fn is_inbox(room: &str) -> bool {
    room.starts_with(INBOX_PREFIX)
}

/// Whose inbox a room is: `Ok(Some(user))` for `user:<id>` (the id decoded), `Ok(None)`
/// for a room that is no inbox. An error for `user:` alone, which is nobody's (a client's
/// send and the server API's publish both refuse it), and for an id not written as
/// [`inbox_of`] writes it: an escape that is not `%` and two uppercase hex digits, one of
/// a room-name character, or bytes that are no UTF-8 would give a user a second inbox
/// name, or name nobody.
pub fn inbox_owner(room: &str) -> Result<Option<Cow<'_, str>>, &'static str> {
    let Some(written) = room.strip_prefix(INBOX_PREFIX) else {
        return Ok(None);
    };
    if written.is_empty() {
        return Err("user:<id> needs a user id");
    }
    if !written.contains('%') {
        return Ok(Some(Cow::Borrowed(written)));
    }
    let id = percent_decode_str(written)
        .decode_utf8()
        .map_err(|_| "user:<id>: its %XX escapes are no UTF-8")?;
    if utf8_percent_encode(&id, ESCAPED).to_string() != written {
        return Err("user:<id>: only bytes that are no room-name characters are escaped, each as %XX (uppercase hex)");
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escaped_bytes_are_the_ones_room_names_refuse() {
        for b in 0..=127u8 {
            let written = inbox_of(&char::from(b).to_string());
            assert_eq!(
                written.len() > INBOX_PREFIX.len() + 1,
                !is_room_byte(b),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn every_id_has_one_inbox_that_names_it() {
        for id in [
            "alice",
            "auth0|5f7c8ec7",
            "ann+chat@example.com",
            "zoë a",
            "50%",
            "CN=Ann,OU=x",
            "日本",
        ] {
            let inbox = inbox_of(id);
            assert_eq!(
                inbox_owner(&inbox).expect("owner").as_deref(),
                Some(id),
                "{inbox}"
            );
        }
        assert_eq!(inbox_of("zoë a"), "user:zo%C3%AB%20a");
        assert_eq!(inbox_of("50%"), "user:50%25");
        assert_eq!(inbox_of("auth0|5f7c"), "user:auth0|5f7c");
    }

    #[test]
    fn other_spellings_of_an_id_name_nobody() {
        for bad in [
            "user:",
            "user:zo%c3%ab", // lowercase hex
            "user:%61lice",  // an escaped room-name character
            "user:a%2",      // cut short
            "user:a%zz",     // no hex
            "user:%FF",      // no UTF-8
            "user:50%",      // a bare %
        ] {
            assert!(inbox_owner(bad).is_err(), "{bad}");
        }
        assert_eq!(inbox_owner("lobby"), Ok(None));
    }
}
