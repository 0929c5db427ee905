//! The Postgres wire protocol as far as the emulator speaks it: start-up packets, typed
//! messages, error responses, and the start-up parameters it checks.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) const SSL_REQUEST: i32 = 80_877_103;
pub(super) const CANCEL_REQUEST: i32 = 80_877_102;
pub(super) const GSSENC_REQUEST: i32 = 80_877_104;
pub(super) const PROTOCOL_3: i32 = 196_608;

/// A Postgres `ErrorResponse`: `severity` is `ERROR` for the proxy's own errors, `FATAL` for
/// what Postgres itself would send.
pub(super) fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

/// The message (`M` field) of an `ErrorResponse` (type byte and length included).
pub(super) fn error_message(message: &[u8]) -> Option<String> {
    let mut fields = message.get(5..)?.split(|b| *b == 0);
    fields
        .find(|field| field.first() == Some(&b'M'))
        .map(|field| String::from_utf8_lossy(&field[1..]).into_owned())
}

/// Reads a start-up-phase packet (no type byte): `(code, body after the code)`.
pub(super) async fn read_startup<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(i32, Vec<u8>)> {
    let length = stream.read_i32().await?;
    if !(8..=10_000).contains(&length) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad start-up packet length",
        ));
    }
    let code = stream.read_i32().await?;
    let mut body = vec![0; length as usize - 8];
    let _ = stream.read_exact(&mut body).await?;
    Ok((code, body))
}

/// Reads one typed message: `(type, whole message including type and length)`.
pub(super) async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await?;
    let length = stream.read_i32().await?;
    if !(4..=64 * 1024 * 1024).contains(&length) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bad message length",
        ));
    }
    let mut message = vec![kind];
    message.extend_from_slice(&length.to_be_bytes());
    // Grows with the bytes that actually arrive, so a bogus length allocates nothing.
    let body = length as usize - 4;
    let read = (&mut *stream)
        .take(body as u64)
        .read_to_end(&mut message)
        .await?;
    if read < body {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((kind, message))
}

/// The start-up parameters passed on to the trusting upstream; anything else (such as
/// `replication`) is dropped. `user` is the one the token was checked for.
pub(super) const FORWARDED_PARAMS: [&str; 9] = [
    "user",
    "database",
    "options",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "IntervalStyle",
];

/// The first parameter named twice, if any.
pub(super) fn first_duplicate(params: &[(String, String)]) -> Option<&str> {
    params.iter().enumerate().find_map(|(i, (key, _))| {
        params[..i]
            .iter()
            .any(|(earlier, _)| earlier == key)
            .then_some(key.as_str())
    })
}

/// `key\0value\0...\0` pairs of a start-up message. Only NUL-terminated strings count, so a
/// truncated message yields the pairs that are complete; an empty key ends the list.
pub(super) fn parse_params(body: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some(end) = rest.iter().position(|b| *b == 0) {
        fields.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end + 1..];
    }
    fields
        .chunks_exact(2)
        .take_while(|pair| !pair[0].is_empty())
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// A password field that carries the endpoint, as the proxy accepts from clients without SNI:
/// `endpoint=<id>;<password>` (or `$` for `;`): `(Some(id), password)`; otherwise
/// `(None, field)`.
pub(super) fn split_endpoint_password(field: &str) -> (Option<&str>, &str) {
    field
        .strip_prefix("endpoint=")
        .and_then(|rest| rest.split_once([';', '$']))
        .map_or((None, field), |(id, password)| (Some(id), password))
}

/// Whether `id` is a well-formed endpoint id, as the proxy checks: ASCII letters, digits and
/// hyphens.
pub(super) fn is_endpoint_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The `endpoint=<id>` part of an `options` parameter, and the rest of it.
pub(super) fn split_endpoint_option(options: &str) -> (Option<String>, String) {
    let mut endpoint = None;
    let mut rest = Vec::new();
    for part in options.split_whitespace() {
        match part
            .strip_prefix("endpoint=")
            .or_else(|| part.strip_prefix("endpoint%3D"))
        {
            Some(id) => endpoint = Some(id.to_owned()),
            None => rest.push(part),
        }
    }
    (endpoint, rest.join(" "))
}

