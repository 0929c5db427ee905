//! Canned misbehaviour of the mock workspace: error statuses, garbage, cut-off answers, hangs.

use hyper::body::Bytes;
use serde_json::json;

/// A canned misbehaviour for the next matching requests; see [`MockWorkspace::inject`](crate::MockWorkspace::inject).
///
/// ```no_run
/// use lakebase_pool_testing::{Fault, MockWorkspace};
///
/// let mock = MockWorkspace::start().unwrap();
/// mock.inject(Fault::rate_limited(1).times(2).on("/api/2.0/postgres/credentials"));
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    pub(super) kind: FaultKind,
    pub(super) times: usize,
    pub(super) path: Option<String>,
    pub(super) method: Option<String>,
}

#[derive(Clone, Debug)]
pub(super) enum FaultKind {
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    MalformedJson,
    Truncated,
    Hang,
    LostAnswer,
}

impl Fault {
    /// Answer with `status` and `body` (any text: JSON, HTML, nothing).
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::status(503, "<html>maintenance</html>"));
    /// ```
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Fault {
            kind: FaultKind::Status {
                status,
                body: body.into(),
                retry_after: None,
            },
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Answer 429 with `Retry-After: seconds` and an API error body.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::rate_limited(2));
    /// ```
    pub fn rate_limited(seconds: u64) -> Self {
        Fault {
            kind: FaultKind::Status {
                status: 429,
                body:
                    json!({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests"})
                        .to_string(),
                retry_after: Some(seconds),
            },
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Answer 200 with a truncated JSON document.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::malformed_json());
    /// ```
    pub fn malformed_json() -> Self {
        Fault {
            kind: FaultKind::MalformedJson,
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Answer 200 announcing a longer body than it sends, then close the connection: an
    /// answer cut off in transit.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::truncated());
    /// ```
    pub fn truncated() -> Self {
        Fault {
            kind: FaultKind::Truncated,
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Never answer (the connection stays open until the mock stops).
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::hang());
    /// ```
    pub fn hang() -> Self {
        Fault {
            kind: FaultKind::Hang,
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Carry the request out, then answer 503 as if a gateway lost the answer: the client
    /// sees a failure for something that happened (a branch created, a token minted).
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::lost_answer().on("/api/2.0/postgres/projects/shop/branches"));
    /// ```
    pub fn lost_answer() -> Self {
        Fault {
            kind: FaultKind::LostAnswer,
            times: 1,
            path: None,
            method: None,
        }
    }

    /// Apply to the next `n` matching requests (default 1).
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::status(500, "").times(3));
    /// ```
    #[must_use]
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Apply only to requests whose path starts with `prefix` (default: any request); one
    /// `*` in it stands for any text, and the path must then end as the pattern does.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::hang().on("/api/2.0/postgres/credentials"));
    /// ```
    #[must_use]
    pub fn on(mut self, prefix: impl Into<String>) -> Self {
        self.path = Some(prefix.into());
        self
    }

    /// Only for requests with this method (`"GET"`, `"POST"`, ...).
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(
    ///     lakebase_pool_testing::Fault::status(200, r#"{"endpoints": []}"#)
    ///         .on("/api/2.0/postgres/projects/shop/branches/*/endpoints")
    ///         .for_method("GET"),
    /// );
    /// ```
    #[must_use]
    pub fn for_method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Whether the fault applies to this request: the method, if set, and the path prefix,
    /// in which one `*` stands for any text (the path must then also end as the pattern
    /// does).
    pub(super) fn matches(&self, method: &str, path: &str) -> bool {
        if self.times == 0 || self.method.as_deref().is_some_and(|m| m != method) {
            return false;
        }
        match self.path.as_deref() {
            None => true,
            Some(pattern) => match pattern.split_once('*') {
                Some((start, end)) => {
                    path.len() >= start.len() + end.len()
                        && path.starts_with(start)
                        && path.ends_with(end)
                }
                None => path.starts_with(pattern),
            },
        }
    }
}

/// A body that sends the start of a JSON document, then fails, which makes the server drop
/// the connection short of the announced length. It yields once in between, so that the
/// status line, headers and first bytes are flushed before the connection drops.
pub(super) struct CutOff {
    pub(super) step: u8,
}

impl hyper::body::Body for CutOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.step += 1;
        match self.step {
            1 => {
                let start = Bytes::from_static(b"{\"token\": \"abc");
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(start))))
            }
            2 => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            _ => std::task::Poll::Ready(Some(Err(std::io::Error::other("cut off")))),
        }
    }
}
