//! What the AWS components share (the Kinesis source and sink, the lease
//! table in DynamoDB): the `aws:` settings block, one way to turn it into
//! an SDK configuration, and one reading of the SDK's errors.

pub mod dynamodb;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use serde::Deserialize;

use flumen_core::prelude::*;

/// Where and as whom to reach AWS. Every key is optional: by default the
/// region and credentials come from the standard chain (environment
/// variables, the shared config and credentials files, web identity,
/// container and instance metadata), as for the AWS CLI.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The region, e.g. `eu-west-1`. Default: `AWS_REGION`, or the
    /// profile's.
    #[serde(default)]
    pub region: Option<String>,
    /// An endpoint URL to use instead of AWS's, e.g. a local emulator's
    /// `http://127.0.0.1:4568`. Empty means AWS's (so that
    /// `${KINESIS_ENDPOINT:-}` can leave it unset).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An access key id, with `secret_access_key`, instead of the standard
    /// chain: best given as `${AWS_ACCESS_KEY_ID}`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key of `access_key_id`, e.g. `${AWS_SECRET_ACCESS_KEY}`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// A session token for temporary keys.
    #[serde(default)]
    pub session_token: Option<String>,
    /// A role to assume (with the credentials above), e.g.
    /// `arn:aws:iam::123456789012:role/flumen`.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// The session name when assuming `role_arn`.
    #[serde(default = "default_session_name")]
    pub role_session_name: String,
    /// The external id the role's trust policy asks for, if any.
    #[serde(default)]
    pub external_id: Option<String>,
}

fn default_session_name() -> String {
    "flumen".into()
}

impl AwsSettings {
    /// Settings for a local emulator at `endpoint`, with dummy keys.
    pub fn local(endpoint: impl Into<String>) -> Self {
        AwsSettings {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.into()),
            access_key_id: Some("flumen".into()),
            secret_access_key: Some("flumen".into()),
            role_session_name: default_session_name(),
            ..AwsSettings::default()
        }
    }

    /// Checks what can be checked without a network; `key` names the
    /// settings block in errors.
    pub fn check(&self, key: &str) -> Result<()> {
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => Err(Error::config(
                format!("{key}.secret_access_key"),
                "is missing: `access_key_id` needs its secret key",
            )),
            (None, Some(_)) => Err(Error::config(
                format!("{key}.access_key_id"),
                "is missing: `secret_access_key` needs its key id",
            )),
            _ => Ok(()),
        }?;
        if let Some(endpoint) = self.endpoint()
            && url::Url::parse(endpoint).is_err()
        {
            return Err(Error::config(
                format!("{key}.endpoint"),
                format!("`{endpoint}` is not a URL; expected e.g. `http://127.0.0.1:4568`"),
            ));
        }
        Ok(())
    }

    /// The endpoint URL, unless unset or empty.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref().filter(|e| !e.trim().is_empty())
    }

    /// A Kinesis client.
    pub async fn kinesis_client(&self) -> aws_sdk_kinesis::Client {
        let sdk = self.sdk_config().await;
        let mut config = aws_sdk_kinesis::config::Builder::from(&sdk);
        config.set_endpoint_url(self.endpoint().map(str::to_string));
        let config = config.build();
        aws_sdk_kinesis::Client::from_conf(config)
    }

    /// A DynamoDB client.
    pub async fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        let sdk = self.sdk_config().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk);
        config.set_endpoint_url(self.endpoint().map(str::to_string));
        aws_sdk_dynamodb::Client::from_conf(config.build())
    }

    /// The SDK configuration these settings describe, but for the
    /// endpoint, which each service's client takes (role assumption must
    /// still reach AWS's STS). Requests go through hyper and rustls with
    /// ring, as the rest of Flumen's HTTP does, and the SDK does not retry:
    /// callers decide what a throttled or failed call means for them.
    pub async fn sdk_config(&self) -> SdkConfig {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(20))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                self.session_token.clone(),
                None,
                "flumen settings",
            ));
        }
        let config = loader.load().await;
        let Some(role) = &self.role_arn else {
            return config;
        };
        let mut assume = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name(&self.role_session_name)
            .configure(&config);
        if let Some(external_id) = &self.external_id {
            assume = assume.external_id(external_id);
        }
        let provider = assume.build().await;
        config
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build()
    }
}

/// What a failed AWS call means for whoever made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Over a limit: wait and call again.
    Throttled(String),
    /// A shard iterator too old to use: get a new one.
    ExpiredIterator(String),
    /// The network, a timeout, or the service failing: call again.
    Transient(String),
    /// Calling again will not help (no such stream, access denied, a bad
    /// request).
    Fatal(String),
}

/// Sorts an SDK error by its error code, the same for every operation.
pub fn classify<E>(error: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = describe(error);
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            match code {
                "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "ThrottlingException"
                | "KMSThrottlingException"
                | "RequestLimitExceeded" => ErrorClass::Throttled(text),
                "ExpiredIteratorException" => ErrorClass::ExpiredIterator(text),
                "InternalFailure"
                | "InternalFailureException"
                | "ServiceUnavailable"
                | "InternalServerError" => ErrorClass::Transient(text),
                _ if service.raw().status().is_server_error() => ErrorClass::Transient(text),
                _ => ErrorClass::Fatal(text),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient(text)
        }
        _ => ErrorClass::Fatal(text),
    }
}

/// An SDK error in one line: its code and message where the service sent
/// them, else the chain of causes.
pub fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(service) = error {
        let err = service.err();
        if let Some(code) = err.code() {
            return match err.message() {
                Some(message) => format!("{code}: {message}"),
                None => code.to_string(),
            };
        }
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How long to wait before attempt `attempt` (1, 2, …) after failures:
/// exponential from `base`, at most 10 s, with full jitter so that many
/// shards throttled together do not call again together.
pub fn jittered(attempt: u32, base: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1 << attempt.min(10))
        .min(Duration::from_secs(10));
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}
