//! Reading what the workspace answers: JSON without echoing values, error bodies of every
//! shape, protobuf durations.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::RequestProblem;

/// The states an API reports, by their wire names, written once per enum: `from_api` maps a
/// name to its variant, and keeps a name this version does not know in `Other`.
macro_rules! api_states {
    ($enum:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $enum {
            pub(crate) fn from_api(text: &str) -> Self {
                match text {
                    $($text => $enum::$variant,)+
                    other => $enum::Other(other.to_owned()),
                }
            }
        }
    };
}
pub(crate) use api_states;

/// Decodes a JSON answer without echoing any of its values (they may be secrets).
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestProblem> {
    serde_json::from_slice(body).map_err(|e| {
        let detail = if looks_like_html(body) {
            String::from("an HTML page instead of JSON (is the host the workspace URL?)")
        } else if body.iter().all(u8::is_ascii_whitespace) {
            String::from("an empty body instead of JSON")
        } else if e.is_data() && e.to_string().starts_with("missing field") {
            let text = e.to_string();
            text.split(" at line").next().unwrap_or(&text).to_owned()
        } else if e.is_data() {
            format!(
                "a field has the wrong type (line {}, column {})",
                e.line(),
                e.column()
            )
        } else {
            format!("malformed JSON (line {}, column {})", e.line(), e.column())
        };
        RequestProblem::InvalidResponse(detail)
    })
}

/// The fields of an error answer, whatever shape the body had.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub(crate) error_code: Option<String>,
    pub(crate) message: String,
    pub(crate) retry_delay: Option<Duration>,
}

/// Reads an error body: the API's `{error_code, message, details}`, OAuth's
/// `{error, error_description}`, `{errorCode, errorSummary}`, legacy `{error}`, plain text,
/// HTML or nothing. Never fails; messages are cut to 300 characters.
pub(crate) fn parse_error_body(body: &[u8]) -> ErrorBody {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return ErrorBody {
            message: String::from("(empty body)"),
            ..ErrorBody::default()
        };
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed) {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| map.get(*n).and_then(|v| v.as_str()).map(str::to_owned))
        };
        let error_code = field(&["error_code", "errorCode"])
            .or_else(|| field(&["error"]).filter(|_| map.contains_key("error_description")));
        let message = field(&["message", "error_description", "errorSummary", "error"])
            .unwrap_or_else(|| String::from("(no message in the error body)"));
        let retry_delay = map
            .get("details")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter(|d| {
                d.get("@type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("RetryInfo"))
            })
            .find_map(|d| {
                d.get("retry_delay")
                    .and_then(|v| v.as_str())
                    .and_then(parse_proto_duration)
            });
        return ErrorBody {
            error_code,
            message: shorten(&message),
            retry_delay,
        };
    }
    let message = if looks_like_html(body) {
        String::from("an HTML page instead of an API error (is the host the workspace URL?)")
    } else {
        shorten(trimmed)
    };
    ErrorBody {
        message,
        ..ErrorBody::default()
    }
}

fn looks_like_html(body: &[u8]) -> bool {
    let start = String::from_utf8_lossy(&body[..body.len().min(512)]).to_ascii_lowercase();
    let start = start.trim_start();
    start.starts_with("<!doctype html") || start.starts_with("<html") || start.contains("<body")
}

fn shorten(text: &str) -> String {
    let single_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if single_line.chars().count() > 300 {
        let cut: String = single_line.chars().take(300).collect();
        format!("{cut}...")
    } else {
        single_line
    }
}

