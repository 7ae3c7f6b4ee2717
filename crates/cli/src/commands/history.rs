//! `berth history`: the releases of a stack in an environment.

use crate::context::{client_error, print_json, runtime, Globals};

/// Arguments of `berth history`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stack.
    stack: String,
    /// Its environment.
    #[arg(long, value_name = "ENV")]
    env: String,
}

/// `berth history`.
pub fn run(args: Args, globals: &Globals) -> anyhow::Result<()> {
    let client = globals.client()?;
    runtime()?.block_on(async {
        let releases = client.releases(&args.stack, &args.env).await.map_err(client_error)?;
        if globals.json() {
            let light: Vec<serde_json::Value> = releases
                .iter()
                .map(|r| serde_json::json!({"number": r.number, "created_ms": r.created_ms, "who": r.who, "status": r.status, "summary": r.summary, "plan_id": r.plan_id, "rollback_of": r.rollback_of, "reason": r.reason}))
                .collect();
            return print_json(&light);
        }
        println!("{:<8} {:<20} {:<8} {:<12} SUMMARY", "RELEASE", "CREATED (UTC)", "WHO", "STATUS");
        for r in &releases {
            let status = format!("{:?}", r.status).to_lowercase();
            let mut summary = r.summary.clone();
            if let Some(reason) = &r.reason {
                summary.push_str(&format!(" [{reason}]"));
            }
            println!("{:<8} {:<20} {:<8} {:<12} {}", r.number, super::clock_time::format_time(r.created_ms), r.who, status, summary);
        }
        Ok(())
    })
}
