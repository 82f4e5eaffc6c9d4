use std::error::Error as _;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use secrecy::ExposeSecret;

use super::*;
use crate::domain::{DeploymentId, RepoName};
use crate::github::{Credentials, Hook, RunnerGroups, RunnerScope};
use crate::store::Durability;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ServeArgs,
}

fn runner_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.path().join("run.sh"), "#!/bin/sh\n").expect("run.sh");
    d
}

/// The problem a value parser found, which clap keeps as its error's source.
pub(super) fn config_error(e: &clap::Error) -> ConfigError {
    e.source()
        .and_then(|s| s.downcast_ref::<ConfigError>())
        .cloned()
        .unwrap_or_else(|| panic!("not a value parser's error: {e}"))
}

/// The settings, or the first problem: from a value parser (clap) or from `from_args`.
fn parse(extra: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = runner_dir();
    let mut argv = vec!["x"];
    if !extra.contains(&"--backend") {
        argv.extend(["--backend", "local"]);
    }
    if !extra.contains(&"--local-runner-dir") {
        argv.extend(["--local-runner-dir", dir.path().to_str().expect("utf-8")]);
    }
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).map_err(|e| config_error(&e))?;
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::from_args(cli.args, |k| {
        env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
    })
}

/// A webhook secret of the minimum length.
const WEBHOOK: &str = "0123456789abcdef";
const SECRETS: &[(&str, &str)] = &[("GITHUB_TOKEN", "ghp_x"), ("WEBHOOK_SECRET", WEBHOOK)];

#[test]
fn defaults_match_the_original_system() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.provisioner.runner_groups, RunnerGroups::Id(1));
    assert_eq!(s.github.scope, RunnerScope::Repo);
    assert_eq!(s.webhook.label, "modal");
    assert_eq!(s.github.api_url, "https://api.github.com");
    assert!(s.webhook.allow.listed().is_none());
    assert_eq!(s.server.bind.port(), 8000);
    assert_eq!(s.limits.max_runners, 50);
    assert_eq!(s.provisioner.sandbox_timeout, Duration::from_secs(3600));
}

#[test]
fn a_missing_secret_names_its_variable() {
    let e = parse(&[], &[("WEBHOOK_SECRET", WEBHOOK)]).expect_err("no token");
    assert_eq!(e.var, "GITHUB_TOKEN");
    let e = parse(&[], &[("GITHUB_TOKEN", "t")]).expect_err("no secret");
    assert_eq!(e.var, "WEBHOOK_SECRET");
    assert!(e.to_string().starts_with("WEBHOOK_SECRET: is required"));
}

#[test]
fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "ghp_from_file\n").expect("write");
    let s = parse(
        &["--github-token-file", token.to_str().expect("utf-8")],
        &[("WEBHOOK_SECRET", WEBHOOK)],
    )
    .expect("valid");
    let Credentials::Token(token) = &s.github.credentials else {
        panic!("a token")
    };
    assert_eq!(token.expose_secret(), "ghp_from_file");
}

#[test]
fn every_bad_value_is_reported_with_its_variable() {
    let cases: &[(&[&str], &str)] = &[
        (&["--allowed-repos", "octo/ok,not a repo"], "ALLOWED_REPOS"),
        (&["--runner-group-id", "zero"], "RUNNER_GROUP_ID"),
        (&["--runner-group-id", "0"], "RUNNER_GROUP_ID"),
        (&["--port", "70000"], "PORT"),
        (&["--max-runners=-1"], "MAX_RUNNERS"),
        (&["--sandbox-timeout-secs", "90000"], "SANDBOX_TIMEOUT_SECS"),
        (&["--runner-name-prefix", "has space"], "RUNNER_NAME_PREFIX"),
        (&["--runner-label", ""], "RUNNER_LABEL"),
        (&["--github-api-url", "ftp://x"], "GITHUB_API_URL"),
        (
            &["--github-enterprise-domain", "https://ghe.example.com"],
            "GITHUB_ENTERPRISE_DOMAIN",
        ),
        (&["--database-url", "mysql://x"], "DATABASE_URL"),
        (&["--leader-lease-secs", "0"], "LEADER_LEASE_SECS"),
        (&["--leader-lease-secs", "7200"], "LEADER_LEASE_SECS"),
        (&["--replica-id", "has space"], "REPLICA_ID"),
        (&["--replica-id", ""], "REPLICA_ID"),
        (&["--bind-address", "localhost"], "BIND_ADDRESS"),
        (&["--reap-interval-secs", "soon"], "REAP_INTERVAL_SECS"),
        (&["--local-runner-dir", "/nonexistent"], "LOCAL_RUNNER_DIR"),
        (&["--reconcile-interval-secs", "0"], "RECONCILE_INTERVAL_SECS"),
        (&["--sandbox-gpu-types", "T4,not a gpu"], "SANDBOX_GPU_TYPES"),
        (&["--sandbox-max-cpu", "0"], "SANDBOX_MAX_CPU"),
        (&["--store-retention-days", "1"], "STORE_RETENTION_DAYS"),
        (&["--runner-idle-timeout-secs", "x"], "RUNNER_IDLE_TIMEOUT_SECS"),
        (&["--webhook-hook-id", "12"], "WEBHOOK_HOOK_ID"),
        (&["--webhook-hook-id", "octo/repo:x"], "WEBHOOK_HOOK_ID"),
        (
            &[
                "--runner-version",
                "2.311.0",
                "--backend",
                "modal",
                "--modal-token-id",
                "ak",
            ],
            "RUNNER_VERSION",
        ),
    ];
    for (flags, var) in cases {
        let e = parse(flags, SECRETS).expect_err("invalid");
        assert_eq!(&e.var, var, "{flags:?} gave {e}");
    }
}