/// Refuses a connection as the Lakebase proxy does with everything it decides itself:
/// severity `ERROR`, SQLSTATE `XX000`, the text telling what is wrong.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &str,
) -> std::io::Result<()> {
    stream
        .write_all(&error_response("ERROR", "XX000", message))
        .await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_params_and_endpoint_options_parse() {
        let params = parse_params(b"user\0app\0database\0db\0options\0endpoint=ep-1 -c x=y\0\0");
        assert_eq!(params.len(), 3);
        assert_eq!(params[2].1, "endpoint=ep-1 -c x=y");
        assert_eq!(
            split_endpoint_option("endpoint=ep-1 -c x=y"),
            (Some("ep-1".into()), "-c x=y".into())
        );
        assert_eq!(
            split_endpoint_option("endpoint%3Dep-2"),
            (Some("ep-2".into()), String::new())
        );
        assert_eq!(parse_params(b"user\0"), Vec::<(String, String)>::new());
        assert_eq!(parse_params(b"user\0app"), Vec::<(String, String)>::new());
        assert_eq!(parse_params(b""), Vec::<(String, String)>::new());
        assert_eq!(
            split_endpoint_password("endpoint=ep-1;secret;with;semicolons"),
            (Some("ep-1"), "secret;with;semicolons")
        );
        assert_eq!(
            split_endpoint_password("endpoint=ep-1$pw"),
            (Some("ep-1"), "pw")
        );
        assert_eq!(split_endpoint_password("plain"), (None, "plain"));
        assert!(is_endpoint_id("ep-a1") && !is_endpoint_id("ep_test!") && !is_endpoint_id(""));
        assert_eq!(
            parse_params(b"\0user\0app\0"),
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn an_error_responses_message_is_read_back() {
        let message = error_response("FATAL", "57P03", "the database system is starting up");
        assert_eq!(
            error_message(&message).as_deref(),
            Some("the database system is starting up")
        );
        assert_eq!(error_message(b"E"), None);
    }

    #[test]
    fn error_responses_are_well_formed() {
        let message = error_response("ERROR", "XX000", "no");
        assert_eq!(message[0], b'E');
        let length = i32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        assert_eq!(length as usize, message.len() - 1);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Runs `read` over `bytes` as the client's stream, on a throwaway runtime.
    fn over<T>(bytes: &[u8], read: impl AsyncFnOnce(&mut &[u8]) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut stream = bytes;
        runtime.block_on(read(&mut stream))
    }

    proptest! {
        /// Start-up parameters: any bytes give complete pairs only, none panics.
        #[test]
        fn any_startup_body_gives_complete_pairs(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            for (key, _) in parse_params(&body) {
                prop_assert!(!key.is_empty());
            }
        }

        /// `options` values: the endpoint is found or not, the rest is kept; none panics.
        #[test]
        fn any_options_value_splits(options in any::<String>()) {
            let (endpoint, rest) = split_endpoint_option(&options);
            prop_assert!(rest.len() <= options.len());
            if let Some(id) = endpoint {
                prop_assert!(options.contains(&id));
            }
        }

        /// A start-up packet from arbitrary bytes: read within its declared length, or refused
        /// for a bad length or a short stream; it never allocates past the 10,000-byte cap.
        #[test]
        fn any_startup_packet_is_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((_, body)) = over(&bytes, async |s| read_startup(s).await) {
                prop_assert!(body.len() + 8 <= bytes.len());
            }
        }

        /// A typed message from arbitrary bytes (lengths included): read whole or refused.
        #[test]
        fn any_typed_message_is_read_or_refused(
            kind in any::<u8>(),
            length in any::<i32>(),
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes.extend_from_slice(&rest);
            if let Ok((read_kind, message)) = over(&bytes, async |s| read_message(s).await) {
                prop_assert_eq!(read_kind, kind);
                prop_assert_eq!(message.len(), length as usize + 1);
                prop_assert!(message.len() <= bytes.len());
            }
        }
    }
}
