//! AWS JSON APIs (CloudWatch Logs' JSON 1.1, EKS's REST JSON), signed with SigV4 by the AWS
//! SDK's own signer (`aws-sigv4`), sent over [`crate::http::Client`].
//!
//! Errors are sorted into what a poller does next ([`Kind`]): throttling waits and retries,
//! credentials are fetched again once (keys rotated, a session expired), the rest backs off.
//! Credentials come from kustody's EKS chain (`kustody_cluster::eks::credentials`: the
//! environment, the shared credentials file, and with the `aws-chain` feature SSO, IRSA, Pod
//! Identity and IMDS), fetched again every few minutes and after an authentication error.

use std::time::{Duration, Instant, SystemTime};

use kustody_cluster::eks::AwsCredentials;

use crate::http::{Client, HttpError};

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Too many calls: wait (with backoff) and retry.
    Throttled,
    /// The credentials were refused (expired, unknown or rotated keys, a bad signature, a
    /// skewed clock): fetch them again and retry once, else back off.
    Credentials,
    /// The identity lacks a permission: nothing changes until someone grants it.
    Denied,
    /// The resource does not exist (yet): e.g. the log group before audit logging is enabled.
    NotFound,
    /// A server-side or network failure: retry with backoff.
    Transient,
    /// The request itself is wrong: a bug or a bad setting.
    Invalid,
}

/// An AWS call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {}{code}{}: {message}", if *status > 0 { format!("HTTP {status} ") } else { String::new() }, if *kind == Kind::Throttled { " (throttled)" } else { "" })]
pub struct AwsError {
    pub kind: Kind,
    pub operation: String,
    pub status: u16,
    /// The service's error code (`ThrottlingException`, `ResourceNotFoundException`…).
    pub code: String,
    pub message: String,
    /// `Retry-After`, when the answer had one.
    pub retry_after: Option<Duration>,
}

/// The throttling codes the AWS SDKs retry (aws-runtime's retry classifiers), and `RateExceeded`.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "RateExceeded",
];
/// Credentials refused: expired or unknown keys, bad signatures, clock skew (aws-runtime's
/// clock-skew codes, STS's and IAM's spellings).
const CREDENTIALS: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "RequestExpired",
    "InvalidAccessKeyId",
    "MissingAuthenticationToken",
];
const TRANSIENT: &[&str] =
    &["RequestTimeout", "RequestTimeoutException", "ServiceUnavailableException", "InternalFailure"];

/// Sorts an error answer into a [`Kind`].
pub fn classify(status: u16, code: &str) -> Kind {
    if THROTTLING.contains(&code) || status == 429 {
        Kind::Throttled
    } else if CREDENTIALS.contains(&code) {
        Kind::Credentials
    } else if code == "AccessDeniedException" || code == "AccessDenied" {
        Kind::Denied
    } else if code == "ResourceNotFoundException" || (status == 404 && code.is_empty()) {
        Kind::NotFound
    } else if TRANSIENT.contains(&code) || status >= 500 || status == 0 {
        Kind::Transient
    } else if status == 401 || status == 403 {
        // an IAM-style refusal without a known code
        Kind::Credentials
    } else {
        Kind::Invalid
    }
}

/// The error code and message of an error answer: JSON (`__type`, `message`), the
/// `x-amzn-ErrorType` header, or XML (`<Code>`, `<Message>`).
pub fn error_of(headers: &http::HeaderMap, body: &[u8]) -> (String, String) {
    let strip = |c: &str| -> String {
        let c = c.split(':').next().unwrap_or(c);
        c.rsplit('#').next().unwrap_or(c).trim().to_owned()
    };
    let mut code = String::new();
    let mut message = String::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(t) = v.get("__type").or_else(|| v.get("code")).and_then(|t| t.as_str()) {
            code = strip(t);
        }
        if let Some(m) = v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()) {
            message = m.to_owned();
        }
    }
    if code.is_empty() {
        if let Some(h) = headers.get("x-amzn-errortype").and_then(|h| h.to_str().ok()) {
            code = strip(h);
        }
    }
    if code.is_empty() || message.is_empty() {
        let text = String::from_utf8_lossy(body);
        let tag = |name: &str| -> Option<String> {
            let open = format!("<{name}>");
            let start = text.find(&open)? + open.len();
            let end = text.get(start..)?.find(&format!("</{name}>"))? + start;
            text.get(start..end).map(str::to_owned)
        };
        if code.is_empty() {
            code = tag("Code").unwrap_or_default();
        }
        if message.is_empty() {
            message = tag("Message").unwrap_or_else(|| text.chars().take(200).collect());
        }
    }
    (code, message)
}