#[test]
fn a_postgres_url_is_accepted_and_its_password_never_printed() {
    let url = "postgres://mgr:hunter2secret@db.example.com:5432/mgr?sslmode=require";
    let s = parse(
        &[
            "--database-url",
            url,
            "--leader-lease-secs",
            "6",
            "--replica-id",
            "web-1",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.store.database_url, url);
    assert_eq!(s.store.leader_lease, Duration::from_secs(6));
    assert_eq!(s.store.replica_id, "web-1");
    let printed = format!("{:?}", s.store);
    assert!(!printed.contains("hunter2secret"), "{printed}");
    assert!(
        printed.contains("postgres://mgr@db.example.com:5432/mgr"),
        "{printed}"
    );
}

#[test]
fn the_leader_lease_defaults_to_15_seconds_and_the_replica_id_to_host_and_pid() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.store.leader_lease, Duration::from_secs(15));
    assert!(
        s.store.replica_id.ends_with(&format!("-{}", std::process::id())),
        "{}",
        s.store.replica_id
    );
}

#[test]
fn a_github_app_replaces_the_token() {
    let key = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
    let env = [("WEBHOOK_SECRET", WEBHOOK), ("GITHUB_APP_PRIVATE_KEY", key)];
    let s = parse(
        &["--github-app-id", "42", "--github-app-installation-id", "7"],
        &env,
    )
    .expect("valid");
    let Credentials::App(app) = &s.github.credentials else {
        panic!("an App")
    };
    assert_eq!((app.app_id, app.installation_id), (42, Some(7)));
    let s = parse(&["--github-app-id", "42", "--allowed-repos", "octo/one"], &env).expect("valid");
    let Credentials::App(app) = &s.github.credentials else {
        panic!("an App")
    };
    assert_eq!(app.owners, ["octo"]);
}

#[test]
fn a_github_app_misconfiguration_names_its_variable() {
    let key = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["--github-app-id", "42", "--github-app-installation-id", "7"],
            &[("WEBHOOK_SECRET", WEBHOOK)],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            &["--github-app-id", "42", "--github-app-installation-id", "7"],
            &[("WEBHOOK_SECRET", WEBHOOK), ("GITHUB_APP_PRIVATE_KEY", "junk")],
            "GITHUB_APP_PRIVATE_KEY",
        ),
        (
            &["--github-app-id", "42"],
            &[("WEBHOOK_SECRET", WEBHOOK), ("GITHUB_APP_PRIVATE_KEY", key)],
            "GITHUB_APP_INSTALLATION_ID",
        ),
        (
            &["--github-app-id", "x", "--github-app-installation-id", "7"],
            &[("WEBHOOK_SECRET", WEBHOOK), ("GITHUB_APP_PRIVATE_KEY", key)],
            "GITHUB_APP_ID",
        ),
        (
            &["--github-app-id", "42", "--github-app-installation-id", "7"],
            &[
                ("WEBHOOK_SECRET", WEBHOOK),
                ("GITHUB_APP_PRIVATE_KEY", key),
                ("GITHUB_TOKEN", "t"),
            ],
            "GITHUB_APP_ID",
        ),
    ];
    for (flags, env, var) in cases {
        let e = parse(flags, env).expect_err("invalid");
        assert_eq!(&e.var, var, "{flags:?}: {e}");
    }
}

