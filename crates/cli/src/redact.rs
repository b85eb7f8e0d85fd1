//! Keeping passwords out of everything the CLI writes.
//!
//! Two layers:
//!
//! - [`redact`] shows a connection string with its passwords replaced by
//!   `***`, whatever its form (URL userinfo, `password=` query parameter,
//!   libpq `key=value` pairs): for `Debug` output and messages.
//! - [`scrub`] is the safety net every outgoing text goes through: error
//!   lines (the store's, tokio-postgres' and the CLI's own), clap's usage
//!   errors, panic messages and the rows `status`/`show` print. It replaces
//!   every secret remembered from the command line and the environment
//!   ([`remember_secrets_in`], called before anything is parsed), in each
//!   spelling it may come back in (as written, percent-decoded, unescaped,
//!   `Debug`-escaped), and then anything shaped like a password in a URL or a
//!   `password=` pair.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// What a password is replaced with.
pub const MASK: &str = "***";

/// Every secret found on the command line and in the environment, longest first.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers every password `text` holds (it may be a whole connection
/// string, or any command-line argument), so that [`scrub`] removes it from
/// whatever the CLI writes later.
pub fn remember_secrets_in(text: &str) {
    let found = secrets_in(text);
    if found.is_empty() {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    for secret in found {
        if !secrets.contains(&secret) {
            secrets.push(secret);
        }
    }
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
}

/// The safety net: `text` without any remembered secret and without
/// anything shaped like a password. Every line the CLI writes to stderr,
/// and every string field of the rows it prints, goes through this.
pub fn scrub(text: &str) -> String {
    let secrets = SECRETS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    scrub_with(text, &secrets)
}

/// [`scrub`] with an explicit list of secrets (longest first).
pub fn scrub_with(text: &str, secrets: &[String]) -> String {
    // Exact secrets first: a pattern could mask part of one and leave the
    // rest unrecognisable.
    let mut out = text.to_owned();
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    redact_patterns(&out)
}

/// `connection` with every password replaced by `***`: the form it can be
/// shown in. URLs keep everything but the password (userinfo and
/// `password` query parameters); `key=value` strings keep every pair but
/// the password's value; anything else is masked by pattern.
pub fn redact(connection: &str) -> String {
    if let Some(rest_start) = url_rest_start(connection) {
        let (head, rest) = connection.split_at(rest_start);
        return format!("{head}{}", redact_url_rest(rest));
    }
    if is_key_value(connection) {
        return redact_key_value(connection);
    }
    redact_patterns(connection)
}

/// Every spelling of every password in `text`, read as a connection
/// string (URL, `key=value` pairs) and by pattern.
pub fn secrets_in(text: &str) -> Vec<String> {
    let mut raw: Vec<String> = Vec::new();
    if let Some(rest_start) = url_rest_start(text) {
        let rest = &text[rest_start..];
        for range in userinfo_password_ranges(rest) {
            raw.push(rest[range].to_owned());
        }
        // Query parameters named like a password; over-inclusive on purpose
        // (a `?` or `&` inside a password splits it here, and every piece
        // counts).
        for segment in rest.split(['?', '&']) {
            if let Some((key, value)) = segment.split_once('=')
                && is_password_key(&lossy_decode(key))
            {
                raw.push(value.to_owned());
            }
        }
    }
    let pairs = key_values(text);
    for pair in &pairs.pairs {
        if is_password_key(pair.key) {
            raw.push(pair.value.clone());
            raw.push(text[pair.raw.clone()].to_owned());
            raw.push(unquote(&text[pair.raw.clone()]).to_owned());
        }
    }
    if let Some(failed) = &pairs.failed
        && failed.key.is_some_and(is_password_key)
    {
        let rest = text[failed.value_start..].trim();
        raw.push(rest.to_owned());
        raw.push(unquote(rest).to_owned());
        if let Some(word) = rest.split_whitespace().next() {
            raw.push(unquote(word).to_owned());
        }
    }
    for range in pattern_value_ranges(text) {
        raw.push(text[range.clone()].to_owned());
        raw.push(unquote(&text[range]).to_owned());
    }

    let mut found: Vec<String> = Vec::new();
    let mut add = |secret: String| {
        if !secret.is_empty() && secret != MASK && !found.contains(&secret) {
            found.push(secret);
        }
    };
    for secret in raw {
        let decoded = lossy_decode(&secret);
        let plus_decoded = lossy_decode(&secret.replace('+', " "));
        let unescaped = unescape(&secret);
        for spelling in [secret, decoded, plus_decoded, unescaped] {
            add(debug_escaped(&spelling));
            add(percent_encode(&spelling));
            add(spelling);
        }
    }
    found.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    found
}

/// Whether a parameter (URL query or `key=value`) holds a password:
/// `password`, and anything else naming one (`sslpassword`).
fn is_password_key(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// Where the part after `scheme://` starts, if `text` is a URL.
fn url_rest_start(text: &str) -> Option<usize> {
    let colon = text.find("://")?;
    let scheme = &text[..colon];
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(colon + 3)
}

/// The password of a URL's userinfo (`rest` is what follows `scheme://`),
/// by every reading: tokio-postgres' (everything up to the first `@`,
/// wherever it is), RFC 3986's (the authority ends at the first `/`, `?`
/// or `#`; the userinfo at its last `@`), and a password holding unencoded
/// `@`s (up to the last `@` of all). Each starts after the first `:`.
/// The last reading over-masks a URL whose query holds an `@`: the price
/// of never showing part of a password.
fn userinfo_password_ranges(rest: &str) -> Vec<Range<usize>> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let ends = [
        rest.find('@'),
        rest[..authority_end].rfind('@'),
        rest.rfind('@'),
    ];
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for at in ends.into_iter().flatten() {
        if let Some(colon) = rest[..at].find(':')
            && !ranges.contains(&(colon + 1..at))
        {
            ranges.push(colon + 1..at);
        }
    }
    ranges
}

/// `rest` (what follows `scheme://`) with the userinfo's password and
/// every password query parameter masked.
fn redact_url_rest(rest: &str) -> String {
    let readings = userinfo_password_ranges(rest);
    // One range covering every reading: from the first `:` to the furthest `@`.
    let userinfo_end = readings.iter().map(|range| range.end).max();
    let mut masks: Vec<Range<usize>> = Vec::new();
    if let Some(end) = userinfo_end {
        let start = readings
            .iter()
            .map(|range| range.start)
            .min()
            .unwrap_or(end);
        masks.push(start..end);
    }
    let after_userinfo = userinfo_end.map_or(0, |end| end + 1);
    if let Some(query) = rest[after_userinfo..].find('?') {
        let mut at = after_userinfo + query + 1;
        for segment in rest[at..].split('&') {
            if let Some((key, _)) = segment.split_once('=')
                && is_password_key(&lossy_decode(key))
            {
                masks.push(at + key.len() + 1..at + segment.len());
            }
            at += segment.len() + 1;
        }
    }
    apply_masks(rest, masks)
}

/// `text` with each range (sorted, not overlapping) replaced by the mask.
fn apply_masks(text: &str, mut masks: Vec<Range<usize>>) -> String {
    masks.sort_by_key(|range| range.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in masks {
        if range.start < at {
            continue;
        }
        out.push_str(&text[at..range.start]);
        out.push_str(MASK);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

/// A libpq `key=value` string with each password value masked. A string
/// that does not parse is masked from the password's value to its end.
fn redact_key_value(text: &str) -> String {
    let pairs = key_values(text);
    let mut masks: Vec<Range<usize>> = pairs
        .pairs
        .iter()
        .filter(|pair| is_password_key(pair.key))
        .map(|pair| pair.raw.clone())
        .collect();
    if let Some(failed) = &pairs.failed
        && failed.key.is_some_and(is_password_key)
        && failed.value_start < text.len()
    {
        masks.push(failed.value_start..text.len());
    }
    redact_patterns(&apply_masks(text, masks))
}

/// Free text with anything shaped like a password masked: the userinfo
/// password of every `scheme://…` (up to the next whitespace), and the
/// value after every `password=` (or `password: "…"`, as `Debug` writes
/// it). Over-masking is the price of never missing one.
fn redact_patterns(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut masks = pattern_value_ranges(text);
    // An unquoted value just before a closing quote (`'host=db password=x'`
    // quoted by a message) keeps that quote visible.
    for range in &mut masks {
        let quoted = matches!(bytes[range.start], b'\'' | b'"');
        if !quoted && range.len() > 1 && matches!(bytes[range.end - 1], b'\'' | b'"') {
            range.end -= 1;
        }
    }
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let rest_start = search + found + 3;
        let token_end = text[rest_start..]
            .find(|c: char| c.is_whitespace() || c == '"')
            .map_or(text.len(), |i| rest_start + i);
        let token = &text[rest_start..token_end];
        let ranges = userinfo_password_ranges(token);
        if let (Some(start), Some(end)) = (
            ranges.iter().map(|range| range.start).min(),
            ranges.iter().map(|range| range.end).max(),
        ) {
            masks.push(rest_start + start..rest_start + end);
        }
        search = token_end.max(rest_start);
    }
    merge(&mut masks);
    apply_masks(text, masks)
}

/// Sorts `ranges` and joins the ones that overlap.
fn merge(ranges: &mut Vec<Range<usize>>) {
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    *ranges = merged;
}

/// The values following `password` (any case, any prefix such as `ssl`)
/// and then `=` or `: "`: quoted to the closing quote (backslash escapes
/// honoured), otherwise up to the next whitespace.
fn pattern_value_ranges(text: &str) -> Vec<Range<usize>> {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut ranges = Vec::new();
    let mut search = 0;
    while let Some(found) = lower[search..].find("password") {
        let key_end = search + found + "password".len();
        search = key_end;
        let mut at = skip_spaces(bytes, key_end);
        let quoted_only = match bytes.get(at) {
            Some(b'=') => false,
            Some(b':') => true,
            _ => continue,
        };
        at = skip_spaces(bytes, at + 1);
        let end = match bytes.get(at) {
            Some(&quote @ (b'\'' | b'"')) => {
                closing_quote(bytes, at + 1, quote).unwrap_or(bytes.len())
            }
            Some(_) if !quoted_only => bare_end(bytes, at),
            _ => continue,
        };
        if end > at {
            ranges.push(at..end);
            search = end;
        }
    }
    ranges
}

fn skip_spaces(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The end (exclusive, after the quote) of a value quoted with `quote`
/// whose content starts at `at`; `None` if the quote is never closed.
fn closing_quote(bytes: &[u8], mut at: usize, quote: u8) -> Option<usize> {
    while let Some(&b) = bytes.get(at) {
        if b == b'\\' {
            at += 2;
        } else if b == quote {
            return Some(at + 1);
        } else {
            at += 1;
        }
    }
    None
}

/// The end of an unquoted value: the next whitespace not escaped by a backslash.
fn bare_end(bytes: &[u8], mut at: usize) -> usize {
    while let Some(&b) = bytes.get(at) {
        if b == b'\\' {
            at += 2;
        } else if b.is_ascii_whitespace() {
            return at;
        } else {
            at += 1;
        }
    }
    bytes.len()
}

/// One `key=value` pair of a libpq connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair<'a> {
    pub key: &'a str,
    /// The value as libpq reads it: quotes removed, backslash escapes resolved.
    pub value: String,
    /// Where the value is written, quotes included.
    pub raw: Range<usize>,
}

/// Where a `key=value` string stops parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed<'a> {
    /// The key whose `=` or value is malformed, if one was read.
    pub key: Option<&'a str>,
    /// Where that key's value starts (or the parser stopped).
    pub value_start: usize,
}

/// The pairs of a `key=value` string, and where it stopped parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValues<'a> {
    pub pairs: Vec<Pair<'a>>,
    pub failed: Option<Failed<'a>>,
}

/// Reads libpq `key=value` pairs as tokio-postgres does: keys are runs
/// without whitespace or `=`; spaces may surround `=`; a value is either
/// `'quoted'` (`\'` and `\\` escape) or a run without whitespace
/// (backslash escapes any character).
pub fn key_values(text: &str) -> KeyValues<'_> {
    let bytes = text.as_bytes();
    let mut pairs = Vec::new();
    let mut at = 0;
    let failed = loop {
        at = skip_spaces(bytes, at);
        if at >= bytes.len() {
            break None;
        }
        let key_start = at;
        while bytes
            .get(at)
            .is_some_and(|&b| !b.is_ascii_whitespace() && b != b'=')
        {
            at += 1;
        }
        let key = &text[key_start..at];
        let key = (!key.is_empty()).then_some(key);
        at = skip_spaces(bytes, at);
        if bytes.get(at) != Some(&b'=') {
            break Some(Failed {
                key,
                value_start: at,
            });
        }
        let Some(key) = key else {
            break Some(Failed {
                key,
                value_start: at,
            });
        };
        at = skip_spaces(bytes, at + 1);
        let value_start = at;
        let (value, end) = if bytes.get(at) == Some(&b'\'') {
            let Some(end) = closing_quote(bytes, at + 1, b'\'') else {
                break Some(Failed {
                    key: Some(key),
                    value_start,
                });
            };
            (unescape(&text[at + 1..end - 1]), end)
        } else {
            let end = bare_end(bytes, at).min(bytes.len());
            if end == at {
                break Some(Failed {
                    key: Some(key),
                    value_start,
                });
            }
            (unescape(&text[at..end]), end)
        };
        pairs.push(Pair {
            key,
            value,
            raw: value_start..end,
        });
        at = end;
    };
    KeyValues { pairs, failed }
}