/// A protobuf JSON duration: `"2s"`, `"1.5s"`. One too long for a `Duration` is
/// `Duration::MAX`: the server asked for a very long wait, which is not the same as none.
pub(crate) fn parse_proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    if seconds.is_finite() && seconds >= 0.0 {
        Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_bodies_give_code_message_and_retry_delay() {
        let body = br#"{"error_code":"RESOURCE_EXHAUSTED","message":"slow down",
            "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"x"},
                       {"@type":"type.googleapis.com/google.rpc.RetryInfo","retry_delay":"2.5s"}]}"#;
        assert_eq!(
            parse_error_body(body),
            ErrorBody {
                error_code: Some("RESOURCE_EXHAUSTED".into()),
                message: "slow down".into(),
                retry_delay: Some(Duration::from_millis(2500)),
            }
        );
    }

    #[test]
    fn oauth_and_legacy_shapes_are_understood() {
        let oauth = parse_error_body(
            br#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
        );
        assert_eq!(oauth.error_code.as_deref(), Some("invalid_client"));
        assert_eq!(oauth.message, "Client authentication failed");
        let okta = parse_error_body(
            br#"{"errorCode":"E0000011","errorSummary":"Invalid token provided"}"#,
        );
        assert_eq!(okta.error_code.as_deref(), Some("E0000011"));
        assert_eq!(okta.message, "Invalid token provided");
        let legacy = parse_error_body(br#"{"error":"Bad Target: /api/2.0/x"}"#);
        assert_eq!(legacy.error_code, None);
        assert_eq!(legacy.message, "Bad Target: /api/2.0/x");
    }

    #[test]
    fn text_html_empty_and_garbage_bodies_never_panic() {
        assert_eq!(parse_error_body(b"").message, "(empty body)");
        assert_eq!(
            parse_error_body(b"upstream connect error\n\n").message,
            "upstream connect error"
        );
        assert!(
            parse_error_body(b"<!DOCTYPE html><html><body>Oops</body></html>")
                .message
                .contains("HTML page")
        );
        assert_eq!(
            parse_error_body(b"{\"message\": 12}").message,
            "(no message in the error body)"
        );
        assert_eq!(parse_error_body(b"[1,2]").message, "[1,2]");
        let _ = parse_error_body(&[0xff, 0xfe, 0x00, 0x80]);
        assert!(parse_error_body("x".repeat(5000).as_bytes()).message.len() <= 303);
    }

    #[test]
    fn decode_errors_never_echo_values() {
        #[derive(Debug, serde::Deserialize)]
        struct Token {
            #[allow(dead_code)]
            token: String,
        }
        let wrong_type = decode::<Token>(br#"{"token": ["secret-value"]}"#).unwrap_err();
        assert!(
            !wrong_type.to_string().contains("secret-value"),
            "{wrong_type}"
        );
        assert_eq!(
            decode::<Token>(br#"{"tokn": "secret-value"}"#)
                .unwrap_err()
                .to_string(),
            "unexpected answer: missing field `token`"
        );
        assert!(
            decode::<Token>(b"<html></html>")
                .unwrap_err()
                .to_string()
                .contains("HTML page")
        );
        assert!(
            decode::<Token>(b"")
                .unwrap_err()
                .to_string()
                .contains("empty body")
        );
        assert!(
            decode::<Token>(b"{\"token\": \"abc")
                .unwrap_err()
                .to_string()
                .contains("malformed JSON")
        );
    }

    #[test]
    fn proto_durations_parse() {
        assert_eq!(parse_proto_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_proto_duration("0.25s"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_proto_duration("-1s"), None);
        assert_eq!(parse_proto_duration("2"), None);
        assert_eq!(parse_proto_duration("NaNs"), None);
        assert_eq!(parse_proto_duration("1e30s"), Some(Duration::MAX));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Credential {
        token: String,
        expire_time: String,
    }

    proptest! {
        /// Any bytes give an `ErrorBody` with a message; none panics.
        #[test]
        fn any_error_body_is_read(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let parsed = parse_error_body(&body);
            prop_assert!(!parsed.message.is_empty() || body.iter().all(u8::is_ascii_whitespace));
        }

        /// JSON-like error bodies with odd types and nesting are read without panics.
        #[test]
        fn json_shaped_error_bodies_are_read(
            code in prop_oneof![Just("\"X\"".to_owned()), Just("7".to_owned()), Just("null".to_owned()), "[\\[{]{0,3}"],
            message in "[ -~]{0,40}",
            delay in "[0-9a-z.\"-]{0,12}",
        ) {
            let body = format!(
                r#"{{"error_code": {code}, "message": "{message}", "details": [{{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "{delay}"}}]}}"#
            );
            let _ = parse_error_body(body.as_bytes());
        }

        /// Durations in protobuf JSON form never panic, whatever the number: a valid one is
        /// read as its value (to the nanosecond), one too long for a `Duration` as
        /// `Duration::MAX`, and anything else as none.
        #[test]
        fn proto_durations_never_panic(text in "-?[0-9]{0,30}(\\.[0-9]{0,15})?s?") {
            let seconds = text
                .strip_suffix('s')
                .and_then(|number| number.parse::<f64>().ok())
                .filter(|s| *s >= 0.0);
            match (parse_proto_duration(&text), seconds) {
                (None, None) => {}
                (Some(duration), Some(seconds)) if seconds >= u64::MAX as f64 => {
                    prop_assert_eq!(duration, Duration::MAX);
                }
                (Some(duration), Some(seconds)) => {
                    let error = (duration.as_secs_f64() - seconds).abs();
                    prop_assert!(error <= 1e-9 * seconds.max(1.0), "{text}: {duration:?}");
                }
                (parsed, expected) => prop_assert!(false, "{text}: {parsed:?} vs {expected:?}"),
            }
        }

        /// A decode error describes the body's shape, never its values (they may be tokens).
        #[test]
        fn decode_errors_never_echo_values(
            before in "[ -~]{0,20}",
            after in "[ -~]{0,20}",
            secret in "[a-zA-Z0-9]{24}",
        ) {
            let body = format!(r#"{before}{{"token": 5, "expire_time": "{secret}"{after}"#);
            if let Err(problem) = decode::<Credential>(body.as_bytes()) {
                prop_assert!(!problem.to_string().contains(&secret), "{problem}");
            }
        }
    }
}
