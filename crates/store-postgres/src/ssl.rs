//! `sslmode` and `sslrootcert` in a connection string, in both of libpq's
//! forms (URL query parameters and `key=value` pairs).
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` only and refuses
//! any key it does not know, `sslrootcert` among them. So both are taken out
//! of the string here, read by the store's own rules, and the rest is left
//! to tokio-postgres byte for byte. The walk over the string follows
//! tokio-postgres' own parsers exactly, so that both agree on where every
//! parameter starts and ends; when the walk fails, the string is handed on
//! unchanged and tokio-postgres reports what is wrong with it.
//!
//! No error here repeats any part of the string but the names of the
//! parameters: a password may sit anywhere in it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use waymark_core::Error;

/// libpq's `sslmode`, as the store honours it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain when it refuses; no
    /// certificate check (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only against an
    /// `sslrootcert` given explicitly (as libpq does), never its host name.
    Require,
    /// TLS, the certificate's chain checked against the trusted roots; the
    /// host name is not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, Error> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(Error::invalid(
                    "sslmode",
                    "sslmode=allow is not supported (it tries plain TCP first): use prefer, \
                     which takes TLS when the server offers it and plain TCP otherwise",
                ));
            }
            // The value is not repeated: a malformed string can put a
            // password where the value was expected.
            _ => {
                return Err(Error::invalid(
                    "sslmode",
                    "unknown value: expected disable, prefer, require, verify-ca or verify-full",
                ));
            }
        })
    }

    /// What tokio-postgres is told: it negotiates TLS for every mode but
    /// `disable` and `prefer`, and leaves the checks to the connector.
    pub(crate) fn driver(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self {
            Self::Disable => Driver::Disable,
            Self::Prefer => Driver::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Driver::Require,
        }
    }

    /// Whether a session cannot start without TLS.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn needs_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// A PEM file of one or more certificates (`sslrootcert=/path/ca.pem`).
    File(PathBuf),
    /// The platform's trusted roots (`sslrootcert=system`, or a verify-*
    /// mode without `sslrootcert`).
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "sslrootcert={}", path.display()),
            Self::System => f.write_str("the system's trusted roots"),
        }
    }
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Ssl {
    /// The mode in force.
    pub(crate) mode: SslMode,
    /// `sslrootcert` as given, if it was.
    pub(crate) root_cert: Option<RootCert>,
}

impl Ssl {
    /// The roots the server's certificate chain is checked against, if it
    /// is checked at all: verify-ca and verify-full always (the system's
    /// roots when no `sslrootcert` is given); require only against an
    /// `sslrootcert` file given explicitly, as libpq does.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn roots(&self) -> Option<RootCert> {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => None,
            SslMode::Require => self.root_cert.clone(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                Some(self.root_cert.clone().unwrap_or(RootCert::System))
            }
        }
    }
}

/// A connection string with `sslmode` and `sslrootcert` taken out.
#[derive(Debug)]
pub(crate) struct Extracted<'a> {
    /// The rest, for tokio-postgres.
    pub(crate) rest: Cow<'a, str>,
    /// What the two parameters said.
    pub(crate) ssl: Ssl,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (either form) and reads
/// them. The last occurrence of each wins, as in tokio-postgres.
pub(crate) fn extract(url: &str) -> Result<Extracted<'_>, Error> {
    let url_form = is_url(url);
    let parsed = if url_form {
        url_params(url)
    } else {
        key_value_params(url)
    };
    let unchanged = || Extracted {
        rest: Cow::Borrowed(url),
        ssl: Ssl::default(),
    };
    let Some(Parsed {
        query_start,
        params,
    }) = parsed
    else {
        return Ok(unchanged());
    };
    let mut mode = None;
    let mut root = None;
    for param in params.iter().filter(|p| p.is_ssl()) {
        match param.key.as_ref() {
            "sslmode" => mode = Some(param.value.as_str()),
            _ => root = Some(param.value.as_str()),
        }
    }
    if mode.is_none() && root.is_none() {
        return Ok(unchanged());
    }
    let root_cert = match root {
        None | Some("") => None,
        Some("system") => Some(RootCert::System),
        Some(path) => Some(RootCert::File(PathBuf::from(path))),
    };
    let mode = match (mode, &root_cert) {
        (Some(value), _) => SslMode::parse(value)?,
        // libpq: the system's roots make verify-full the default.
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::default(),
    };
    if root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
        return Err(Error::invalid(
            "sslmode",
            format!(
                "sslmode={mode} may not be used with sslrootcert=system: the system's roots \
                 vouch for host names, so only verify-full checks what they promise (libpq's rule)"
            ),
        ));
    }
    let rest = if url_form {
        // The part before the query, then the other parameters as written.
        let kept: Vec<&str> = params
            .iter()
            .filter(|p| !p.is_ssl())
            .map(|p| &url[p.span.clone()])
            .collect();
        let mut rest = url[..query_start].to_owned();
        if kept.is_empty() {
            rest.pop(); // the '?'
        } else {
            rest.push_str(&kept.join("&"));
        }
        rest
    } else {
        // Everything but the two kinds of pairs, whitespace included.
        let mut rest = String::with_capacity(url.len());
        let mut pos = 0;
        for param in params.iter().filter(|p| p.is_ssl()) {
            rest.push_str(&url[pos..param.span.start]);
            pos = param.span.end;
        }
        rest.push_str(&url[pos..]);
        rest
    };
    Ok(Extracted {
        rest: Cow::Owned(rest),
        ssl: Ssl { mode, root_cert },
    })
}

fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The parameters of a connection string.
#[derive(Debug)]
struct Parsed<'a> {
    /// For a URL, where its query starts (just after the `?`).
    query_start: usize,
    params: Vec<Param<'a>>,
}

/// One parameter of a connection string: its key decoded, and the bytes it
/// takes up.
#[derive(Debug)]
struct Param<'a> {
    key: Cow<'a, str>,
    /// Decoded, for `sslmode` and `sslrootcert` only (empty for the others,
    /// which are left to tokio-postgres as written).
    value: String,
    /// For a URL, `key=value` without its `&`; for key=value pairs, the
    /// pair without the whitespace around it.
    span: Range<usize>,
}

impl Param<'_> {
    fn is_ssl(&self) -> bool {
        is_ssl_key(&self.key)
    }
}

fn is_ssl_key(key: &str) -> bool {
    matches!(key, "sslmode" | "sslrootcert")
}

/// The query parameters of a URL, found as tokio-postgres' `UrlParser`
/// finds them: the credentials end at the first `@`, the host at the next
/// `/` or `?`, the path at the next `?`; then each key ends at the next
/// `=` and its value at the next `&`, both percent-decoded. None if
/// tokio-postgres would refuse the query (it then says why).
fn url_params(url: &str) -> Option<Parsed<'_>> {
    let mut at = url.find("://")? + 3;
    if let Some(creds) = url[at..].find('@') {
        at += creds + 1;
    }
    let query_start = at + url[at..].find('?')? + 1;
    let mut params = Vec::new();
    let mut pos = query_start;
    while pos < url.len() {
        let eq = pos + url[pos..].find('=')?;
        let key = percent_decode_str(&url[pos..eq]).decode_utf8().ok()?;
        let value_start = eq + 1;
        let end = url[value_start..]
            .find('&')
            .map_or(url.len(), |i| value_start + i);
        let value = if is_ssl_key(&key) {
            percent_decode_str(&url[value_start..end])
                .decode_utf8()
                .ok()?
                .into_owned()
        } else {
            String::new()
        };
        params.push(Param {
            key,
            value,
            span: pos..end,
        });
        pos = (end + 1).min(url.len());
    }
    Some(Parsed {
        query_start,
        params,
    })
}

/// The pairs of a libpq `key=value` string, found as tokio-postgres'
/// `Parser` finds them: whitespace, a keyword up to whitespace or `=`,
/// whitespace, `=`, whitespace, then a value, either `'quoted'` or up to
/// the next whitespace, with `\` escaping the next character in both.
/// None if tokio-postgres would refuse the string (it then says why).
fn key_value_params(s: &str) -> Option<Parsed<'_>> {
    let mut params = Vec::new();
    let mut it = s.char_indices().peekable();
    let offset = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        it.peek().map_or(s.len(), |&(i, _)| i)
    };
    loop {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let start = offset(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = offset(&mut it);
        if key_end == start {
            // tokio-postgres stops here too, with what it has.
            return Some(Parsed {
                query_start: 0,
                params,
            });
        }
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        it.next_if(|&(_, c)| c == '=')?;
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next()?.1 {
                    '\'' => break,
                    '\\' => value.extend(it.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        let key = &s[start..key_end];
        if !is_ssl_key(key) {
            value.clear();
        }
        params.push(Param {
            key: Cow::Borrowed(key),
            value,
            span: start..offset(&mut it),
        });
    }
}

/// Without the `tls` feature, a mode that needs TLS cannot be honoured:
/// said at once, rather than at the first connection.
#[cfg(not(feature = "tls"))]
pub(crate) fn check_supported(mode: SslMode) -> Result<(), Error> {
    if mode.needs_tls() {
        return Err(Error::invalid(
            "sslmode",
            format!(
                "sslmode={mode} needs TLS, and waymark-postgres was built without its `tls` \
                 feature: enable it (waymark's feature `postgres-tls`), or use sslmode=prefer \
                 or disable to connect without TLS"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Ssl) {
        let extracted = extract(url).unwrap();
        (extracted.rest.into_owned(), extracted.ssl)
    }

    fn ssl(mode: SslMode, root: Option<&str>) -> Ssl {
        Ssl {
            mode,
            root_cert: root.map(|r| match r {
                "system" => RootCert::System,
                path => RootCert::File(path.into()),
            }),
        }
    }

    #[test]
    fn urls_lose_exactly_the_ssl_parameters() {
        for (url, rest, want) in [
            (
                "postgres://u:p@h/db",
                "postgres://u:p@h/db",
                ssl(SslMode::Prefer, None),
            ),
            (
                "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgres://u:p@h/db",
                ssl(SslMode::VerifyFull, Some("/etc/ca.pem")),
            ),
            (
                "postgresql://h:5/db?application_name=x&sslrootcert=%2Fa%20b%2Fca.pem&connect_timeout=3&sslmode=verify-ca",
                "postgresql://h:5/db?application_name=x&connect_timeout=3",
                ssl(SslMode::VerifyCa, Some("/a b/ca.pem")),
            ),
            (
                "postgres://h/db?sslmode=disable&sslmode=require",
                "postgres://h/db",
                ssl(SslMode::Require, None),
            ),
            (
                "postgres://h?sslrootcert=system",
                "postgres://h",
                ssl(SslMode::VerifyFull, Some("system")),
            ),
            // A password holding '?', '&' and '=' (credentials end at the
            // first '@', as in tokio-postgres).
            (
                "postgres://u:a?b&c=d@h/db?sslmode=require&port=6",
                "postgres://u:a?b&c=d@h/db?port=6",
                ssl(SslMode::Require, None),
            ),
            (
                "postgres://h/db?options=-c%20x%3Dy",
                "postgres://h/db?options=-c%20x%3Dy",
                ssl(SslMode::Prefer, None),
            ),
        ] {
            let (got_rest, got) = split(url);
            assert_eq!(got_rest, rest, "{url}");
            assert_eq!(got, want, "{url}");
            assert!(got_rest.parse::<tokio_postgres::Config>().is_ok(), "{url}");
        }
    }

    #[test]
    fn key_value_strings_lose_exactly_the_ssl_pairs() {
        for (s, rest, want) in [
            ("host=h user=u", "host=h user=u", ssl(SslMode::Prefer, None)),
            (
                "host=h user=u sslmode=require sslrootcert=/x",
                "host=h user=u  ",
                ssl(SslMode::Require, Some("/x")),
            ),
            (
                "sslmode = verify-full host=h sslrootcert='/my certs/ca.pem' password='a b\\'c'",
                " host=h  password='a b\\'c'",
                ssl(SslMode::VerifyFull, Some("/my certs/ca.pem")),
            ),
            (
                "  host=h\tsslrootcert=/a\\ b\n",
                "  host=h\t\n",
                ssl(SslMode::Prefer, Some("/a b")),
            ),
        ] {
            let (got_rest, got) = split(s);
            assert_eq!(got_rest, rest, "{s}");
            assert_eq!(got, want, "{s}");
            let pg: tokio_postgres::Config = got_rest.parse().unwrap();
            assert_eq!(pg.get_hosts().len(), 1, "{s}");
        }
    }

    #[test]
    fn strings_tokio_postgres_refuses_are_left_to_it() {
        for s in [
            "host=h password='unterminated sslmode=require",
            "host=h sslmode",
            "postgres://h/db?sslmode",
        ] {
            let (rest, got) = split(s);
            assert_eq!(rest, s);
            assert_eq!(got, Ssl::default());
            assert!(rest.parse::<tokio_postgres::Config>().is_err(), "{s}");
        }
    }

    #[test]
    fn bad_modes_are_invalid_without_repeating_the_string() {
        for s in [
            "postgres://u:hunter2@h/db?sslmode=sometimes",
            "host=h sslmode= password=hunter2",
            "host=h password=hunter2 sslmode=allow",
            "host=h password=hunter2 sslrootcert=system sslmode=require",
            "postgres://u:hunter2@h/db?sslrootcert=system&sslmode=verify-ca",
        ] {
            match extract(s) {
                Err(
                    err @ Error::Invalid {
                        field: "sslmode", ..
                    },
                ) => {
                    assert!(!err.to_string().contains("hunter2"), "{s}: {err}")
                }
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn roots_are_checked_as_libpq_checks_them() {
        assert_eq!(ssl(SslMode::Prefer, Some("/ca")).roots(), None);
        assert_eq!(ssl(SslMode::Require, None).roots(), None);
        assert_eq!(
            ssl(SslMode::Require, Some("/ca")).roots(),
            Some(RootCert::File("/ca".into()))
        );
        assert_eq!(ssl(SslMode::VerifyCa, None).roots(), Some(RootCert::System));
        assert_eq!(
            ssl(SslMode::VerifyFull, Some("/ca")).roots(),
            Some(RootCert::File("/ca".into()))
        );
    }
}
