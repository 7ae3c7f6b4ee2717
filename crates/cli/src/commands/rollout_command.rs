//! `berth rollout pause|resume|promote [--full]|abort STACK --env E`: one change to the
//! rollout, which the server's controller acts on in its next pass (each is an event).

use berth_server::rollouts::CommandResponse;

use super::rollout::Target;
use crate::context::{client_error, print_json, runtime, Globals};

/// Runs `command` (`pause`, `resume`, `promote`, `abort`) on the rollout.
pub fn run(t: &Target, command: &str, full: bool, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let done: CommandResponse = client
            .rollout_command(&t.stack, &t.env, command, full)
            .await
            .map_err(client_error)?;
        if globals.json() {
            return print_json(&done);
        }
        for line in &done.changed {
            println!("{line}");
        }
        Ok(())
    })
}
