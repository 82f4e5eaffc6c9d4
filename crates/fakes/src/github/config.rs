//! How the fake GitHub is set up: its credentials, and where and how it delivers webhooks.

/// Settings fixed when the fake starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeGitHubConfig {
    /// The only bearer token the REST API accepts (see [`super::FakeGitHub::set_token`]).
    pub token: String,
    /// The runner group id `generate-jitconfig` accepts. Repository-level
    /// runners live in the "Default" group, whose id is 1 on GitHub.
    pub runner_group_id: u64,
    /// A GitHub App whose installation tokens are accepted besides `token`.
    pub app: Option<super::app::FakeApp>,
}

impl Default for FakeGitHubConfig {
    fn default() -> Self {
        Self {
            token: "ghp_fakeGitHubTokenForTests000000000000".to_owned(),
            runner_group_id: 1,
            app: None,
        }
    }
}

/// Body encoding of webhook deliveries (the hook's `content_type` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`: the JSON document is the body.
    Json,
    /// `application/x-www-form-urlencoded`: the JSON sits in the `payload` field.
    /// This is the default of hooks created through the REST API.
    Form,
}

impl ContentType {
    /// The `Content-Type` header value GitHub sends for this setting.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// Where and how webhooks are delivered (one hook, id [`super::HOOK_ID`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Full `http://` URL of the receiver.
    pub url: String,
    /// HMAC secret; when empty, no `X-Hub-Signature-256` header is sent (as on GitHub).
    pub secret: String,
    /// Body encoding.
    pub content_type: ContentType,
}

impl WebhookTarget {
    /// A JSON hook, the setting every GitHub App uses.
    pub fn json(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            content_type: ContentType::Json,
        }
    }

    /// A form-encoded hook (GitHub's default for REST-created hooks).
    pub fn form(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            content_type: ContentType::Form,
            ..Self::json(url, secret)
        }
    }
}