#[test]
fn webhook_hooks_are_repo_or_org_hooks() {
    let s = parse(
        &["--allowed-repos", "octo/one", "--webhook-hook-id", "7"],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(
        s.reconciler.hooks,
        [Hook::Repo {
            repo: RepoName::parse("octo/one").expect("repo"),
            id: 7
        }]
    );
    let s = parse(&["--webhook-hook-id", "octo/two:8, org:octo:9"], SECRETS).expect("valid");
    assert_eq!(
        s.reconciler.hooks,
        [
            Hook::Repo {
                repo: RepoName::parse("octo/two").expect("repo"),
                id: 8
            },
            Hook::Org {
                org: "octo".into(),
                id: 9
            }
        ]
    );
}

#[test]
fn enterprise_domain_and_api_url_set_the_api_base() {
    let s = parse(&["--github-enterprise-domain", "ghe.example.com"], SECRETS).expect("valid");
    assert_eq!(s.github.api_url, "https://ghe.example.com/api/v3");
    let s = parse(
        &[
            "--github-enterprise-domain",
            "ghe.example.com",
            "--github-api-url",
            "http://127.0.0.1:9/",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.github.api_url, "http://127.0.0.1:9");
}

#[test]
fn every_value_parser_names_its_own_variable() {
    // A value parser is given its variable's name by hand: a copy-paste slip would blame
    // the wrong variable. Feed every option bad values and check whom the errors name.
    let command = Cli::command();
    let mut checked = 0;
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env().and_then(|v| v.to_str()), arg.get_long()) else {
            continue;
        };
        let mut refused = false;
        for bad in ["not valid", "-1", "0", "", "1e400", "a,b c"] {
            let Err(e) = Cli::try_parse_from(["x".to_string(), format!("--{long}={bad}")]) else {
                continue;
            };
            if let Some(found) = e.source().and_then(|s| s.downcast_ref::<ConfigError>()) {
                assert_eq!(found.var, var, "--{long}={bad:?} blamed {found}");
                refused = true;
            }
        }
        checked += usize::from(refused);
    }
    assert!(checked >= 30, "only {checked} options have a value parser");
}

#[test]
fn a_value_parser_error_names_the_variable_in_clap_message() {
    let Err(e) = Cli::try_parse_from(["x", "--max-runners", "0"]) else {
        panic!("0 runners accepted")
    };
    assert!(
        e.to_string().contains("MAX_RUNNERS: must be greater than 0"),
        "{e}"
    );
}

#[test]
fn durations_take_fractions() {
    let s = parse(
        &[
            "--reap-interval-secs",
            "0.25",
            "--redeliver-window-hours",
            "0.5",
            "--store-retention-days",
            "3.5",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.reaper.interval, Duration::from_millis(250));
    assert_eq!(s.reconciler.redeliver_window, Duration::from_secs(1800));
    assert_eq!(s.store.retention, Duration::from_secs(3 * 86_400 + 43_200));
}

#[test]
fn store_sync_is_normal_or_full() {
    assert_eq!(parse(&[], SECRETS).expect("valid").store.sync, Durability::Normal);
    let s = parse(&["--store-sync", "full"], SECRETS).expect("valid");
    assert_eq!(s.store.sync, Durability::Full);
    let Err(e) = Cli::try_parse_from(["x", "--store-sync", "fast"]) else {
        panic!("an unknown durability accepted")
    };
    assert!(e.to_string().contains("[possible values: normal, full]"), "{e}");
}

#[test]
fn each_part_holds_the_values_its_consumer_shares() {
    let s = parse(
        &[
            "--allowed-repos",
            "octo/one",
            "--runner-label",
            "gpu",
            "--runner-name-prefix",
            "ci",
            "--sandbox-timeout-secs",
            "600",
            "--reap-interval-secs",
            "3",
            "--reconcile-interval-secs",
            "45",
            "--github-jit-limit-per-min",
            "0",
            "--port",
            "0",
            "--bind-address",
            "127.0.0.1",
        ],
        SECRETS,
    )
    .expect("valid");
    let one = RepoName::parse("octo/one").expect("repo");
    for allow in [&s.webhook.allow, &s.reaper.allow, &s.reconciler.allow] {
        assert_eq!(allow.listed(), Some(std::slice::from_ref(&one)));
    }
    assert_eq!(
        (s.webhook.label.as_str(), s.reconciler.label.as_str()),
        ("gpu", "gpu")
    );
    assert_eq!(s.limits.prefix.as_str(), "ci");
    assert_eq!(s.reaper.prefix.as_str(), "ci");
    let derived = DeploymentId::derive("modal-github-runner", "ci", &["octo".to_string()]);
    assert_eq!(s.provisioner.deployment, derived);
    assert_eq!(s.reaper.deployment, derived);
    assert_eq!(s.provisioner.sandbox_timeout, Duration::from_secs(600));
    assert_eq!(s.reaper.sandbox_timeout, Duration::from_secs(600));
    assert_eq!(s.reaper.interval, Duration::from_secs(3));
    assert_eq!(s.reaper.sweep_interval, Duration::from_secs(45));
    assert_eq!(s.reconciler.interval, Duration::from_secs(45));
    assert_eq!(s.provisioner.jit_limit_per_min, None);
    assert_eq!(s.server.bind.to_string(), "127.0.0.1:0");
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.provisioner.jit_limit_per_min, Some(180.0));
    assert_eq!(s.webhook.secret.expose_secret(), WEBHOOK);
}

