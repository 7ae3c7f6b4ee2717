//! What `berth deploy`, `berth rollback` and `berth plan` share: the deploy request built from a
//! stack file, and how the server's answer (the plan and the release it created) is printed.

use berth_api::control::{DeployRequest, DeployResponse};

use super::source;
use crate::context::{print_json, Globals};

/// The request for `file` in `env` with `--set` overrides; `force` and `dry_run` off.
pub fn request(
    file: &str,
    env: &str,
    set: &[String],
    confirm: Option<String>,
    plan_id: Option<String>,
) -> anyhow::Result<DeployRequest> {
    let bytes = source::read(file)?;
    let source = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{file}: the file is not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok(DeployRequest {
        file: file.to_string(),
        source,
        env: env.to_string(),
        set: set.to_vec(),
        confirm,
        plan_id,
        dry_run: false,
        force: false,
    })
}

/// Prints the plan and what the server did with it (the release created, or why none was).
pub fn print_deploy(resp: &DeployResponse, globals: &Globals) -> anyhow::Result<()> {
    if globals.json() {
        return print_json(resp);
    }
    print!("{}", resp.plan.text);
    match resp.release {
        Some(n) => println!(
            "release {n} of {} in {} created; rolling out",
            resp.stack, resp.env
        ),
        None => match &resp.unchanged {
            Some(why) => println!("{why}"),
            None => println!(
                "nothing to change: {} in {} already runs this",
                resp.stack, resp.env
            ),
        },
    }
    Ok(())
}