/// How a service is reached.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The region the calls are signed for.
    pub region: String,
    /// A base URL for every service (a local implementation, a VPC endpoint); else the
    /// public `https://{service}.{region}.amazonaws.com`.
    pub url: Option<String>,
}

impl Endpoint {
    pub fn base(&self, service: &str) -> String {
        match &self.url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None if self.region.starts_with("cn-") => format!("https://{service}.{}.amazonaws.com.cn", self.region),
            None => format!("https://{service}.{}.amazonaws.com", self.region),
        }
    }
}

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    pub profile: Option<String>,
    pub role_arn: Option<String>,
}

/// An AWS API client: endpoint, credentials (cached, fetched again when refused or old) and
/// the HTTP client.
pub struct Aws {
    pub endpoint: Endpoint,
    http: Client,
    source: CredentialSource,
    creds: tokio::sync::Mutex<Option<(AwsCredentials, Instant)>>,
    /// Credentials are fetched again after this long (static keys may be rotated in the file;
    /// chain credentials expire).
    pub refresh_every: Duration,
    /// Credential refreshes after a refusal (a metric).
    pub refreshes: std::sync::atomic::AtomicU64,
}

impl Aws {
    pub fn new(endpoint: Endpoint, source: CredentialSource, http: Client) -> Aws {
        Aws {
            endpoint,
            http,
            source,
            creds: tokio::sync::Mutex::new(None),
            refresh_every: Duration::from_secs(300),
            refreshes: Default::default(),
        }
    }

    /// The access key id in use (for quota buckets and messages; never the secret).
    ///
    /// # Errors
    ///
    /// When no credentials can be found.
    pub async fn access_key_id(&self) -> Result<String, AwsError> {
        Ok(self.credentials(false).await?.access_key_id)
    }

    async fn credentials(&self, fresh: bool) -> Result<AwsCredentials, AwsError> {
        let mut c = self.creds.lock().await;
        if let Some((creds, at)) = c.as_ref() {
            if !fresh && at.elapsed() < self.refresh_every {
                return Ok(creds.clone());
            }
        }
        let got = kustody_cluster::eks::credentials(self.source.profile.as_deref(), self.source.role_arn.as_deref())
            .await
            .map_err(|e| AwsError {
                kind: Kind::Credentials,
                operation: "AWS credentials".into(),
                status: 0,
                code: "NoCredentials".into(),
                message: e.to_string(),
                retry_after: None,
            })?;
        *c = Some((got.clone(), Instant::now()));
        Ok(got)
    }

    /// A CloudWatch Logs-style JSON 1.1 call: `POST /` with `X-Amz-Target: {target}`.
    ///
    /// # Errors
    ///
    /// The service's error, classified; transport failures are [`Kind::Transient`].
    pub async fn json_call(
        &self,
        service: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, AwsError> {
        let url = format!("{}/", self.endpoint.base(service));
        let body = serde_json::to_vec(body).map_err(|e| invalid(target, e.to_string()))?;
        let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target)];
        let op = target.rsplit('.').next().unwrap_or(target);
        self.call(service, op, "POST", &url, &headers, body).await
    }

    /// A REST JSON call (EKS): `GET {path}`.
    ///
    /// # Errors
    ///
    /// As [`Aws::json_call`].
    pub async fn rest_get(&self, service: &str, operation: &str, path: &str) -> Result<serde_json::Value, AwsError> {
        let url = format!("{}{path}", self.endpoint.base(service));
        self.call(service, operation, "GET", &url, &[("accept", "application/json")], Vec::new()).await
    }

    async fn call(
        &self,
        service: &str,
        op: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<serde_json::Value, AwsError> {
        let mut refreshed = false;
        loop {
            let creds = self.credentials(false).await?;
            let req = sign(&creds, service, &self.endpoint.region, method, url, headers, &body, SystemTime::now())
                .map_err(|e| invalid(op, e))?;
            let answer = match self.http.send(req).await {
                Ok(a) => a,
                Err(HttpError::TooLarge { limit, .. }) => {
                    return Err(AwsError {
                        kind: Kind::Invalid,
                        operation: op.into(),
                        status: 0,
                        code: "AnswerTooLarge".into(),
                        message: format!("the answer is larger than {limit} bytes"),
                        retry_after: None,
                    })
                }
                Err(e @ (HttpError::Insecure { .. } | HttpError::BadUrl { .. })) => {
                    return Err(invalid(op, e.to_string()))
                }
                Err(e) => {
                    return Err(AwsError {
                        kind: Kind::Transient,
                        operation: op.into(),
                        status: 0,
                        code: String::new(),
                        message: e.to_string(),
                        retry_after: None,
                    })
                }
            };
            if (200..300).contains(&answer.status) {
                if answer.body.is_empty() {
                    return Ok(serde_json::Value::Object(Default::default()));
                }
                return serde_json::from_slice(&answer.body).map_err(|e| AwsError {
                    kind: Kind::Transient,
                    operation: op.into(),
                    status: answer.status,
                    code: "BadAnswer".into(),
                    message: format!("an answer that is not JSON: {e}"),
                    retry_after: None,
                });
            }
            let (code, message) = error_of(&answer.headers, &answer.body);
            let kind = classify(answer.status, &code);
            let retry_after = answer
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            if kind == Kind::Credentials && !refreshed {
                // keys rotated or a session expired: fetch them again, once
                refreshed = true;
                self.refreshes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(operation = op, code = %code, "AWS refused the credentials: fetching them again");
                self.credentials(true).await?;
                continue;
            }
            return Err(AwsError { kind, operation: op.into(), status: answer.status, code, message, retry_after });
        }
    }
}