#[test]
fn blank_optional_values_are_unset() {
    let s = parse(
        &[
            "--github-app-id",
            " ",
            "--github-app-installation-id",
            "",
            "--github-api-url",
            "",
            "--github-enterprise-domain",
            "",
            "--allowed-repos",
            "",
            "--sandbox-gpu-types",
            "",
            "--webhook-hook-id",
            "",
        ],
        SECRETS,
    )
    .expect("valid");
    assert!(matches!(s.github.credentials, Credentials::Token(_)));
    assert_eq!(s.github.api_url, "https://api.github.com");
    assert!(s.webhook.allow.listed().is_none());
    assert!(s.limits.machine.gpu_types.is_empty());
    assert!(s.reconciler.hooks.is_empty());
}

#[test]
fn a_webhook_secret_shorter_than_16_bytes_is_refused_with_the_fix_and_without_the_secret() {
    let e =
        parse(&[], &[("GITHUB_TOKEN", "t"), ("WEBHOOK_SECRET", "hunter2-short")]).expect_err("weak secret");
    assert_eq!(e.var, "WEBHOOK_SECRET");
    let text = e.to_string();
    assert!(text.contains("shorter than 16 bytes"), "{text}");
    assert!(text.contains("openssl rand -hex 32"), "{text}");
    assert!(text.contains("ALLOW_WEAK_WEBHOOK_SECRET=true"), "{text}");
    assert!(!text.contains("hunter2"), "the error shows the secret: {text}");
    // One byte short is refused; exactly 16 is enough.
    let e = parse(&[], &[("GITHUB_TOKEN", "t"), ("WEBHOOK_SECRET", &WEBHOOK[1..])]).expect_err("15 bytes");
    assert_eq!(e.var, "WEBHOOK_SECRET");
    let s = parse(&[], SECRETS).expect("16 bytes");
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn allow_weak_webhook_secret_accepts_a_short_secret_with_a_warning() {
    let env = [("GITHUB_TOKEN", "t"), ("WEBHOOK_SECRET", "tiny-pw")];
    for flags in [
        &["--allow-weak-webhook-secret=true"][..],
        &["--allow-weak-webhook-secret"][..],
    ] {
        let s = parse(flags, &env).expect("accepted");
        assert_eq!(s.webhook.secret.expose_secret(), "tiny-pw");
        let warnings = s.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].var, "WEBHOOK_SECRET");
        assert!(!warnings[0].to_string().contains("tiny-pw"), "{}", warnings[0]);
    }
    let e = parse(&["--allow-weak-webhook-secret=false"], &env).expect_err("not allowed");
    assert_eq!(e.var, "WEBHOOK_SECRET");
    let e = parse(&["--allow-weak-webhook-secret=maybe"], &env).expect_err("not a switch");
    assert_eq!(e.var, "ALLOW_WEAK_WEBHOOK_SECRET");
}

#[test]
fn an_http_github_url_outside_this_machine_yields_a_warning() {
    let s = parse(&["--github-api-url", "http://ghe.internal:8080/api/v3"], SECRETS).expect("valid");
    let warnings = s.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].var, "GITHUB_API_URL");
    assert!(warnings[0].message.contains("ghe.internal"), "{}", warnings[0]);
    assert!(warnings[0].message.contains("https://"), "{}", warnings[0]);
}

#[test]
fn http_urls_on_loopback_and_https_urls_yield_no_warning() {
    for url in [
        "http://127.0.0.1:9",
        "http://127.8.9.10",
        "http://localhost:3000",
        "http://LOCALHOST",
        "http://[::1]:9",
        "https://ghe.example.com/api/v3",
    ] {
        let s = parse(&["--github-api-url", url], SECRETS).expect("valid");
        assert!(s.warnings().is_empty(), "{url}: {:?}", s.warnings());
    }
    for url in ["http://128.0.0.1", "http://[::2]", "http://localhost.example.com"] {
        let s = parse(&["--github-api-url", url], SECRETS).expect("valid");
        assert_eq!(s.warnings().len(), 1, "{url}");
    }
}

#[test]
fn an_http_modal_url_outside_this_machine_yields_a_warning() {
    let modal = |url: &str| {
        let env = [
            ("GITHUB_TOKEN", "t"),
            ("WEBHOOK_SECRET", WEBHOOK),
            ("MODAL_TOKEN_SECRET", "as-x"),
        ];
        parse(
            &[
                "--backend",
                "modal",
                "--modal-token-id",
                "ak-x",
                "--modal-server-url",
                url,
            ],
            &env,
        )
        .expect("valid")
        .warnings()
    };
    let warnings = modal("http://modal.example.com:443");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].var, "MODAL_SERVER_URL");
    assert!(modal("http://127.0.0.1:50051").is_empty());
    assert!(modal("https://api.modal.com:443").is_empty());
}