/// Whether `text` is a libpq `key=value` string: its first word is a
/// keyword (letters, digits, `_`) followed by `=`.
pub fn is_key_value(text: &str) -> bool {
    let text = text.trim_start();
    let key_end = text
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(text.len());
    let key = &text[..key_end];
    !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text[key_end..].trim_start().starts_with('=')
}

/// Backslash escapes resolved (`\x` is `x`), as libpq reads values.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` without one pair of surrounding quotes.
fn unquote(text: &str) -> &str {
    for quote in ['\'', '"'] {
        if let Some(inner) = text
            .strip_prefix(quote)
            .map(|t| t.strip_suffix(quote).unwrap_or(t))
        {
            return inner;
        }
    }
    text
}

/// `text` as `{:?}` writes it inside its quotes.
fn debug_escaped(text: &str) -> String {
    let quoted = format!("{text:?}");
    quoted[1..quoted.len() - 1].to_owned()
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits is kept.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(at + 1).and_then(|&b| hex(b)),
                bytes.get(at + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(high << 4 | low);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    out
}

/// Every byte but the URL-unreserved ones as `%XX`: a password written raw
/// may come back encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn lossy_decode(text: &str) -> String {
    String::from_utf8_lossy(&percent_decode(text)).into_owned()
}

/// What the panic hook prints: one line, scrubbed.
pub fn panic_line(message: &str, location: Option<&str>) -> String {
    let at = location.map(|l| format!(" at {l}")).unwrap_or_default();
    waymark::render::one_line(
        &scrub(&format!(
            "waymark: error: internal error (a bug in waymark){at}: {message}"
        )),
        2000,
    )
}

