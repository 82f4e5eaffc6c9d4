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
    /// Where the REST API lives under the server's root: empty as on github.com and
    /// GHE.com (`https://api.SUBDOMAIN.ghe.com`), `/api/v3` as on GitHub Enterprise Server.
    /// Paths outside it answer 404.
    pub api_prefix: String,
}

impl Default for FakeGitHubConfig {
    fn default() -> Self {
        Self {
            token: "ghp_fakeGitHubTokenForTests000000000000".to_owned(),
            runner_group_id: 1,
            app: None,
            api_prefix: String::new(),
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

/// Which events a hook gets, and how its deliveries name it (docs/github.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HookKind {
    /// A repository hook, standing for the hook of every repository: each repository's
    /// events, `X-GitHub-Hook-Installation-Target-Type: repository`.
    #[default]
    Repository,
    /// An organisation's hook: the events of every repository the organisation owns,
    /// target type `organization` and the organisation's id.
    Organization(String),
    /// The GitHub App's hook: the events of every repository on an account the App is
    /// installed on, with that installation in the payload, target type `integration`
    /// and the App's id.
    App,
}

/// Where and how webhooks are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Full `http://` URL of the receiver.
    pub url: String,
    /// HMAC secret; when empty, no `X-Hub-Signature-256` header is sent (as on GitHub).
    pub secret: String,
    /// Body encoding.
    pub content_type: ContentType,
    /// What kind of hook it is.
    pub kind: HookKind,
}

impl WebhookTarget {
    /// A JSON hook, the setting every GitHub App uses.
    pub fn json(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            content_type: ContentType::Json,
            kind: HookKind::Repository,
        }
    }

    /// The same target as the hook of organisation `org`.
    pub fn organization(mut self, org: impl Into<String>) -> Self {
        self.kind = HookKind::Organization(org.into());
        self
    }

    /// The same target as the GitHub App's hook.
    pub fn app(mut self) -> Self {
        self.kind = HookKind::App;
        self
    }

    /// A form-encoded hook (GitHub's default for REST-created hooks).
    pub fn form(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            content_type: ContentType::Form,
            ..Self::json(url, secret)
        }
    }
}