#[test]
fn registration_concurrency_takes_its_old_name_and_the_new_name_wins() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.provisioner.registration_concurrency, 32);
    assert_eq!(s.provisioner.create_concurrency, 256);
    let old = parse(&["--provision-concurrency", "8"], SECRETS).expect("valid");
    assert_eq!(old.provisioner.registration_concurrency, 8);
    let both = parse(
        &["--provision-concurrency", "8", "--registration-concurrency", "16"],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(both.provisioner.registration_concurrency, 16);
}

#[test]
fn http_limits_and_public_repositories_have_safe_defaults() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.server.header_read_timeout, Duration::from_secs(30));
    assert_eq!(s.server.max_connections, 1024);
    assert!(
        !s.webhook.allow_public,
        "public repositories are refused by default"
    );
    assert!(!s.reconciler.allow_public);

    let s = parse(
        &[
            "--allow-public-repos",
            "TRUE",
            "--max-connections",
            "5",
            "--header-read-timeout-secs",
            "0.5",
        ],
        SECRETS,
    )
    .expect("valid");
    assert!(s.webhook.allow_public && s.reconciler.allow_public);
    assert_eq!(s.server.max_connections, 5);
    assert_eq!(s.server.header_read_timeout, Duration::from_millis(500));
    assert!(
        !parse(&["--allow-public-repos", "no"], SECRETS)
            .expect("valid")
            .webhook
            .allow_public
    );
}

#[test]
fn a_misspelt_switch_or_limit_is_an_error_not_a_guess() {
    let cases: &[(&[&str], &str)] = &[
        (&["--allow-public-repos", "ture"], "ALLOW_PUBLIC_REPOS"),
        (&["--allow-public-repos", "on"], "ALLOW_PUBLIC_REPOS"),
        (&["--allow-public-repos", ""], "ALLOW_PUBLIC_REPOS"),
        (&["--max-connections", "0"], "MAX_CONNECTIONS"),
        (&["--max-connections", "2000000"], "MAX_CONNECTIONS"),
        (&["--header-read-timeout-secs", "0"], "HEADER_READ_TIMEOUT_SECS"),
    ];
    for (flags, var) in cases {
        let e = parse(flags, SECRETS).expect_err("invalid");
        assert_eq!(&e.var, var, "{flags:?} gave {e}");
    }
}

#[test]
fn local_run_as_names_a_user_and_blank_leaves_runners_as_the_services_user() {
    let run_as = |value: &str| {
        let flag = format!("--local-run-as={value}");
        parse(&[flag.as_str()], SECRETS).map(|s| match s.backend {
            BackendSettings::Local(local) => local.run_as,
            BackendSettings::Modal { .. } => panic!("the local backend"),
        })
    };

    assert_eq!(run_as("runner").expect("valid"), Some("runner".to_string()));
    assert_eq!(run_as(" ").expect("blank is unset"), None);
    for bad in ["has space", "../x", "-u"] {
        assert_eq!(run_as(bad).expect_err(bad).var, "LOCAL_RUN_AS");
    }
}

#[test]
fn status_token_is_optional_and_read_like_the_other_secrets() {
    assert!(parse(&[], SECRETS).expect("valid").server.status_token.is_none());
    let blank = [SECRETS[0], SECRETS[1], ("STATUS_TOKEN", "  ")];
    assert!(parse(&[], &blank).expect("valid").server.status_token.is_none());
    let set = [SECRETS[0], SECRETS[1], ("STATUS_TOKEN", " tok-123 ")];
    let s = parse(&[], &set).expect("valid");
    assert_eq!(s.server.status_token.expect("set").expose_secret(), "tok-123");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").expect("write");
    let s = parse(&["--status-token-file", file.to_str().expect("utf-8")], SECRETS).expect("valid");
    assert_eq!(s.server.status_token.expect("set").expose_secret(), "from-file");
}

