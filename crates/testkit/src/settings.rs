//! The service's settings from a list of variables, as `serve` would read them from its
//! environment, without touching this process's environment (tests run in parallel).

use std::collections::HashMap;

use clap::{Args, FromArgMatches};
use modal_github_runner::config::{ServeArgs, Settings};

/// Parses `vars` exactly as `modal-github-runner serve` parses its environment: every
/// variable that has a flag becomes that flag; the rest (the secrets, `HOME`) are what the
/// service looks up itself. This process's own environment is ignored.
pub fn settings_from_vars(vars: &[(String, String)]) -> Result<Settings, String> {
    let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
    let flags: HashMap<String, String> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_string();
            Some((env, arg.get_long()?.to_string()))
        })
        .collect();
    // Forget the variables' names so that clap does not read them from this process.
    let command = command.mut_args(|arg| arg.env(None));
    let mut argv = Vec::new();
    let mut rest = HashMap::new();
    for (name, value) in vars {
        match flags.get(name) {
            Some(long) => argv.push(format!("--{long}={value}")),
            None => {
                rest.insert(name.clone(), value.clone());
            }
        }
    }
    let matches = command.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args = ServeArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Settings::from_args(args, |name| rest.get(name).cloned()).map_err(|e| e.to_string())
}
