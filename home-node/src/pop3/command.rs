//! POP3 command lines (RFC 1939 section 3, RFC 2449, RFC 2595, RFC 5034): a
//! case-insensitive keyword and arguments separated by spaces.

/// One parsed command line. Message numbers are kept as given (1-based); the
/// session checks them against the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Capa,
    Quit,
    Stls,
    User(&'a str),
    /// The password: everything after `PASS `, spaces included (RFC 1939
    /// section 7 allows a server to read it so).
    Pass(&'a str),
    Auth {
        mechanism: Option<&'a str>,
        initial: Option<&'a str>,
    },
    Apop,
    Stat,
    List(Option<u64>),
    Retr(u64),
    Dele(u64),
    Noop,
    Rset,
    Top(u64, u64),
    Uidl(Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not a POP3 command this server knows.
    Unknown,
    /// A known command with wrong arguments: how to call it.
    Syntax(&'static str),
}

/// Parses one line (without its CRLF).
pub fn parse(line: &str) -> Result<Command<'_>, ParseError> {
    let (keyword, rest) = match line.split_once(' ') {
        Some((k, r)) => (k, r),
        None => (line, ""),
    };
    if keyword.is_empty() || keyword.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let keyword = keyword.to_ascii_uppercase();
    let args: Vec<&str> = rest.split_ascii_whitespace().collect();
    let none = |c: Command<'static>, usage| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax(usage))
        }
    };
    match keyword.as_str() {
        "CAPA" => none(Command::Capa, "CAPA takes no argument"),
        "QUIT" => none(Command::Quit, "QUIT takes no argument"),
        "STLS" => none(Command::Stls, "STLS takes no argument"),
        "STAT" => none(Command::Stat, "STAT takes no argument"),
        "NOOP" => none(Command::Noop, "NOOP takes no argument"),
        "RSET" => none(Command::Rset, "RSET takes no argument"),
        "APOP" => Ok(Command::Apop),
        "USER" => match args.as_slice() {
            [name] => Ok(Command::User(name)),
            _ => Err(ParseError::Syntax("usage: USER name")),
        },
        "PASS" => {
            if rest.is_empty() {
                Err(ParseError::Syntax("usage: PASS password"))
            } else {
                Ok(Command::Pass(rest))
            }
        }
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [mechanism] => Ok(Command::Auth {
                mechanism: Some(mechanism),
                initial: None,
            }),
            [mechanism, initial] => Ok(Command::Auth {
                mechanism: Some(mechanism),
                initial: Some(initial),
            }),
            _ => Err(ParseError::Syntax(
                "usage: AUTH mechanism [initial-response]",
            )),
        },
        "LIST" | "UIDL" => {
            let msg = match args.as_slice() {
                [] => None,
                [n] => Some(number(n).ok_or(ParseError::Syntax("invalid message number"))?),
                _ => return Err(ParseError::Syntax("usage: LIST [msg] / UIDL [msg]")),
            };
            Ok(if keyword == "LIST" {
                Command::List(msg)
            } else {
                Command::Uidl(msg)
            })
        }
        "RETR" | "DELE" => match args.as_slice() {
            [n] => {
                let n = number(n).ok_or(ParseError::Syntax("invalid message number"))?;
                Ok(if keyword == "RETR" {
                    Command::Retr(n)
                } else {
                    Command::Dele(n)
                })
            }
            _ => Err(ParseError::Syntax("usage: RETR msg / DELE msg")),
        },
        "TOP" => match args.as_slice() {
            [n, lines] => match (number(n), number(lines)) {
                (Some(n), Some(lines)) => Ok(Command::Top(n, lines)),
                _ => Err(ParseError::Syntax(
                    "usage: TOP msg n (non-negative numbers)",
                )),
            },
            _ => Err(ParseError::Syntax("usage: TOP msg n")),
        },
        _ => Err(ParseError::Unknown),
    }
}

/// A decimal number; one too large for 64 bits reads as `u64::MAX` (no
/// maildrop has that many messages, nor a message that many lines).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive_and_arguments_checked() {
        assert_eq!(parse("capa"), Ok(Command::Capa));
        assert_eq!(parse("Stat"), Ok(Command::Stat));
        assert_eq!(parse("LIST"), Ok(Command::List(None)));
        assert_eq!(parse("list 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse("TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(
            parse("RETR 99999999999999999999999"),
            Ok(Command::Retr(u64::MAX))
        );
        assert!(matches!(parse("RETR"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("RETR -1"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("RETR 1 2"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("TOP 1"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("STAT x"), Err(ParseError::Syntax(_))));
        assert_eq!(parse("XYZZY"), Err(ParseError::Unknown));
        assert_eq!(parse(""), Err(ParseError::Unknown));
        assert_eq!(parse(" STAT"), Err(ParseError::Unknown));
    }

    #[test]
    fn pass_keeps_spaces_and_auth_takes_an_initial_response() {
        assert_eq!(parse("PASS a b  c "), Ok(Command::Pass("a b  c ")));
        assert!(matches!(parse("PASS"), Err(ParseError::Syntax(_))));
        assert_eq!(parse("USER alice"), Ok(Command::User("alice")));
        assert_eq!(
            parse("AUTH PLAIN AGFsaWNlAHB3"),
            Ok(Command::Auth {
                mechanism: Some("PLAIN"),
                initial: Some("AGFsaWNlAHB3")
            })
        );
        assert_eq!(
            parse("AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial: None
            })
        );
    }
}