#[test]
fn organisation_runners_serve_the_owners_allowed_repos_names_in_a_named_group() {
    let s = parse(
        &[
            "--runner-scope",
            "org",
            "--allowed-repos",
            "acme/*,beta/app",
            "--runner-group",
            "modal runners",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.github.scope, RunnerScope::Org);
    assert_eq!(
        s.provisioner.runner_groups,
        RunnerGroups::Named {
            name: "modal runners".into(),
            ids: Default::default()
        }
    );
    assert_eq!(s.webhook.allow.owners(), ["acme", "beta"]);
    let s = parse(
        &[
            "--runner-scope",
            "enterprise",
            "--github-enterprise",
            "big-corp",
            "--allowed-repos",
            "acme/*",
            "--runner-group-id",
            "5",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.github.scope, RunnerScope::Enterprise("big-corp".into()));
    assert_eq!(s.provisioner.runner_groups, RunnerGroups::Id(5));
}

#[test]
fn a_scope_or_group_misconfiguration_names_its_variable() {
    let key = fakes::github::TEST_APP_PRIVATE_KEY_PEM;
    let app_env = [("WEBHOOK_SECRET", WEBHOOK), ("GITHUB_APP_PRIVATE_KEY", key)];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        // Organisation runners need to know whose jobs they serve.
        (&["--runner-scope", "org"], SECRETS, "ALLOWED_REPOS"),
        (
            &["--runner-scope", "enterprise", "--allowed-repos", "acme/*"],
            SECRETS,
            "GITHUB_ENTERPRISE",
        ),
        (
            &["--github-enterprise", "big", "--allowed-repos", "acme/*"],
            SECRETS,
            "GITHUB_ENTERPRISE",
        ),
        (
            &[
                "--runner-scope",
                "enterprise",
                "--github-enterprise",
                "not a slug",
                "--allowed-repos",
                "acme/*",
            ],
            SECRETS,
            "GITHUB_ENTERPRISE",
        ),
        // GitHub Apps cannot manage enterprise runners.
        (
            &[
                "--runner-scope",
                "enterprise",
                "--github-enterprise",
                "big",
                "--allowed-repos",
                "acme/*",
                "--github-app-id",
                "42",
            ],
            &app_env,
            "GITHUB_APP_ID",
        ),
        (
            &[
                "--runner-scope",
                "org",
                "--allowed-repos",
                "acme/*",
                "--runner-group",
                "x",
                "--runner-group-id",
                "3",
            ],
            SECRETS,
            "RUNNER_GROUP",
        ),
        // Repository runners have no named groups.
        (&["--runner-group", "x"], SECRETS, "RUNNER_GROUP"),
        (&["--allowed-repos", "acme/*x"], SECRETS, "ALLOWED_REPOS"),
    ];
    for (flags, env, var) in cases {
        match parse(flags, env) {
            Err(e) => assert_eq!(&e.var, var, "{flags:?}: {e}"),
            Ok(_) => panic!("{flags:?} should be refused"),
        }
    }
}

#[test]
fn deployment_id_is_given_or_derived_and_reaches_every_part_that_marks_or_sweeps() {
    let s = parse(&["--deployment-id", "team-a"], SECRETS).expect("valid");
    assert_eq!(s.provisioner.deployment.as_str(), "team-a");
    assert_eq!(s.reaper.deployment.as_str(), "team-a");
    let BackendSettings::Local(local) = &s.backend else {
        panic!("the local backend")
    };
    assert_eq!(local.deployment, "team-a");
    let blank = parse(&["--deployment-id", " "], SECRETS).expect("blank is unset");
    assert_eq!(
        blank.provisioner.deployment,
        DeploymentId::derive("modal-github-runner", "modal", &[])
    );
    let e = parse(&["--deployment-id", "no spaces"], SECRETS).expect_err("invalid");
    assert_eq!(e.var, "DEPLOYMENT_ID");
}

#[test]
fn the_rate_reserve_defaults_to_a_share_of_the_limit_and_takes_a_count_of_calls() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(
        s.github.rate_reserve, None,
        "unset: a tenth of the limit, at least 100"
    );
    let s = parse(&["--github-rate-reserve", "250"], SECRETS).expect("valid");
    assert_eq!(s.github.rate_reserve, Some(250));
    let s = parse(&["--github-rate-reserve", "0"], SECRETS).expect("valid");
    assert_eq!(
        s.github.rate_reserve,
        Some(0),
        "no reserve: polling runs until the budget is spent"
    );
    for bad in ["-1", "10%", "lots"] {
        let flag = format!("--github-rate-reserve={bad}");
        let e = parse(&[flag.as_str()], SECRETS).expect_err("invalid");
        assert_eq!(e.var, "GITHUB_RATE_RESERVE", "{bad}");
    }
}

// ---- issue 13: Docker, cache volume, image= ----

/// Settings of the Modal backend with `extra` flags.
fn modal_with(extra: &[&str]) -> Result<Settings, ConfigError> {
    let env = [
        ("GITHUB_TOKEN", "t"),
        ("WEBHOOK_SECRET", WEBHOOK),
        ("MODAL_TOKEN_SECRET", "as-x"),
    ];
    let mut argv = vec!["--backend", "modal", "--modal-token-id", "ak-x"];
    argv.extend_from_slice(extra);
    parse(&argv, &env)
}

