//! `berth servers`: the control-plane servers (several on one etcd), which one leads and
//! since when, and when each last reported itself.

use crate::context::{client_error, print_json, runtime, Globals};

/// `berth servers`.
pub fn run(globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let servers = client.servers().await.map_err(client_error)?;
        if globals.json() {
            return print_json(&servers);
        }
        println!(
            "{:<28} {:<10} {:<12} LEADER",
            "SERVER", "VERSION", "LAST SEEN"
        );
        for s in &servers {
            let leader = match s.leader_since_ms {
                // The answering server's now is last seen plus how long ago that was.
                Some(since) => format!(
                    "yes, for {:.1}s",
                    (s.last_seen_ms + s.last_seen_ms_ago).saturating_sub(since) as f64 / 1000.0
                ),
                None => "-".to_string(),
            };
            println!(
                "{:<28} {:<10} {:<12} {}",
                s.api,
                s.version,
                format!("{:.1}s ago", s.last_seen_ms_ago as f64 / 1000.0),
                leader
            );
        }
        Ok(())
    })
}