fn invalid(op: &str, message: String) -> AwsError {
    AwsError { kind: Kind::Invalid, operation: op.into(), status: 0, code: String::new(), message, retry_after: None }
}

/// A SigV4-signed request (headers; the payload hashed; a session token sent and signed).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    creds: &AwsCredentials,
    service: &str,
    region: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
) -> Result<http::Request<Vec<u8>>, String> {
    let settings = aws_sigv4::http_request::SigningSettings::default();
    let instructions = kustody_cluster::eks::sigv4(creds, service, region, method, url, headers, body, now, settings)
        .map_err(|e| e.to_string())?;
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(body.to_vec()).map_err(|e| format!("`{url}`: {e}"))?;
    instructions.apply_to_request_http1x(&mut req);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_from_json_headers_and_xml() {
        let h = http::HeaderMap::new();
        let (c, m) = error_of(&h, br#"{"__type":"com.amazonaws.logs#ThrottlingException","message":"Rate exceeded"}"#);
        assert_eq!((c.as_str(), m.as_str()), ("ThrottlingException", "Rate exceeded"));
        assert_eq!(classify(400, &c), Kind::Throttled);
        let mut h = http::HeaderMap::new();
        h.insert("x-amzn-errortype", "ExpiredTokenException:http://internal.amazon.com/coral/".parse().unwrap());
        let (c, _) = error_of(&h, b"");
        assert_eq!(c, "ExpiredTokenException");
        assert_eq!(classify(400, &c), Kind::Credentials);
        let xml = b"<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error></ErrorResponse>";
        let (c, m) = error_of(&http::HeaderMap::new(), xml);
        assert_eq!(c, "InvalidClientTokenId");
        assert!(m.starts_with("The security token"));
        assert_eq!(classify(403, &c), Kind::Credentials);
        assert_eq!(classify(400, "ResourceNotFoundException"), Kind::NotFound);
        assert_eq!(classify(400, "AccessDeniedException"), Kind::Denied);
        assert_eq!(classify(503, ""), Kind::Transient);
        assert_eq!(classify(429, ""), Kind::Throttled);
        assert_eq!(classify(400, "InvalidParameterException"), Kind::Invalid);
        assert_eq!(classify(403, ""), Kind::Credentials);
    }

    #[test]
    fn signed_requests_carry_the_sigv4_headers() {
        let creds = AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: secrecy::SecretString::from("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned()),
            session_token: Some(secrecy::SecretString::from("session".to_owned())),
            source: "test".into(),
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_165_200);
        let r = sign(
            &creds,
            "logs",
            "eu-west-1",
            "POST",
            "https://logs.eu-west-1.amazonaws.com/",
            &[("content-type", "application/x-amz-json-1.1"), ("x-amz-target", "Logs_20140328.FilterLogEvents")],
            b"{}",
            t,
        )
        .unwrap();
        let auth = r.headers().get("authorization").unwrap().to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261120/eu-west-1/logs/aws4_request"),
            "{auth}"
        );
        assert!(auth.contains("x-amz-target"), "the target is signed: {auth}");
        assert_eq!(r.headers().get("x-amz-date").unwrap(), "20261120T090000Z");
        assert_eq!(r.headers().get("x-amz-security-token").unwrap(), "session");
        assert_eq!(r.body(), b"{}");
        assert_eq!(
            Endpoint { region: "cn-north-1".into(), url: None }.base("logs"),
            "https://logs.cn-north-1.amazonaws.com.cn"
        );
    }
}