fn features_of(s: &Settings) -> crate::backend::modal::features::SandboxFeatures {
    match &s.backend {
        BackendSettings::Modal { settings, .. } => settings.features.clone(),
        BackendSettings::Local(_) => panic!("not the modal backend"),
    }
}

#[test]
fn sandbox_features_are_off_by_default_and_the_cache_is_per_repository() {
    use crate::backend::modal::features::CacheScope;
    let s = modal_with(&[]).expect("valid");
    let f = features_of(&s);
    assert!(!f.docker && f.cache.is_none() && f.images.is_empty());
    assert_eq!(f.docker_memory_mib, 8192);
    let policy = s
        .limits
        .machine
        .features
        .expect("the modal backend has a feature policy");
    assert!(!policy.docker && policy.images.is_empty() && !policy.default_gpu);

    let s = modal_with(&["--cache-volume", "ci-cache", "--sandbox-docker", "true"]).expect("valid");
    let cache = features_of(&s).cache.expect("cache");
    assert_eq!((cache.name.as_str(), cache.scope), ("ci-cache", CacheScope::Repo));
    assert!(s.limits.machine.features.expect("policy").docker);
    let s = modal_with(&["--cache-volume", "c", "--cache-volume-scope", "deployment"]).expect("valid");
    assert_eq!(
        features_of(&s).cache.expect("cache").scope,
        CacheScope::Deployment
    );
    let local = parse(&[], SECRETS).expect("valid");
    assert!(
        local.limits.machine.features.is_none(),
        "the local backend ignores the labels"
    );
}

#[test]
fn bad_feature_options_name_their_variable() {
    for (flags, var) in [
        (vec!["--cache-volume-scope", "org"], "CACHE_VOLUME_SCOPE"),
        (vec!["--cache-volume", "a/b"], "CACHE_VOLUME"),
        (vec!["--cache-volume", &"x".repeat(33)], "CACHE_VOLUME"),
        (vec!["--sandbox-docker", "maybe"], "SANDBOX_DOCKER"),
        (
            vec!["--sandbox-docker-memory-mib", "0"],
            "SANDBOX_DOCKER_MEMORY_MIB",
        ),
        (vec!["--sandbox-images", "node"], "SANDBOX_IMAGES"),
    ] {
        let e = modal_with(&flags).expect_err(var);
        assert_eq!(e.var, var, "{flags:?}: {e}");
    }
}

#[test]
fn sandbox_images_parse_into_names_and_tags_and_feed_the_policy() {
    use super::features::parse_images;
    assert_eq!(
        parse_images("node=node:22-bookworm, CUDA = nvidia/cuda:12.4.1-runtime-ubuntu22.04,"),
        Ok(vec![
            ("node".into(), "node:22-bookworm".into()),
            ("cuda".into(), "nvidia/cuda:12.4.1-runtime-ubuntu22.04".into()),
        ])
    );
    assert_eq!(parse_images(""), Ok(vec![]));
    for bad in ["node", "=node:22", "node=", "node=a b", "a/b=x", "n=a,N=b"] {
        assert!(parse_images(bad).is_err(), "{bad}");
    }
    let s = modal_with(&["--sandbox-images", "node=node:22-bookworm", "--sandbox-gpu", "T4"]).expect("valid");
    assert_eq!(
        features_of(&s).images,
        [("node".to_string(), "node:22-bookworm".to_string())]
    );
    let policy = s.limits.machine.features.expect("policy");
    assert_eq!(policy.images, ["node"]);
    assert!(policy.default_gpu, "SANDBOX_GPU is known to the docker check");
}
// ---- costs and warm pool (issue 13 items 3, 4) ----

#[test]
fn cost_rates_spend_cap_and_warm_pool_reach_their_settings() {
    let s = parse(
        &[
            "--cost-rates",
            "cpu=0.5,gpu:t4=1",
            "--max-spend-per-day",
            "12.5",
            "--warm-pool",
            "self-hosted+modal=2; self-hosted+modal+cpu=8=1",
        ],
        SECRETS,
    )
    .expect("valid");
    assert_eq!(s.costs.rates.cpu_per_core_second, 0.5);
    assert_eq!(s.costs.rates.gpu_per_second.get("T4"), Some(&1.0));
    assert_eq!(s.costs.max_per_day, Some(12.5));
    assert_eq!(s.costs.stats_wait, std::time::Duration::from_secs(900));
    let warm: Vec<(String, usize)> = s
        .limits
        .warm
        .iter()
        .map(|w| (w.labels.key().to_string(), w.size))
        .collect();
    assert_eq!(
        warm,
        [
            ("modal,self-hosted".to_string(), 2),
            ("cpu=8,modal,self-hosted".to_string(), 1)
        ]
    );
    let defaults = parse(&[], SECRETS).expect("valid");
    assert_eq!(defaults.costs.max_per_day, None);
    assert!(defaults.limits.warm.is_empty());
}