/// Replaces the default panic message (which would print the payload
/// unscrubbed) with one scrubbed line.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info.location().map(ToString::to_string);
        eprintln!("{}", panic_line(message, location.as_deref()));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passwords with everything that breaks naive parsers.
    const TRICKY: &[&str] = &[
        "hunter2",
        "se cret",
        "p@ss:w/rd?x=1&y#z",
        "qu'ote\"dq\\bs",
        "=eq=",
        "wörd€",
    ];

    fn encode(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn quote(text: &str) -> String {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }

    fn bare(text: &str) -> String {
        text.chars()
            .flat_map(|c| {
                if c.is_whitespace() || c == '\\' || c == '\'' {
                    vec!['\\', c]
                } else {
                    vec![c]
                }
            })
            .collect()
    }

    /// Every form holding `password`.
    fn forms(password: &str) -> Vec<String> {
        let enc = encode(password);
        vec![
            format!("postgres://app:{enc}@db:5432/app"),
            format!("postgresql://app:{enc}@db/app?sslmode=require&application_name=x"),
            format!("postgres://app:{password}@db/app"),
            format!("postgres://app@db/app?password={enc}&sslmode=disable"),
            format!("host=db user=app password={} dbname=app", quote(password)),
            format!("host=db user=app password = {} dbname=app", quote(password)),
            format!("host=db user=app password={} dbname=app", bare(password)),
            format!("mysql://root:{enc}@db/app"),
        ]
    }

    fn assert_hidden(text: &str, password: &str, form: &str) {
        assert!(!text.contains(password), "{form}: {text}");
        let enc = encode(password);
        if enc != password {
            assert!(!text.contains(&enc), "{form}: {text}");
        }
    }

    #[test]
    fn redact_hides_every_password_in_every_form() {
        for password in TRICKY {
            for form in forms(password) {
                let shown = redact(&form);
                assert!(shown.contains(MASK), "{form}: {shown}");
                // `=eq=` may legitimately survive as the key/value separator.
                if *password != "=eq=" {
                    assert_hidden(&shown, password, &form);
                }
                assert!(
                    shown.contains("db") || shown.contains("app"),
                    "keeps the rest: {shown}"
                );
            }
        }
    }

    #[test]
    fn redact_keeps_everything_but_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@h:5432/db"),
            "postgres://app:***@h:5432/db"
        );
        assert_eq!(redact("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(
            redact("postgres://h/db?password=x&sslmode=disable"),
            "postgres://h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://a:p@ss@h/db"), "postgres://a:***@h/db");
        assert_eq!(
            redact("host=db password='se cret' user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact("host=db password=se\\ cret user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact("host=db sslpassword=k password=p"),
            "host=db sslpassword=*** password=***"
        );
        // Unterminated: masked to the end.
        assert_eq!(
            redact("host=db password='se cret user=x"),
            "host=db password=***"
        );
        assert_eq!(redact("sqlite:app.db?mode=ro"), "sqlite:app.db?mode=ro");
    }

    #[test]
    fn secrets_cover_every_spelling() {
        for password in TRICKY {
            for form in forms(password) {
                let secrets = secrets_in(&form);
                assert!(secrets.iter().any(|s| s == password), "{form}: {secrets:?}");
                // Whatever echoes it, scrubbing with these hides it.
                for echoed in [
                    format!("failed: {password}"),
                    format!("failed: {password:?}"),
                    format!("server said {} here", encode(password)),
                    form.clone(),
                ] {
                    let scrubbed = scrub_with(&echoed, &secrets);
                    assert_hidden(&scrubbed, password, &form);
                }
            }
        }
    }

    #[test]
    fn secrets_of_strings_that_do_not_parse() {
        let secrets = secrets_in("host=db password='unterminated se cret");
        assert!(
            secrets.iter().any(|s| s == "unterminated se cret"),
            "{secrets:?}"
        );
        let secrets = secrets_in("--database=host=db password=x1y2");
        assert!(secrets.iter().any(|s| s == "x1y2"), "{secrets:?}");
        assert!(secrets_in("sqlite:app.db?mode=ro").is_empty());
        assert!(secrets_in("postgres://app@db/app").is_empty());
        assert!(secrets_in("status").is_empty());
    }

    #[test]
    fn patterns_mask_what_no_secret_list_knows() {
        for (text, hidden) in [
            ("connecting to postgres://u:pw1@h/db failed", "pw1"),
            ("error near password='a b c' here", "a b c"),
            ("Config { password: \"dbg\" }", "dbg"),
            ("got PASSWORD=Loud next", "Loud"),
            ("invalid value 'host=db password=V9PL' for '<ID>'", "V9PL"),
        ] {
            let out = scrub_with(text, &[]);
            assert!(!out.contains(hidden), "{out}");
            assert!(out.contains(MASK), "{out}");
        }
        assert_eq!(
            scrub_with("invalid value 'host=db password=V9PL' for '<ID>'", &[]),
            "invalid value 'host=db password=***' for '<ID>'"
        );
        let plain = "password authentication failed for user \"app\"";
        assert_eq!(scrub_with(plain, &[]), plain);
        assert_eq!(
            scrub_with("opening SQLite database /tmp/app.db", &[]),
            "opening SQLite database /tmp/app.db"
        );
    }

    #[test]
    fn key_values_read_as_libpq_does() {
        let text = r"host=db  user = x password='se \'c\\ret' dbname=a\ b";
        let parsed = key_values(text);
        assert_eq!(parsed.failed, None);
        let got: Vec<(&str, &str)> = parsed
            .pairs
            .iter()
            .map(|p| (p.key, p.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("host", "db"),
                ("user", "x"),
                ("password", "se 'c\\ret"),
                ("dbname", "a b")
            ]
        );
        assert_eq!(&text[parsed.pairs[2].raw.clone()], r"'se \'c\\ret'");
        let bad = key_values("host=db password='x");
        assert_eq!(bad.failed.as_ref().unwrap().key, Some("password"));
        let bad = key_values("host=db port");
        assert_eq!(bad.failed.as_ref().unwrap().key, Some("port"));
        assert!(is_key_value("host=db"));
        assert!(is_key_value("  dbname = app"));
        assert!(!is_key_value("app.db"));
        assert!(!is_key_value("postgres://h/db?x=y"));
        assert!(!is_key_value("./a=b"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%3F%zz%4"), b"a b?%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é".as_bytes());
    }

    #[test]
    fn panic_lines_are_scrubbed_and_one_line() {
        let line = panic_line(
            "bad state: postgres://u:pnc1@h/db\nnext",
            Some("src/x.rs:1:2"),
        );
        assert!(!line.contains("pnc1"), "{line}");
        assert!(!line.contains('\n'));
        assert!(line.starts_with("waymark: error: internal error"), "{line}");
    }
}