#[test]
fn bad_cost_rates_spend_caps_and_warm_pools_name_their_variable() {
    let cases: &[(&[&str], &str)] = &[
        (&["--cost-rates", "cpu"], "COST_RATES"),
        (&["--cost-rates", "disk=1"], "COST_RATES"),
        (&["--max-spend-per-day=-1"], "MAX_SPEND_PER_DAY"),
        (&["--max-spend-per-day", "lots"], "MAX_SPEND_PER_DAY"),
        (&["--warm-pool", "modal"], "WARM_POOL"),
        (&["--warm-pool", "modal=x"], "WARM_POOL"),
        (&["--cost-poll-secs", "0"], "COST_POLL_SECS"),
    ];
    for (flags, var) in cases {
        let e = parse(flags, SECRETS).expect_err("invalid");
        assert_eq!(&e.var, var, "{flags:?} gave {e}");
    }
}

#[test]
fn the_job_source_defaults_to_webhooks_and_a_scale_set_needs_no_webhook_secret() {
    let s = parse(&[], SECRETS).expect("valid");
    assert_eq!(s.source, JobSource::Webhook);
    let token = &[("GITHUB_TOKEN", "ghp_x")][..];
    assert_eq!(
        parse(&[], token).expect_err("webhooks need a secret").var,
        "WEBHOOK_SECRET"
    );
    let s = parse(
        &[
            "--job-source",
            "scaleset",
            "--runner-scope",
            "org",
            "--allowed-repos",
            "acme/*",
            "--scale-set-labels",
            " gpu, GPU,,linux ,modal",
        ],
        token,
    )
    .expect("a scale set needs no webhook secret");
    let JobSource::ScaleSet(sets) = s.source else {
        panic!("scale set expected");
    };
    let set = &sets[0];
    assert_eq!(set.name, "modal");
    assert_eq!(
        set.labels,
        ["gpu", "linux"],
        "trimmed, each once, without the name"
    );
    assert_eq!(set.home, crate::github::RunnerHome::Org("acme".into()));
}

#[test]
fn a_scale_set_must_live_in_exactly_one_place() {
    let token = &[("GITHUB_TOKEN", "ghp_x")][..];
    let two_orgs = parse(
        &[
            "--job-source",
            "scaleset",
            "--runner-scope",
            "org",
            "--allowed-repos",
            "acme/*,other/x",
        ],
        token,
    );
    assert_eq!(two_orgs.expect_err("two organisations").var, "ALLOWED_REPOS");
    let no_repo = parse(&["--job-source", "scaleset"], token);
    assert_eq!(
        no_repo.expect_err("repository scope needs one repository").var,
        "ALLOWED_REPOS"
    );
    let one = parse(
        &["--job-source", "scaleset", "--allowed-repos", "acme/app"],
        token,
    )
    .expect("one repository");
    assert!(
        matches!(one.source, JobSource::ScaleSet(s) if s[0].home == crate::github::RunnerHome::Repo(RepoName::parse("acme/app").expect("repo")))
    );
    let bad = parse(
        &[
            "--job-source",
            "scaleset",
            "--allowed-repos",
            "acme/app",
            "--scale-set-labels",
            "a b",
        ],
        token,
    );
    assert_eq!(bad.expect_err("whitespace").var, "SCALE_SET_LABELS");
}

#[test]
fn scale_sets_each_name_a_machine_and_bad_entries_are_refused() {
    let token = &[("GITHUB_TOKEN", "ghp_x")][..];
    let args = |sets: &'static str| {
        vec![
            "--job-source",
            "scaleset",
            "--allowed-repos",
            "acme/app",
            "--scale-sets",
            sets,
        ]
    };
    let s = parse(
        &args("modal, modal-big:cpu=8;memory=32768 ,modal-gpu:gpu=a10g"),
        token,
    )
    .expect("valid");
    let JobSource::ScaleSet(sets) = s.source else {
        panic!("scale sets expected");
    };
    let named: Vec<(&str, Vec<String>)> = sets
        .iter()
        .map(|s| (s.name.as_str(), s.machine.clone()))
        .collect();
    assert_eq!(
        named,
        [
            ("modal", vec![]),
            ("modal-big", vec!["cpu=8".to_owned(), "memory=32768".to_owned()]),
            ("modal-gpu", vec!["gpu=a10g".to_owned()]),
        ]
    );
    for bad in ["a,A", "big:disk=5", "big:cpu=lots", ":cpu=2", " , "] {
        assert_eq!(
            parse(&args(bad), token).expect_err(bad).var,
            "SCALE_SETS",
            "{bad}"
        );
    }
}
